"""Trained models out of the project: export a run, embed images, search them.

- :func:`export_run` (``python -m dml_study.export RUN_DIR OUT``): a finished run (fine-tuned
  or frozen tier) → ``OUT/`` with the embedder and proxies as safetensors, the run's
  ``config.yaml``, ``export.json`` and a model card ``README.md`` (format:
  :mod:`dml_study.models.exported`; licence notes: :mod:`dml_study.export.licences`).
- :func:`load_embedder` (or ``create_embedder(..., weights=OUT)``): the exported network.
- :func:`embed_images` (``python -m dml_study.embed OUT --images DIR``): embeddings of image
  files with the run's evaluation preprocessing, written as ``.npz`` with their paths.
- :func:`search_index` (``python -m dml_study.search OUT --index FILE --query IMG``): top-k
  neighbours with the evaluation's exact kNN, as a table, a CSV and an HTML gallery.
"""

from dml_study.export.gallery import SearchResult, html_gallery, search_index, write_outputs
from dml_study.export.images import (
    EmbeddingsFile,
    dataset_images,
    embed_images,
    list_images,
    load_embedder,
    read_embeddings,
    write_embeddings,
)
from dml_study.export.run import RunWeights, load_checkpoint_weights, load_run
from dml_study.export.writer import ExportExistsError, export_run

__all__ = [
    "EmbeddingsFile",
    "ExportExistsError",
    "RunWeights",
    "SearchResult",
    "dataset_images",
    "embed_images",
    "export_run",
    "html_gallery",
    "list_images",
    "load_checkpoint_weights",
    "load_embedder",
    "load_run",
    "read_embeddings",
    "search_index",
    "write_embeddings",
    "write_outputs",
]

"""Datasets for deep metric learning: four benchmarks, the embedded icon dataset, samplers.

- :func:`get_dataset` loads CUB-200-2011, Cars196, Stanford Online Products and In-Shop from
  their official layouts under a data root, and the embedded offline datasets built from
  Debian packages into a local cache on first use (:mod:`dml_study.data.embedded`): ``"icons"``
  (icon themes; the default) and ``"glyphs"`` (CJK characters x font designs, many classes).
- :func:`build_transforms` / :func:`transforms_for_model` / :func:`model_transforms`: the
  literature's transforms (the last is the trainer's pair, from the run config).
- :class:`MPerClassBatchSampler` / :class:`RandomBatchSampler`: seeded, DDP-sharded batches.
- :func:`build_dataloader` and the :class:`DecodedImageCache` for decode-free epochs.
- ``python -m dml_study.data download|verify|sources``: fetch a benchmark from its official
  source into its official layout (:mod:`~dml_study.data.download`), decode every image once
  and list the unreadable ones (:mod:`~dml_study.data.verify`, through the one screening path
  :mod:`~dml_study.data.screening`).
- :mod:`dml_study.data.splits`: class-disjoint validation folds (:func:`validation_split`),
  seeded per-class subsets (:func:`subset_per_class`) and the test-split guard
  (:func:`forbid_test_split`, ``$DML_STUDY_FORBID_TEST``).
"""

from .base import (
    DatasetLayoutError,
    DatasetSizeWarning,
    DMLDataset,
    EmbeddedBuildError,
    IconBuildError,
)
from .cache import DecodedImageCache
from .images import CorruptImageError
from .layout import DATA_ROOT_ENV, resolve_data_root
from .loader import build_dataloader
from .registry import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_info,
    dataset_protocol,
    default_recall_ks,
    get_dataset,
    is_dataset,
    list_datasets,
)
from .samplers import MPerClassBatchSampler, RandomBatchSampler
from .splits import (
    FORBID_TEST_ENV,
    TestSplitForbiddenError,
    forbid_test_split,
    is_test_split_forbidden,
    subset_per_class,
    validation_split,
    validation_view,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    model_transforms,
    transforms_for_model,
)

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "DEFAULT_DATASET",
    "FORBID_TEST_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CorruptImageError",
    "DMLDataset",
    "DatasetInfo",
    "DatasetLayoutError",
    "DatasetSizeWarning",
    "DecodedImageCache",
    "EmbeddedBuildError",
    "IconBuildError",
    "MPerClassBatchSampler",
    "RandomBatchSampler",
    "TestSplitForbiddenError",
    "build_dataloader",
    "build_transforms",
    "dataset_info",
    "dataset_protocol",
    "default_recall_ks",
    "forbid_test_split",
    "get_dataset",
    "is_dataset",
    "is_test_split_forbidden",
    "list_datasets",
    "model_transforms",
    "resolve_data_root",
    "subset_per_class",
    "transforms_for_model",
    "validation_split",
    "validation_view",
]

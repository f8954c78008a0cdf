"""The model card of an export: ``README.md``, Markdown with YAML front matter.

The front matter follows the Hugging Face model-card metadata
(huggingface/hub-docs ``modelcard.md``): ``library_name``, ``tags``, ``datasets``,
``metrics``, ``license`` (``other`` with ``license_name``/``license_link``, because the
weights and the training images carry several licences), optional ``base_model`` (a timm
hub backbone's ``hf_hub_id``), and a ``model-index`` whose results name the task, the
dataset with its split, and each metric with its value and a name saying the split and the
epoch it was measured at. A ``dml_study`` block adds what the Hub has no field for: the
export format, run, tier, exported weights and epoch, the run's full config, its commit and
package versions (the run's provenance) and the licence notes. Everything is produced by
``yaml.safe_dump`` from :func:`front_matter`, so it always parses back to the same data.

Every value taken from a run or a dataset is escaped for Markdown tables
(:func:`md_cell`), so a class or file name cannot break the layout.
"""

from __future__ import annotations

from typing import Any

import yaml

from dml_study.config import ExperimentConfig
from dml_study.models.exported import (
    CARD_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PROXIES_FILE,
)

#: Metric ids of the front matter's ``metrics`` list and model-index entries.
_METRIC_IDS = {"MAP@R": "map_at_r", "RP": "r_precision", "NMI": "nmi"}


def metric_id(name: str) -> str:
    """``R@1`` → ``recall_at_1``; ``MAP@R`` → ``map_at_r``; ``RP`` → ``r_precision``."""
    if name.startswith("R@"):
        return f"recall_at_{name[2:]}"
    return _METRIC_IDS.get(name, name.lower())


def _metric_names(record: dict[str, Any]) -> list[str]:
    recalls = sorted((k for k in record if k.startswith("R@")), key=lambda k: int(k[2:]))
    return recalls + [k for k in ("MAP@R", "RP", "NMI") if k in record]


def front_matter(manifest: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """The card's YAML metadata (see the module docstring)."""
    src, arch, metrics = manifest["source"], manifest["architecture"], manifest["metrics"]
    dataset = manifest["dataset"]
    exported = metrics["exported"]
    names = _metric_names(exported)
    epoch = exported.get("epoch")
    results = [{
        "task": {"type": "image-feature-extraction",
                 "name": "Image retrieval (Recall@K on classes unseen in training)"},
        "dataset": {"type": dataset["name"], "name": f"{dataset['name']} ({dataset['kind']})",
                    "split": metrics["split"]},
        "metrics": [{"type": metric_id(n), "value": round(float(exported[n]), 6),
                     "name": f"{n} ({metrics['split']}, epoch {epoch}, {src['weights']} weights)",
                     "verified": False} for n in names],
    }]
    licences = manifest["licences"]
    meta: dict[str, Any] = {
        "library_name": "dml_study",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["deep-metric-learning", "image-retrieval", "image-feature-extraction",
                 config.loss.name.replace("_", "-"), "timm", "pytorch", "safetensors"]
                + (["soft-orthogonality"] if config.loss.so_lambda > 0 else []),
        "license": "other",
        "license_name": "see-licence-notes",
        "license_link": f"{CARD_FILE}#licence-notes",
        "datasets": [dataset["name"]],
        "metrics": [metric_id(n) for n in names],
    }
    base_model = _base_model(licences["backbone"])
    if base_model:
        meta["base_model"] = base_model
    meta["model-index"] = [{"name": manifest["name"], "results": results}]
    provenance = manifest.get("provenance") or {}
    meta["dml_study"] = {
        "export_format": manifest["format"],
        "run_name": src["run_name"],
        "tier": src["tier"],
        "weights": src["weights"],
        "epoch": src["epoch"],
        "architecture": arch,
        "metrics": {k: metrics[k] for k in ("split", "final", "best", "untrained")},
        "config": config.to_dict(),
        "commit": provenance.get("git_commit"),
        "versions": {"dml_study": provenance.get("dml_study"),
                     "python": provenance.get("python"),
                     **(provenance.get("packages") or {})},
        "exported_with": manifest.get("versions", {}),
        "licences": {"backbone": licences["backbone"],
                     "dataset": {k: v for k, v in licences["dataset"].items()
                                 if k != "packages"}},
    }
    return meta


def _base_model(backbone: dict[str, str]) -> str | None:
    weights = backbone.get("weights", "")
    prefix = "timm pretrained weights "
    if weights.startswith(prefix) and "/" in weights[len(prefix):]:
        return weights[len(prefix):]
    return None


def md_cell(value: Any) -> str:
    """``value`` as text safe inside a Markdown table cell (``|``, newlines, HTML escaped)."""
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split())


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def render_card(manifest: dict[str, Any], config: ExperimentConfig) -> str:
    """The whole ``README.md``: front matter and the Markdown body."""
    meta = front_matter(manifest, config)
    head = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"
    return head + "\n" + _body(manifest, config)


def _body(manifest: dict[str, Any], config: ExperimentConfig) -> str:
    src, arch, metrics = manifest["source"], manifest["architecture"], manifest["metrics"]
    dataset, pre = manifest["dataset"], manifest["preprocessing"]
    provenance = manifest.get("provenance") or {}
    name = md_cell(manifest["name"])
    head = (f"a linear head to {arch['embedding_dim']} dimensions" if arch["head"] == "linear"
            else "no head (the backbone's features)")
    so = (f", Soft Orthogonality λ = {config.loss.so_lambda:g}" if config.loss.so_lambda
          else "")
    tier = ("the whole network was fine-tuned" if src["tier"] == "fine-tuned" else
            "the frozen tier: only the head and the proxies were trained, on cached features "
            "of the pretrained backbone, which is included unchanged")
    parts = [
        f"# {name}",
        "",
        f"An image embedder for retrieval trained by dml_study "
        f"(deep metric learning): backbone `{md_cell(arch['backbone'])}` (timm "
        f"`{md_cell(arch['timm_architecture'])}`, {arch['feature_dim']} features) with {head}"
        f"{', L2-normalised' if arch['l2_normalize'] else ''}, trained with the "
        f"`{md_cell(config.loss.name)}` loss{so} on `{md_cell(dataset['name'])}` "
        f"({dataset['train_classes']} training classes); {tier}. Exported: the "
        f"**{src['weights']}** weights, epoch {src['epoch']} of {src['epochs']} "
        f"(`{md_cell(src['checkpoint'])}`).",
        "",
        "Retrieval compares embeddings by cosine similarity; the proxies (one per training "
        "class) are included for analysis and further training, not needed to embed.",
        "",
        "## Files",
        "",
        _table(["file", "what"], [
            [MODEL_FILE, "the embedder's tensors (backbone.*, head.*), float32"],
            [PROXIES_FILE, f"`proxies`: {manifest['proxies']['num_classes']} × "
                           f"{manifest['proxies']['dim']}, one row per training class"],
            [CONFIG_FILE, "the run's resolved training config"],
            [MANIFEST_FILE, "architecture, preprocessing, classes, metrics, provenance, "
                            "sha256 of every file"],
            [CARD_FILE, "this card"],
        ]),
        "",
        "## Use",
        "",
        "```bash",
        "python -m dml_study.embed OUT --images DIR --out embeddings.npz",
        "python -m dml_study.search OUT --index embeddings.npz --query IMAGE_OR_DIR -k 5",
        "```",
        "",
        "```python",
        "from dml_study.export import load_embedder",
        "",
        'model = load_embedder("OUT").eval()  # no download: every weight is in the export',
        "```",
        "",
        "or, naming the architecture (checked against the export):",
        "",
        "```python",
        "from dml_study.models import create_embedder",
        "",
        "model = create_embedder("
        + ", ".join(f"{k}={v!r}" for k, v in arch_kwargs(arch).items())
        + ', weights="OUT")',
        "```",
        "",
        f"Preprocessing (the run's evaluation transform): {md_cell(pre['transform'])}; "
        f"image_size {pre['image_size']}, resize {pre['resize']}, pre_resize_shorter "
        f"{pre['pre_resize_shorter']}, mean {manifest['data_config'].get('mean')}, std "
        f"{manifest['data_config'].get('std')}, interpolation "
        f"{manifest['data_config'].get('interpolation')}.",
        "",
        "## Evaluation",
        "",
        _evaluation(metrics, src),
        "",
        "## Training",
        "",
        _training(config, dataset),
        "",
        "## Provenance",
        "",
        _table(["", ""], [
            ["run", src["run_name"]],
            ["commit", provenance.get("git_commit") or "unknown"],
            ["dml_study", provenance.get("dml_study")],
            ["python", provenance.get("python")],
            *[[pkg, ver] for pkg, ver in (provenance.get("packages") or {}).items()],
            ["device", provenance.get("run_device") or provenance.get("device")],
            ["started", provenance.get("started")],
            ["exported", manifest.get("created")],
        ]),
        "",
        "## Licence notes",
        "",
        _licences(manifest["licences"]),
        "",
        "## Limitations",
        "",
        "- Recall@K measures retrieval among the test classes, which the model never saw in "
        "training; the numbers hold for images like the training data, at this "
        f"preprocessing ({pre['image_size']} px).",
    ]
    if src["tier"] == "frozen":
        parts.append(
            "- Frozen tier: the run's metrics were computed on float16-cached backbone "
            "features; embedding in float32 (what `dml_study.embed` does) differs from them "
            "by that rounding.")
    if dataset["kind"] == "embedded":
        parts.append(
            "- The embedded datasets are CPU-sized stand-ins for the benchmarks: compare "
            "arms of one study, not these numbers with published ones.")
    return "\n".join(parts) + "\n"


def arch_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    """The non-default ``create_embedder`` arguments of an architecture record."""
    out = {"backbone": arch["backbone"], "embedding_dim": arch["embedding_dim"]}
    for key in ("l2_normalize", "img_size", "patch_size", "input_size"):
        if arch.get(key) not in (None, False):
            out[key] = arch[key]
    out.update(arch.get("timm_kwargs") or {})
    return out


def _evaluation(metrics: dict[str, Any], src: dict[str, Any]) -> str:
    names = _metric_names(metrics["final"])
    rows = []
    for key, label in (("untrained", "pretrained, before training"), ("final", "final"),
                       ("best", "best test R@1")):
        record = metrics.get(key) or {}
        if not any(n in record for n in names):
            continue
        exported = "yes" if key == src["weights"] else ""
        rows.append([label, record.get("epoch"), metrics["split"], exported,
                     *[_fmt(record.get(n)) for n in names]])
    note = ("The **best** row is the epoch with the highest R@1 *on the test split itself*, "
            "an optimistic selection; the **final** row is the honest number.")
    return _table(["weights", "epoch", "split", "exported", *names], rows) + "\n\n" + note


def _training(config: ExperimentConfig, dataset: dict[str, Any]) -> str:
    c = config
    rows = [
        ["dataset", f"{dataset['name']} ({dataset['kind']}, {dataset['protocol']} protocol)"],
        ["source", dataset.get("source")],
        ["training classes", dataset.get("train_classes")],
        ["test images / classes",
         f"{dataset.get('test_images', '?')} / {dataset.get('test_classes', '?')}"],
        ["loss", f"{c.loss.name} {c.loss.params or ''}".strip()],
        ["Soft Orthogonality", f"λ = {c.loss.so_lambda:g} (gram {c.loss.so_gram}, "
                               f"{c.loss.so_reduction})"],
        ["proxy init", c.loss.proxy_init],
        ["optimiser", f"AdamW lr {c.optim.lr:g} (head ×{c.optim.head_lr_mult:g}, proxies "
                      f"×{c.optim.proxy_lr_mult:g}), weight decay {c.optim.weight_decay:g}"],
        ["schedule", f"{c.schedule.epochs} epochs, {c.schedule.name}, backbone frozen for "
                     f"{c.schedule.freeze_backbone_epochs} epoch(s)"],
        ["batches", f"{c.data.batch_size} images, {c.data.m_per_class} per class"],
        ["images", f"{c.data.image_size} px, crop scale {list(c.data.crop_scale)}"],
        ["seed", c.run.seed],
    ]
    return _table(["", ""], rows) + f"\n\nThe full config is `{CONFIG_FILE}`."


def _licences(licences: dict[str, Any]) -> str:
    bb, ds = licences["backbone"], licences["dataset"]
    lines = [
        "Whether trained weights are a derivative of their training images is not settled; "
        "these notes record the terms that may apply. They are not legal advice.",
        "",
        f"- **Backbone weights**: {md_cell(bb['weights'])}; licence **{md_cell(bb['licence'])}**"
        f" (source: {md_cell(bb['source'])}).",
        f"- **Training images**: {md_cell(ds['summary'])} (source: {md_cell(ds['source'])}).",
    ]
    if ds.get("packages"):
        lines += ["", _table(["package", "version used", "licences (debian/copyright)",
                              "read from version"],
                             [[p["package"], p["version"] or "unknown", "; ".join(p["licences"]),
                               p["licences_read_from"] or "not in the table"]
                              for p in ds["packages"]])]
    return "\n".join(lines)

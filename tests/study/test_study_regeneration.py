"""Regeneration replaces, never appends (#23.5): a study regenerated twice from scratch.

``make study`` on a fresh clone retrains every run (``results/runs/`` is not committed) over
the committed report (``results/<study>/``). A tiny study (a fine-tuned group on the fake
``02_train``, so there are run logs and executed run notebooks, and a frozen group on
generated features) is rendered, its runs are deleted, and it is rendered again. Every
committed artefact of the second regeneration (logs, executed notebooks, pages, figures,
claims, index) must be whole (one training per log, no section twice) and equal to the
first's once timings and timestamps are masked: nothing of the first survives by being
appended to.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from degenerate_helpers import copy_notebooks, write_frozen_study, write_synthetic_features
from fixture_datasets import write_cub_fixture
from study_helpers import write_fake_train_notebook

from dml_study.study.plan.config import load_study_config

#: Masks of what legitimately differs between two regenerations of the same inputs.
MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    # timestamps: ISO (papermill, provenance), log stamps, git's "-dirty" is the same
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "<time>"),
    # durations as printed ("in 3 s", "2.1 min", "0.9 s", "43 s")
    (re.compile(r"\b\d+(\.\d+)?(e-?\d+)?\s?(s|min|ms)\b"), "<duration>"),
    # durations as JSON values
    (re.compile(r'"(seconds|duration|start_time|end_time|train_time_s|time_s|elapsed)"'
                r':\s*[-+0-9.eE"]+[^,}\]\n]*'), r'"\1": <masked>'),
    # the kernel's and the workers' process ids, temporary paths
    (re.compile(r"/tmp/[\w./-]+"), "<tmp>"),
)


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def snapshot(study: Path) -> dict[str, str | bytes]:
    """Every file under ``study`` (the committed report): text masked, binaries as bytes."""
    out: dict[str, str | bytes] = {}
    for path in sorted(p for p in study.rglob("*") if p.is_file()):
        rel = path.relative_to(study).as_posix()
        data = path.read_bytes()
        try:
            out[rel] = mask(data.decode("utf-8"))
        except UnicodeDecodeError:
            out[rel] = data
    return out


def _regenerate(config) -> dict[str, str | bytes]:
    from dml_study.study.pipeline.runner import run_study

    shutil.rmtree(config.runs_dir, ignore_errors=True)  # a fresh clone: no results/runs/
    write_synthetic_features(config)
    run_study(config, progress=False)
    assert not Path(f"{config.study_dir}.staging").exists()
    return snapshot(config.study_dir)


@pytest.mark.slow
def test_a_regeneration_rewrites_every_artefact_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    data = write_cub_fixture(tmp_path / "data", num_classes=8, images_per_class=6)
    copy_notebooks(tmp_path, ["03_ablations.ipynb", "05_results.ipynb"])
    write_fake_train_notebook(tmp_path / "notebooks" / "fake_train.ipynb")
    config = load_study_config(write_frozen_study(
        tmp_path, data, notebooks=["03_ablations.ipynb", "05_results.ipynb"],
        train_notebook="fake_train.ipynb",
        groups=[
            {"name": "so_vs_none", "seeds": [0, 1], "description": "fake fine-tuned runs",
             "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
            {"name": "frozen_so", "tier": "frozen", "datasets": ["cub200"], "seeds": [0, 1],
             "description": "frozen", "variants": {"no_so": {"so_lambda": 0.0},
                                                   "so": {"so_lambda": 0.1}}},
        ],
        headline={"group": "so_vs_none", "baseline": "no_so", "treatment": "so"},
        execution={"figure_dpi": 50, "stream_output": False, "max_parallel": 2},
    ))
    first = _regenerate(config)
    second = _regenerate(config)

    logs = [name for name in second if name.startswith("runs/") and name.endswith(".log")]
    assert len(logs) == 4  # one per fine-tuned run
    for name in logs:
        log = second[name]
        assert log.count("trained in") == 1 and log.count("launch_worker: run ") == 2, name
        assert log.count("fake run ") == 1, name
    figures = json.loads(second["figures/index.json"])
    assert len({f["file"] for f in figures}) == len(figures)  # no figure listed twice
    readme = second["README.md"]
    headings = [line for line in readme.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings))  # no section twice
    assert sorted(first) == sorted(second)  # the same files, no leftovers
    different = [name for name in first if first[name] != second[name]]
    assert different == [], _first_difference(first, second, different)


def _first_difference(first: dict, second: dict, names: list[str]) -> str:
    """The first differing line of each differing file (for the failure message)."""
    lines = []
    for name in names[:5]:
        a, b = first[name], second[name]
        if isinstance(a, bytes) or isinstance(b, bytes):
            lines.append(f"{name}: binary, {len(a)} vs {len(b)} bytes")
            continue
        pairs = zip(a.splitlines(), b.splitlines(), strict=False)
        diff = next(((x, y) for x, y in pairs if x != y), ("<length>", "<length>"))
        lines.append(f"{name}:\n  - {diff[0][:300]}\n  + {diff[1][:300]}")
    return "\n".join(lines)

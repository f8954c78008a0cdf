from pathlib import Path
from typing import Any, Literal

import pytest

from dml_study.typed_fields import coerce


class Bad(ValueError):
    pass


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        ([1, 2], tuple[int, ...], (1, 2)),
        ([0.5, 1], tuple[float, float], (0.5, 1.0)),
        (3, float, 3.0),
        ("3e-5", float, 3e-5),  # PyYAML 1.1 reads this as a string
        (None, int | None, None),
        (2, int | None, 2),
        ("a", Literal["a", "b"], "a"),
        (None, dict[str, Any], {}),
        ("results", Path, Path("results")),
        ({"x": 1}, Any, {"x": 1}),
    ],
)
def test_coerce_normalises_valid_values(value, annotation, expected):
    out = coerce(value, annotation, "key", Bad)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        (True, int, "key: expected an integer"),
        (1, bool, "key: expected true/false"),
        ("x", float, "key: expected a number"),
        ("c", Literal["a", "b"], "key: 'c' is not one of 'a', 'b'"),
        ([1, 2, 3], tuple[int, int], "key: expected 2 values"),
        ("x", int | None, "key: expected int | None"),
        ([1, "x"], tuple[int, ...], r"key\[1\]: expected an integer"),
        (3, str, "key: expected a string"),
        (3, Path, "key: expected a path"),
    ],
)
def test_coerce_rejects_with_callers_error_class(value, annotation, message):
    with pytest.raises(Bad, match=message):
        coerce(value, annotation, "key", Bad)


def test_unsupported_annotation_is_a_programming_error():
    with pytest.raises(TypeError, match="unsupported annotation"):
        coerce(1, complex, "key", Bad)


def test_a_yaml_config_is_read_again_when_the_file_changes(tmp_path):
    """The parsed YAML is cached per file version (a grid reads the presets thousands of
    times); an edited file is read again and callers get their own copy."""
    import os

    from dml_study.config import _read_yaml, load_config

    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.001\n")
    assert load_config("icons", yaml_path=path).optim.lr == 0.001
    first = _read_yaml(path)
    first["optim"]["lr"] = 7.0  # the caller's copy
    assert _read_yaml(path)["optim"]["lr"] == 0.001
    path.write_text("optim:\n  lr: 0.002\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert load_config("icons", yaml_path=path).optim.lr == 0.002

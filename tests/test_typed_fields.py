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

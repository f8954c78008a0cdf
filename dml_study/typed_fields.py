"""Check and normalise YAML/keyword values against dataclass field annotations.

Both configuration layers (:mod:`dml_study.config` for a training run and
:mod:`dml_study.study.plan.config` for a study) read untyped YAML into typed dataclasses. This
module is the one place that knows how a YAML value maps onto an annotation, so that both
layers accept and reject the same things; each passes its own error class so that its
callers can catch it.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np


def close_matches(value: Any, choices: Iterable[Any], n: int = 1) -> list[str]:
    """The (at most ``n``) ``choices`` closest to ``value`` (:func:`difflib.get_close_matches`).

    The one fuzzy match of the package: every did-you-mean hint (config keys and sections,
    registry names, study keys, papermill parameters, launchers) is built from it.
    """
    return difflib.get_close_matches(str(value), [str(c) for c in choices], n=n)


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``value``, or ``""``."""
    close = close_matches(value, choices)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(
    value: Any, choices: Iterable[Any], key: str, error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` naming ``key``, the valid ``choices`` and the closest one, if invalid."""
    choices = list(choices)
    if value not in choices:
        raise error(
            f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}"
            f"{did_you_mean(value, choices)}"
        )


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}`` (dotted keys, mapping order; lists kept).

    Tuples become lists, so a flattened dataclass dict equals its YAML/JSON round trip.
    """
    if not isinstance(node, dict):
        return {prefix: list(node) if isinstance(node, tuple) else node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (strings from ``from __future__`` evaluated)."""
    return dict(_field_types(cls))


@functools.cache
def _field_types(cls: type) -> types.MappingProxyType[str, Any]:
    # A class's annotations do not change at run time; resolving them is slow (a study's
    # grid validates tens of thousands of configs).
    return types.MappingProxyType(typing.get_type_hints(cls))


def type_name(annotation: Any) -> str:
    """A readable name for an annotation, used in error messages."""
    return str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any, key: str, error: type[Exception] = ValueError) -> Any:
    """Return ``value`` checked against ``annotation`` and normalised.

    Lists become tuples, integers become floats where a float is expected, strings become
    :class:`~pathlib.Path` where a path is expected, and ``None`` for a mapping is an empty
    mapping. A value that does not fit raises ``error`` with a message starting with ``key``.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, annotation, args, key, error)
    if origin is Literal:
        if value not in args:
            raise error(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        return _coerce_tuple(value, annotation, args, key, error)
    if origin is dict or annotation is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise error(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    scalar = _SCALARS.get(annotation)
    if scalar is None:
        raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error
    return scalar(value, key, error)


def _coerce_union(
    value: Any, annotation: Any, args: tuple[Any, ...], key: str, error: type[Exception]
) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, key, error)
        except error:
            continue
    raise error(f"{key}: expected {type_name(annotation)}, got {value!r}")


def _coerce_tuple(
    value: Any, annotation: Any, args: tuple[Any, ...], key: str, error: type[Exception]
) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise error(f"{key}: expected a list ({type_name(annotation)}), got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]", error) for i, v in enumerate(value))
    if len(value) != len(args):
        raise error(f"{key}: expected {len(args)} values, got {value!r}")
    return tuple(coerce(v, a, key, error) for v, a in zip(value, args, strict=True))


def _as_bool(value: Any, key: str, error: type[Exception]) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise error(f"{key}: expected true/false, got {value!r}")
    return bool(value)


def _as_int(value: Any, key: str, error: type[Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise error(f"{key}: expected an integer, got {value!r}")
    return int(value)


def _as_float(value: Any, key: str, error: type[Exception]) -> float:
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads "3e-5" (no dot) as a string; accept what float() accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise error(f"{key}: expected a number, got {value!r}")
    return float(value)


def _as_str(value: Any, key: str, error: type[Exception]) -> str:
    if not isinstance(value, str):
        raise error(f"{key}: expected a string, got {value!r}")
    return value


def _as_path(value: Any, key: str, error: type[Exception]) -> Path:
    if not isinstance(value, str | Path):
        raise error(f"{key}: expected a path, got {value!r}")
    return Path(value)


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str, Path: _as_path}

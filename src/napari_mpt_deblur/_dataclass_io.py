"""JSON round trips for the package's frozen config dataclasses.

Checkpoint headers, parameter sidecars and YAML files hold lists and plain numbers, while the
configs are frozen dataclasses of tuples. Every config reads and writes itself through these two
functions so that they all behave alike:

- an unknown key is an error naming the valid ones (a typo must not silently train, simulate or
  build something else with a default);
- values are converted to the field's declared type (``"16"`` → ``16`` for
  an ``int``, lists → tuples, ``None`` kept for optional fields), but never lossily: ``12.5`` is
  not an ``int`` and ``"no"`` is not a ``bool`` (``bool("no")`` would be ``True``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Self, TypeVar

__all__ = ["DictRoundTrip", "check_keys", "dataclass_from_dict", "dataclass_to_dict"]

C = TypeVar("C")


def dataclass_to_dict(config: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fields as JSON types: tuples become lists (nested ones too), mappings plain dicts."""
    return {f.name: _jsonable(getattr(config, f.name))
            for f in dataclasses.fields(config) if f.name not in exclude}


def check_keys(cls: type, keys: Any, *, exclude: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming every key that is not a field of ``cls``, and the valid ones."""
    known = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} keys {unknown}; valid keys: {', '.join(known)}"
        )


def dataclass_from_dict(cls: type[C], data: Mapping[str, Any], *,
                        exclude: tuple[str, ...] = ()) -> C:
    """Build ``cls`` from :func:`dataclass_to_dict` output or a user's YAML, checking the keys.

    Fields missing from ``data`` keep their defaults.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} data must be a mapping; got {type(data).__name__}")
    check_keys(cls, data, exclude=exclude)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.__name__}.{key}: {exc}") from None
    return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0]) if len(options) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, typing.Iterable):
            return value  # left to the dataclass's own check, which knows what it should be
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(args) == len(items):
            return tuple(_coerce(v, a) for v, a in zip(items, args))
        return tuple(items)  # a wrong length: the dataclass's check says what it should be
    if hint is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        return _as_int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = float(value)
    if not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(number)


class DictRoundTrip:
    """``to_dict``/``from_dict`` for a config dataclass, so each config does not write the same
    two delegations to :func:`dataclass_to_dict` and :func:`dataclass_from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists), for files, checkpoints and sidecars."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`, also for YAML: unknown keys and lossy values raise
        ``ValueError`` naming them."""
        return dataclass_from_dict(cls, data)

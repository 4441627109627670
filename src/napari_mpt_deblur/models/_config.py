"""JSON round trips for the architecture dataclasses (``MPTConfig``, ``HTCSFConfig``).

Checkpoint headers and YAML files hold lists and plain numbers while the configs are frozen
dataclasses of tuples, so loading coerces every value to its field's declared type. An unknown
key is an error rather than ignored: a typo would otherwise build a different model silently.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

__all__ = ["config_from_dict", "config_to_dict"]

C = TypeVar("C")


def config_to_dict(config: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fields as JSON types: tuples become lists, nested ones too."""
    return {f.name: _jsonable(getattr(config, f.name))
            for f in dataclasses.fields(config) if f.name not in exclude}


def config_from_dict(cls: type[C], data: dict[str, Any], *,
                     exclude: tuple[str, ...] = ()) -> C:
    """Build ``cls`` from :func:`config_to_dict` output (or a user's YAML), checking the keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {sorted(unknown)}; valid fields: {sorted(known)}"
        )
    return cls(**{key: _coerce(value, hints[key]) for key, value in data.items()})


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(args) == len(items):
            return tuple(_coerce(v, a) for v, a in zip(items, args))
        # a wrong length is left to the dataclass's own check, which says what it should be
        return tuple(_coerce(v, args[0]) for v in items) if len(set(args)) == 1 else tuple(items)
    if hint in (int, float, bool):
        if hint is bool and not isinstance(value, (bool, int)):
            raise ValueError(f"expected true or false, got {value!r}")
        return hint(value)
    return value

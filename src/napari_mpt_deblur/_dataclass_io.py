"""JSON round trips for the package's frozen config dataclasses.

Checkpoint headers, parameter sidecars and YAML files hold lists and plain numbers, while the
configs are frozen dataclasses of tuples. Every config reads and writes itself through these two
functions so that they all behave alike:

- an unknown key is an error naming the valid ones (a typo must not silently train, simulate or
  build something else with a default);
- values are converted to the field's declared type (``"16"`` → ``16`` for
  an ``int``, lists → tuples, ``None`` kept for optional fields), but never lossily: ``12.5`` is
  not an ``int`` and ``"no"`` is not a ``bool`` (``bool("no")`` would be ``True``);
- a field that was renamed (:func:`renamed_fields`) still loads under its old name, from files
  and keyword arguments alike, with a ``DeprecationWarning`` naming the new one (and a renamed
  keyword argument of a function, :func:`renamed_arguments`, still works the same way).

:class:`ConfigPart` is the other half of the configs' shape: a group of fields that several
configs share (optimiser, EFCR, optics). A config declares each part once, as a field holding
the part (:func:`composed_of_parts`), yet reads and writes the parts' fields flat, under their
own names: every recipe, resumable state and checkpoint header holds them flat (``lr: 1e-4``),
so a config written by any version reads unchanged and one written now still reads in older
versions. The mapping between the two shapes lives here, once, for every composed config:

- reading (:func:`dataclass_from_dict`), keyword construction and ``dataclasses.replace``: a
  part's field given flat (``lr=1e-4``) updates that part (the one passed, else the config's
  default part, whose defaults may differ per config); a nested mapping (``optim: {lr: 1e-4}``)
  is read the same way; the same field given both ways in one mapping is an error;
- writing (:func:`dataclass_to_dict`): the parts' fields spliced in flat, at the part's place;
- a config may expose only some of a part's fields (``field(metadata={"flat": names})``): the
  others are the config's to derive (the evaluation protocol's camera gain follows from its
  full-scale fraction), so they are neither read nor written;
- attribute reads: ``cfg.lr`` is ``cfg.optim.lr`` (read-only, as the frozen config).

No ``DeprecationWarning`` for the flat names: they are the format of every stored file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

__all__ = ["ConfigPart", "DictRoundTrip", "check_keys", "composed_of_parts",
           "dataclass_from_dict", "dataclass_to_dict", "flat_field_names", "renamed_arguments",
           "renamed_fields"]

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])


def dataclass_to_dict(config: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fields as JSON types: tuples become lists (nested ones too), mappings plain dicts; the
    parts of a composed config (:func:`composed_of_parts`) spliced in flat."""
    parts = _parts(type(config))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in parts:
            flat = _flat_names(f, parts[f.name])
            out.update((k, v) for k, v in dataclass_to_dict(value).items()
                       if k in flat and k not in exclude)
        elif f.name not in exclude:
            out[f.name] = _jsonable(value)
    return out


def flat_field_names(cls: type) -> tuple[str, ...]:
    """The keys of ``cls``'s files, in order: its fields, each part's fields in its place."""
    parts = _parts(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name in parts:
            names.extend(_flat_names(f, parts[f.name]))
        else:
            names.append(f.name)
    return tuple(names)


def check_keys(cls: type, keys: Any, *, exclude: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming every key that is not a field of ``cls`` (or, flat, of one
    of its parts), and the valid ones."""
    known = [n for n in (*flat_field_names(cls), *_parts(cls)) if n not in exclude]
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
    data = _new_names(cls, data, stacklevel=4)
    data = _flatten_parts(cls, data)
    check_keys(cls, data, exclude=exclude)
    hints = typing.get_type_hints(cls)
    for part in _parts(cls).values():
        hints.update(typing.get_type_hints(part))
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


def renamed_fields(**renames: str) -> Callable[[type[C]], type[C]]:
    """Class decorator: fields renamed ``old=new`` still work under their old names.

    Applied above ``@dataclass``. The old name is accepted as a keyword argument (so
    ``dataclasses.replace`` and presets' overrides work too) and as a key of
    :func:`dataclass_from_dict` (YAML/JSON files, checkpoint headers and resumable states
    written before the rename), and read as an attribute; each use raises a
    ``DeprecationWarning`` naming the new name. When both names are given, the later one (in
    keyword or mapping order) wins, as when two dicts are merged.
    """

    def decorate(cls: type[C]) -> type[C]:
        names = set(flat_field_names(cls))
        unknown = sorted(set(renames.values()) - names)
        if unknown:
            raise TypeError(f"renamed_fields: {cls.__name__} has no fields {unknown}")
        cls.RENAMED_FIELDS = {**getattr(cls, "RENAMED_FIELDS", {}), **renames}  # type: ignore[attr-defined]
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **_new_names(cls, kwargs, stacklevel=3))

        cls.__init__ = __init__  # type: ignore[method-assign]
        for old, new in renames.items():
            setattr(cls, old, property(_old_attribute(cls.__name__, old, new),
                                       doc=f"Deprecated name of :attr:`{new}`."))
        return cls

    return decorate


def _old_attribute(owner: str, old: str, new: str) -> Callable[[Any], Any]:
    def getter(self: Any) -> Any:
        warnings.warn(f"{owner}.{old} is deprecated; use {owner}.{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    return getter


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Function decorator: keyword arguments renamed ``old=new`` still work under their old
    names, with a ``DeprecationWarning`` naming the new one (the later name wins when both are
    given)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **_renamed(func.__name__, renames, kwargs, stacklevel=3))

        return wrapper  # type: ignore[return-value]

    return decorate


def _new_names(cls: type, data: Mapping[str, Any], *, stacklevel: int) -> Mapping[str, Any]:
    """``data`` with the old names of :func:`renamed_fields` replaced by the new ones
    (``stacklevel`` counted from the caller of this function)."""
    return _renamed(cls.__name__, getattr(cls, "RENAMED_FIELDS", {}), data,
                    stacklevel=stacklevel + 1)


def _renamed(owner: str, renames: Mapping[str, str], data: Mapping[str, Any], *,
             stacklevel: int) -> Mapping[str, Any]:
    """``data`` with old names replaced by new ones (warning once per old name used)."""
    if not any(key in renames for key in data):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        new = renames.get(key)
        if new is not None:
            warnings.warn(f"{owner}: {key!r} is deprecated; use {new!r}",
                          DeprecationWarning, stacklevel=stacklevel)
            key = new
        out.pop(key, None)  # the later of two names for one value wins
        out[key] = value
    return out


class ConfigPart:
    """A group of fields that several configs share (optimiser, EFCR, optics).

    A part is a frozen dataclass that documents and validates its fields once. A config holds
    it as one field (:func:`composed_of_parts`), with its own default part where its defaults
    differ (fine-tuning's small learning rate), and still reads and writes its fields flat.
    """


def _parts(cls: type) -> dict[str, type]:
    """The part fields of a composed config class, by field name (empty for other classes)."""
    return getattr(cls, "CONFIG_PARTS", {})


def _flat_names(field: dataclasses.Field[Any], part: type) -> tuple[str, ...]:
    """The fields of ``part`` that a config reads and writes flat (``metadata["flat"]``, else
    all of them)."""
    names = tuple(f.name for f in dataclasses.fields(part))
    return tuple(field.metadata.get("flat", names))


def _part_keys(cls: type) -> dict[str, str]:
    """Flat key -> the name of the part field that holds it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {key: name for name, part in _parts(cls).items()
            for key in _flat_names(fields[name], part)}


def _flatten_parts(cls: type, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` with nested part mappings (``optim: {lr: ...}``) spliced in flat; the same field
    given both ways is a ``ValueError``. Part instances stay as given."""
    parts = _parts(cls)
    if not any(key in parts and isinstance(value, Mapping) for key, value in data.items()):
        return data
    keys = _part_keys(cls)
    out = {key: value for key, value in data.items()
           if not (key in parts and isinstance(value, Mapping))}
    for name, part in parts.items():
        nested = data.get(name)
        if not isinstance(nested, Mapping):
            continue
        nested = _new_names(part, nested, stacklevel=5)
        check_keys(part, nested)
        derived = sorted(k for k in nested if keys.get(k) != name)
        if derived:
            raise ValueError(f"{cls.__name__}.{name}: {derived} are not settable here; "
                             f"valid keys: {', '.join(k for k in keys if keys[k] == name)}")
        both = sorted(set(nested) & set(out))
        if both:
            raise ValueError(f"{cls.__name__}: {both} given both flat and under {name!r}")
        out.update(nested)
    return out


def _nest_keywords(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a composed config's ``__init__`` with the flat part fields moved
    into their parts: each part given (or the field's default part) updated by its fields."""
    kwargs = dict(_flatten_parts(cls, kwargs))
    keys = _part_keys(cls)
    changes: dict[str, dict[str, Any]] = {}
    for key in [k for k in kwargs if k in keys]:
        changes.setdefault(keys[key], {})[key] = kwargs.pop(key)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, values in changes.items():
        base = kwargs[name] if name in kwargs else _default(fields[name])
        kwargs[name] = dataclasses.replace(base, **values)
    return kwargs


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def composed_of_parts(cls: type[C]) -> type[C]:
    """Class decorator (above ``@dataclass``): the fields typed as a :class:`ConfigPart` are
    the config's parts, read and written flat (module notes).

    Keyword construction and ``dataclasses.replace`` take the parts' fields flat; attribute
    reads forward them (``cfg.lr`` is ``cfg.optim.lr``); :func:`dataclass_to_dict` and
    :func:`dataclass_from_dict` write and read them flat. A part's field may not share a name
    with a field of the config or of another part (one flat name, one place).
    """
    hints = typing.get_type_hints(cls)
    parts = {f.name: hints[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if isinstance(hints[f.name], type) and issubclass(hints[f.name], ConfigPart)}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    own = list(fields)
    flat = [n for name, part in parts.items() for n in _flat_names(fields[name], part)]
    hidden = sorted(set(flat) - {f.name for part in parts.values()
                                 for f in dataclasses.fields(part)})
    if hidden:
        raise TypeError(f"composed_of_parts: {cls.__name__} exposes {hidden}, not part fields")
    clashes = sorted(n for n in set(flat) if flat.count(n) > 1 or n in own)
    if clashes:
        raise TypeError(f"composed_of_parts: {cls.__name__} has {clashes} more than once")
    cls.CONFIG_PARTS = parts  # type: ignore[attr-defined]
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_nest_keywords(cls, kwargs))
        for name, part in parts.items():
            if not isinstance(getattr(self, name), part):
                raise TypeError(f"{cls.__name__}.{name} must be a {part.__name__} or a mapping "
                                f"of its fields; got {type(getattr(self, name)).__name__}")

    keys = _part_keys(cls)

    def __getattr__(self: Any, name: str) -> Any:
        part = keys.get(name)
        if part is None:
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return cls

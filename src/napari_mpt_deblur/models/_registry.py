"""Model registry: architecture presets by name, and architectures by checkpoint ``arch``.

Two tables, one per question:

- presets (``create_model("mpt-tiny")``): a name for an untrained network of a given size;
- architectures (``"mpt"``, ``"htcsf"``): what a checkpoint's ``arch`` means. Each architecture
  module registers an :class:`Architecture` that owns its checkpoint knowledge (config class,
  state-dict key filter, config inference from tensors, config checks), so that
  :mod:`.checkpoint` stays generic.

Trained weights have a third table of their own, keyed ``arch.tag``: :mod:`.pretrained`.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_MODEL_DESCRIPTIONS: dict[str, str] = {}

ConfigT = TypeVar("ConfigT")


def register_model(name: str, description: str = "") -> Callable[[Callable], Callable]:
    """Decorator registering a factory ``fn(**overrides) -> nn.Module`` under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODEL_FACTORIES:
            warnings.warn(f"model {name!r} is registered twice; the later one wins", stacklevel=2)
        _MODEL_FACTORIES[name] = fn
        _MODEL_DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return decorator


def register_presets(presets: Mapping[str, tuple[str, Mapping[str, Any]]],
                     config_class: Callable[..., ConfigT],
                     build: Callable[[ConfigT], nn.Module], family: str
                     ) -> Callable[..., ConfigT]:
    """Register each preset ``name: (description, config fields)`` of one architecture as a
    model (``create_model(name, **overrides)`` builds ``build(config)``) and return the
    architecture's ``preset_config(name, **overrides)``.

    A preset is a config and its model is the architecture built from that config, for every
    architecture, so this is written once here rather than in each architecture module.
    """

    def preset_config(name: str, **overrides: Any) -> ConfigT:
        """The config of a preset (without building the model)."""
        if name not in presets:
            raise ValueError(
                f"unknown {family} preset {name!r}; choose from {', '.join(presets)}")
        config = config_class(**presets[name][1])
        return config.replace(**overrides) if overrides else config  # type: ignore[attr-defined]

    def factory_of(name: str) -> Callable[..., nn.Module]:
        def factory(**overrides: Any) -> nn.Module:
            return build(preset_config(name, **overrides))

        return factory

    for name, (description, _fields) in presets.items():
        register_model(name, description)(factory_of(name))
    return preset_config


def _no_filter(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state_dict


@dataclass(frozen=True)
class Architecture:
    """How checkpoints of one architecture family are read and built.

    Attributes
    ----------
    name : str
        The checkpoint header's ``arch`` (``"mpt"``).
    config_class : type
        Frozen dataclass with ``to_dict``/``from_dict`` (``MPTConfig``).
    build : callable
        ``build(config) -> nn.Module`` (the class itself, usually).
    filter_state_dict : callable
        ``filter(state_dict) -> state_dict``: removes training wrappers' key prefixes before the
        keys are matched (identity by default).
    infer_config : callable or None
        ``infer(state_dict, routing) -> config`` for files without a project header (the
        authors' releases); raises ``CheckpointError`` when the tensors are not of this
        architecture. ``None``: header-less files are never of this architecture.
    check_config : callable or None
        ``check(config, state_dict)``: compares a header's size parameters with the tensors
        before anything is built, so a header cannot make a small file allocate a huge model.
    config_from_authors : callable or None
        ``convert(kwargs, routing) -> config`` from the released code's constructor arguments.
    """

    name: str
    config_class: type
    build: Callable[[Any], nn.Module]
    filter_state_dict: Callable[[dict], dict] = _no_filter
    infer_config: Callable[..., Any] | None = None
    check_config: Callable[[Any, dict], None] | None = None
    config_from_authors: Callable[..., Any] | None = None


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Make checkpoints whose header says ``arch.name`` loadable; returns ``arch``."""
    if arch.name in _ARCHITECTURES:
        warnings.warn(f"architecture {arch.name!r} is registered twice; the later one wins",
                      stacklevel=2)
    _ARCHITECTURES[arch.name] = arch
    return arch


def list_architectures() -> list[str]:
    """Names of the registered architecture families (checkpoint ``arch`` values)."""
    _ensure_builtin_models()
    return sorted(_ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The :class:`Architecture` called ``name``; ``ValueError`` lists the known ones."""
    _ensure_builtin_models()
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(_ARCHITECTURES))}"
        ) from None


def architecture_of(config: Any) -> Architecture:
    """The :class:`Architecture` whose config class ``config`` is an instance of."""
    _ensure_builtin_models()
    for arch in _ARCHITECTURES.values():
        if isinstance(config, arch.config_class):
            return arch
    raise TypeError(f"{type(config).__name__} is not the config of a registered architecture")


def _ensure_builtin_models() -> None:
    # Importing the model modules runs their @register_model decorators.
    from . import htcsf, mpt  # noqa: F401


def list_models(pattern: str | None = None) -> list[str]:
    """Names of registered architectures/presets, optionally filtered by a glob pattern."""
    _ensure_builtin_models()
    names = sorted(_MODEL_FACTORIES)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def describe_model(name: str) -> str:
    """One-line description of a registered model."""
    _ensure_builtin_models()
    _check_name(name)
    return _MODEL_DESCRIPTIONS[name]


def _check_name(name: str) -> None:
    if name not in _MODEL_FACTORIES:
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(sorted(_MODEL_FACTORIES))}"
        )


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build an untrained model from a preset name; ``overrides`` replace config fields.

    Examples
    --------
    >>> model = create_model("mpt-test", in_channels=1)  # doctest: +SKIP
    """
    _ensure_builtin_models()
    _check_name(name)
    model = _MODEL_FACTORIES[name](**overrides)
    model.preset_name = name
    return model

"""Model registry: presets by name, so configs stay plain data and pickers never copy lists."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_MODEL_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[Callable], Callable]:
    """Decorator registering a factory ``fn(**overrides) -> nn.Module`` under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODEL_FACTORIES:
            warnings.warn(f"model {name!r} is registered twice; the later one wins", stacklevel=2)
        _MODEL_FACTORIES[name] = fn
        _MODEL_DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return decorator


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

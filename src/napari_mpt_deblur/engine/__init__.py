"""Inference engine: ``deblur`` any image with any model (no torch import until used)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Cancelled", "DeblurReport", "deblur", "deblur_dask"]

_LAZY = {
    "Cancelled": ".predict",
    "DeblurReport": ".predict",
    "deblur": ".predict",
    "deblur_dask": ".lazy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

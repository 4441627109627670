"""Inference engine: ``deblur`` any image with any model (no torch import until used).

:func:`retain_freed_memory` (and :func:`tuning_available`, whether it can act here) is the host
memory policy ``deblur`` runs CPU inference under; it is public so that benchmarks time a bare
forward under the same policy as the engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ENSEMBLE_SIZES", "Cancelled", "DeblurReport", "deblur", "deblur_dask",
           "retain_freed_memory", "tuning_available"]

# Test-time augmentation: how many of the square's eight symmetries (rotations by 90° and
# mirror images) a tile is run through. Defocus PSFs are (nearly) rotationally symmetric, so
# every view is an equally valid input, and averaging the views cancels part of the network's
# orientation-dependent errors: +0.3 dB PSNR on the validation sets for 8x the time. Defined
# here, torch-free, so that ``mpt-deblur deblur --ensemble`` offers these without importing
# torch; :mod:`.predict` (which applies them) exports it too.
ENSEMBLE_SIZES = (1, 2, 4, 8)

_LAZY = {
    "Cancelled": ".predict",
    "DeblurReport": ".predict",
    "deblur": ".predict",
    "deblur_dask": ".lazy",
    "retain_freed_memory": "._allocator",
    "tuning_available": "._allocator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

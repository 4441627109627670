"""napari-mpt-deblur: microscopy defocus deblurring with the Multi-Pyramid Transformer.

The heavy dependencies (torch) are imported lazily, so that importing the package, or napari
reading its manifest, stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "__version__",
    "create_model",
    "deblur",
    "get_device",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_sample",
    "resolve_model",
]

_LAZY = {
    "load_model": "napari_mpt_deblur.models.resolve",
    "resolve_model": "napari_mpt_deblur.models.resolve",
    "list_pretrained": "napari_mpt_deblur.models.pretrained",
    "create_model": "napari_mpt_deblur.models._registry",
    "list_models": "napari_mpt_deblur.models._registry",
    "deblur": "napari_mpt_deblur.engine.predict",
    "Cancelled": "napari_mpt_deblur.engine.predict",
    # The device choice every entry point makes ("auto": CUDA, then MPS, then CPU); public so
    # that scripts resolve a ``--device`` exactly as ``deblur`` and the trainers do.
    "get_device": "napari_mpt_deblur._device",
    # The bundled actin sample (defocused, in-focus reference, pixel size): the image every
    # example, benchmark and the napari sample menu start from.
    "load_sample": "napari_mpt_deblur._sample_data",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._device import get_device
    from ._sample_data import load_sample
    from .engine.predict import Cancelled, deblur
    from .models._registry import create_model, list_models
    from .models.pretrained import list_pretrained
    from .models.resolve import load_model, resolve_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_mpt_deblur' has no attribute {name!r}")

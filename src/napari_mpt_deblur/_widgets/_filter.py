"""Layers → Filter → "Deblur defocus": one image layer in, its deblurred copy out.

A plain function for napari's menu: the selected image layer comes in (napari injects the active
layer), a layer data tuple goes out, and napari adds it or updates the layer of the same name
(``"<input> [deblurred]"``). It uses the default model (or the first one listed), picks the
device and tile size automatically and runs in the calling thread, so it suits quick runs on
modest images; the Defocus Deblur widget runs in the background, can be cancelled and offers the
other choices.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._layers import layer_axes, make_provenance, result_layer_kwargs
from ._worker import DeblurRequest, run_blocking

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["deblur_image"]


def deblur_image(image: napari.layers.Image) -> napari.types.LayerDataTuple:
    """Deblur ``image`` with the default model; return the result as a layer data tuple.

    Raises
    ------
    TypeError
        ``image`` is not an image layer (e.g. labels were selected).
    ValueError
        No model is available, the layer is multiscale, or the engine rejects the image.
    """
    from napari.layers import Image

    from ..models.catalog import get_catalog

    if not isinstance(image, Image):
        raise TypeError(
            f"Deblur defocus needs an image layer; got {type(image).__name__} "
            f"{getattr(image, 'name', '')!r}"
        )
    if image.multiscale:
        raise ValueError(f"{image.name!r} is multiscale; deblur its full-resolution level instead")
    catalog = get_catalog()
    model = catalog.default_name()
    if model is None:
        raise ValueError(
            "no deblurring model is installed yet: load a checkpoint in the Defocus Deblur widget "
            "or drop a checkpoint file onto napari"
        )
    axes = layer_axes(image)
    outcome = run_blocking(DeblurRequest(image=image.data, axes=axes, model=model,
                                         label=image.name), catalog=catalog)
    if outcome is None:  # pragma: no cover - nothing can cancel a blocking run
        raise RuntimeError("deblurring was cancelled")
    provenance = make_provenance(input_name=image.name, axes=axes, entry=outcome.entry,
                                 model_info=outcome.model_info, report=outcome.report, plane=None)
    kwargs: dict[str, Any] = result_layer_kwargs(image, outcome.data, provenance=provenance)
    logger.info("deblurred %r with %s in %.1f s", image.name, model,
                outcome.report.get("seconds", 0.0))
    return (outcome.data, kwargs, "image")

"""Lazy deblurring of dask and zarr arrays larger than memory.

The model is mapped over overlapping chunks with ``dask.array.map_overlap``; every chunk is
normalised with the same intensity range (percentiles of a strided sample of the whole array), so
chunks blend without brightness steps. With a ``dask.distributed`` client active, chunks run on its
workers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import os

    from ..models.info import DeblurModel

logger = logging.getLogger(__name__)

__all__ = ["deblur_dask", "is_lazy_array"]


def is_lazy_array(image: Any) -> bool:
    """True for dask arrays and zarr arrays (not numpy arrays)."""
    if isinstance(image, np.ndarray):
        return False
    module = type(image).__module__
    return module.startswith(("dask.", "zarr."))


def deblur_dask(
    image: Any,
    model: DeblurModel | str | os.PathLike | None = None,
    *,
    axes: str | None = None,
    device: str | None = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    chunk: int = 1024,
    depth: int = 64,
    max_memory: int | str | None = None,
    ensemble: int = 1,
    optics: Any = None,
) -> Any:
    """Return a lazy dask array: the deblurred ``image``, computed chunk by chunk on demand.

    Parameters
    ----------
    image : dask.array.Array or zarr.Array
        Data of any size; Y and X are re-chunked to ``chunk`` pixels, other axes to 1.
    model : nn.Module or str, optional
        As for :func:`napari_mpt_deblur.deblur`. A model *name* (or path) is loaded once per
        worker process, which is what a distributed cluster needs.
    depth : int
        Overlap (pixels) shared between neighbouring chunks; chunk outputs are cropped back.
    max_memory : int or str, optional
        Memory limit for each chunk's job, as for :func:`napari_mpt_deblur.deblur`.
    ensemble : {1, 2, 4, 8}
        Test-time views averaged per tile, as for :func:`napari_mpt_deblur.deblur`.
    optics : OpticsHints or mapping, optional
        The microscope, as for :func:`napari_mpt_deblur.deblur`: given to every chunk.
    """
    import dask.array as da

    from .._axes import infer_axes, validate_axes
    from ..models.conditioning import as_optics_hints
    from .normalize import IntensityNormalization, percentile_range
    from .predict import check_ensemble, deblur

    ensemble = check_ensemble(ensemble)
    hints = as_optics_hints(optics)  # checked once, before any chunk runs
    arr = da.from_zarr(image) if type(image).__module__.startswith("zarr.") else image
    if arr.dtype.kind not in "uif":
        raise TypeError(f"image has dtype {arr.dtype}; supported are integers and floats")
    axes = validate_axes(axes, arr.ndim) if axes else infer_axes(arr.shape)
    chunks = tuple(chunk if a in "YX" else (-1 if a == "C" else 1) for a in axes)
    arr = arr.rechunk(chunks)
    step = max(1, int(np.ceil((arr.size / 2_000_000) ** 0.5)))
    sample_index = tuple(slice(None, None, step) if a in "YX" else slice(None) for a in axes)
    sample = np.asarray(arr[sample_index].compute())
    if not np.isfinite(sample).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = percentile_range(sample, IntensityNormalization())
    depths = {i: (depth if a in "YX" else 0) for i, a in enumerate(axes)}

    def run_block(block: np.ndarray) -> np.ndarray:
        if block.size == 0:
            return block
        return deblur(
            block,
            model,
            axes=axes,
            device=device,
            tile=tile,
            overlap=overlap,
            intensity_range=(lo, hi),
            max_memory=max_memory,
            ensemble=ensemble,
            optics=hints,
        )

    return da.map_overlap(
        run_block,
        arr,
        depth=depths,
        boundary="reflect",
        dtype=arr.dtype,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
    )

"""Intensity normalisation shared by training and inference.

Models see images mapped by a robust affine ``(x - lo) / (hi - lo)`` where ``lo`` and ``hi`` are
low/high percentiles of the *blurred input*. Training applies the same affine (computed on the
blurred image) to the sharp target, so the network never needs to know the camera's units and the
engine can map its output straight back to the input's range and dtype.
"""

from __future__ import annotations

import numpy as np

# Part of the model contract (a network is trained for one normalisation), so it is defined
# with ModelInfo; re-exported here, where the engine and training apply it.
from ..models.info import IntensityNormalization

__all__ = ["IntensityNormalization", "denormalize", "normalize", "percentile_range"]


def percentile_range(
    image: np.ndarray, norm: IntensityNormalization | None = None, *, max_samples: int = 2_000_000
) -> tuple[float, float]:
    """Robust ``(lo, hi)`` of an image; never a zero-width range.

    Large images are subsampled with a fixed stride (deterministic) so the cost stays bounded.
    """
    norm = norm or IntensityNormalization()
    flat = np.asarray(image).reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    if norm.method == "minmax":
        lo, hi = float(flat.min()), float(flat.max())
    elif norm.method == "percentile":
        lo, hi = (
            float(v) for v in np.percentile(flat, [norm.low_percentile, norm.high_percentile])
        )
    else:
        raise ValueError(
            f"unknown normalisation method {norm.method!r}; use 'percentile' or 'minmax'"
        )
    if not hi > lo:
        # Constant or nearly constant image: fall back to the full range, then to a unit range.
        lo, hi = float(flat.min()), float(flat.max())
        if not hi > lo:
            hi = lo + max(1.0, abs(lo) * 1e-6)  # +1.0 alone vanishes for |lo| >= 2**53
    return lo, hi


def normalize(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 1]`` (float32, values outside are kept, not clipped).

    The affine is computed in float64, so data far outside float32's range (or with a range
    far below float32's resolution) still maps to well-scaled model units.
    """
    out = (np.asarray(image, dtype=np.float64) - lo) * (1.0 / (hi - lo))
    return out.astype(np.float32)


def denormalize(
    image: np.ndarray, lo: float, hi: float, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Inverse of :func:`normalize`, computed in float64 and returned as ``dtype``.

    Use ``dtype=np.float64`` for inputs that float32 cannot represent (wide integers, float64
    data beyond float32's range).
    """
    out = np.asarray(image, dtype=np.float64) * (hi - lo) + lo
    return out.astype(dtype, copy=False)

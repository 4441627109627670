"""Nuclei detection used to measure whether deblurring helps the analysis that follows it.

The two built-in detectors are classical (scikit-image/SciPy only, nothing to download), so a
detection score on deblurred images reflects the image, not a second learned model:

- ``"log"``: scale-space blob detection. The scale-normalised Laplacian of Gaussian (LoG) is
  evaluated over a band of scales around the expected nucleus size and its maxima that lie on
  foreground are kept. Fast, robust to touching nuclei, gives centroids (and disc labels).
- ``"watershed"``: foreground threshold, distance transform, marker-controlled watershed. Gives
  real object shapes and area-weighted centroids.

StarDist and Cellpose can be used instead when the user has them and their weights installed
locally; they are imported lazily and never allowed to download anything.

Sizes are given in micrometres together with the pixel size, so the same configuration works
for images of different magnification (napari layers carry the pixel size in ``layer.scale``).

This module is the entry point (:func:`detect_nuclei`); the parameters and the result are in
:mod:`~napari_mpt_deblur.detect.config`, the detectors in
:mod:`~napari_mpt_deblur.detect.classical` and :mod:`~napari_mpt_deblur.detect.backends`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backends import _run_cellpose, _run_stardist
from .classical import _detect_log, _detect_watershed, _result_from_labels, normalize_percentile
from .config import METHODS, DetectionConfig, DetectionResult

# The config, the result and the detectors live in .config, .classical and .backends; the public
# names are exported from here, where they were defined before, so existing imports keep working.
__all__ = [
    "METHODS",
    "DetectionConfig",
    "DetectionResult",
    "detect_nuclei",
    "normalize_percentile",
]

logger = logging.getLogger(__name__)


def detect_nuclei(
    image: np.ndarray,
    config: DetectionConfig | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DetectionResult:
    """Detect nuclei in a 2-D fluorescence image (bright nuclei on dark background).

    Parameters
    ----------
    image : (M, N) array_like
        One plane, any integer or float dtype; intensities are normalised internally by
        ``config.normalize_percentiles``, so raw camera data works.
    config : DetectionConfig or mapping or None
        Parameters; ``None`` uses the defaults (BBBC006-like data, see
        :class:`DetectionConfig`).
    **overrides
        Fields of :class:`DetectionConfig` replacing those of ``config``, e.g.
        ``detect_nuclei(img, method="watershed", pixel_size_um=0.32)``.

    Returns
    -------
    DetectionResult
        Centroids ordered by decreasing score for LoG and by label for label-based methods,
        with the label image, diameters and scores.

    Raises
    ------
    ValueError
        If the image is not 2-D, is empty or contains NaN/Inf, or a parameter is invalid.
    TypeError
        If the dtype is not numeric, or an override is not a config field.
    ImportError
        If ``method`` is ``"stardist"``/``"cellpose"`` and that package is not installed.
    FileNotFoundError
        If the StarDist/Cellpose weights are not available locally.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage.draw import disk
    >>> img = np.zeros((64, 64), np.float32)
    >>> for centre in [(16, 16), (40, 44)]:
    ...     img[disk(centre, 6)] = 1.0
    >>> res = detect_nuclei(img, diameter_um=12, pixel_size_um=1.0)
    >>> res.n
    2
    """
    cfg = _resolve_config(config, overrides)
    array = _check_image_2d(image)
    if cfg.method == "log":
        result = _detect_log(array, cfg)
    elif cfg.method == "watershed":
        result = _detect_watershed(array, cfg)
    elif cfg.method == "stardist":
        result = _result_from_labels(_run_stardist(array, cfg), array, cfg)
    else:
        result = _result_from_labels(_run_cellpose(array, cfg), array, cfg)
    logger.debug("detect_nuclei(%s): %d detections", cfg.method, result.n)
    return result


# ---------------------------------------------------------------------------------------------
# validation helpers


def _resolve_config(
    config: DetectionConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> DetectionConfig:
    if config is None:
        cfg = DetectionConfig()
    elif isinstance(config, DetectionConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = DetectionConfig.from_dict(config)
    else:
        raise TypeError(
            f"config must be a DetectionConfig, a mapping or None; got {type(config).__name__}"
        )
    if overrides:
        known = {f.name for f in dataclasses.fields(DetectionConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"detect_nuclei() got unknown parameter(s) {unknown}; valid are {sorted(known)}"
            )
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def _check_image_2d(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype.kind not in "uif":
        raise TypeError(f"image must have an integer or floating-point dtype; got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"image must be 2-D (rows, columns); got shape {array.shape}. Detect on one plane "
            "at a time (select the channel / z / time index first)"
        )
    if min(array.shape) < 3:
        raise ValueError(f"image must be at least 3x3 pixels; got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("image contains NaN or infinite values; replace them first")
    return array

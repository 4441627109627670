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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .._dataclass_io import DictRoundTrip

__all__ = [
    "METHODS",
    "DetectionConfig",
    "DetectionResult",
    "detect_nuclei",
    "normalize_percentile",
]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("log", "watershed", "stardist", "cellpose")
"""Detection methods understood by :func:`detect_nuclei`."""

_THRESHOLD_NAMES = ("otsu",)
_LOG_NUM_SCALES = 9


@dataclass(frozen=True)
class DetectionConfig(DictRoundTrip):
    """Parameters of :func:`detect_nuclei`; all sizes in micrometres.

    The defaults are tuned for the project's reference data, BBBC006 Hoechst nuclei imaged with
    a 20x objective and 2x2 binning (0.645 µm per pixel), whose U2OS nuclei are 12-22 µm across
    (median about 16-17 µm). For other data, set ``pixel_size_um`` from the image metadata and
    ``diameter_um`` to the typical nucleus diameter.

    Attributes
    ----------
    method : {"log", "watershed", "stardist", "cellpose"}
        Detector. ``"stardist"`` and ``"cellpose"`` need the package and locally stored weights.
    diameter_um : float
        Typical nucleus diameter. Sets the LoG scales, the watershed smoothing, the default
        minimum distance between detections and the minimum object size.
    pixel_size_um : float
        Size of one pixel; the expected diameter in pixels is ``diameter_um / pixel_size_um``.
    threshold : float or "otsu"
        Foreground level on the percentile-normalised image (0 = low percentile, 1 = high
        percentile). ``"otsu"`` computes it per image with Otsu's method. LoG keeps only blobs
        whose smoothed centre intensity reaches it; watershed uses it for the foreground mask.
        For StarDist a number is the probability threshold and ``"otsu"`` means the model's
        own; Cellpose ignores it.
    min_distance_um : float or None
        Smallest distance between two detections. ``None`` means 0.6 x ``diameter_um`` for
        LoG, which keeps touching round nuclei apart without splitting elongated ones (BBBC006
        nuclei are up to twice as long as wide), and 0.4 x ``diameter_um`` for watershed, whose
        smoothed distance map already has one maximum per convex object.
    log_scale_range : tuple of float
        Band of blob diameters searched by LoG, relative to ``diameter_um``. The band reaches
        further up than down: defocus makes nuclei look larger, whereas scales well below the
        nucleus size respond to chromatin texture and to the ends of elongated nuclei.
    min_snr : float
        Significance, in noise standard deviations (noise measured from neighbour differences
        and propagated through the filters). The foreground level must exceed the background
        (5th percentile) by this much, else the image holds no nuclei: percentile
        normalisation would otherwise stretch a nucleus-free field until its noise looks like
        nuclei. LoG blobs must also exceed this many standard deviations of the LoG noise at
        their scale, which removes noise maxima on strongly blurred nuclei. 0 disables both.
    log_threshold : float
        Smallest scale-normalised LoG response of a kept blob, in normalised intensity units
        (a disc of contrast 1 at the matched scale responds with about 0.7).
    min_size_fraction : float
        Watershed objects smaller than this fraction of the expected nucleus area are debris
        and are dropped.
    normalize_percentiles : tuple of float
        Low and high percentiles mapped to 0 and 1 before detection, which makes thresholds
        independent of dtype, camera offset and exposure.
    exclude_border : bool
        Drop detections whose centre is closer than half a diameter to the image border.
    model_path : str or None
        StarDist model folder (with ``config.json``) or Cellpose model file. ``None`` looks up
        ``model_name`` in the package's local model cache, without downloading.
    model_name : str or None
        Name of a pretrained StarDist/Cellpose model already present in the local cache;
        ``None`` means ``"2D_versatile_fluo"`` (StarDist) or ``"nuclei"`` (Cellpose).
    """

    method: str = "log"
    diameter_um: float = 16.0
    pixel_size_um: float = 0.645
    threshold: float | str = "otsu"
    min_distance_um: float | None = None
    log_scale_range: tuple[float, float] = field(default=(0.9, 1.6))
    min_snr: float = 5.0
    log_threshold: float = 0.05
    min_size_fraction: float = 0.15
    normalize_percentiles: tuple[float, float] = field(default=(1.0, 99.8))
    exclude_border: bool = False
    model_path: str | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"method must be one of {', '.join(map(repr, METHODS))}; got {self.method!r}"
            )
        for name in ("diameter_um", "pixel_size_um"):
            _check_positive(getattr(self, name), name)
        if self.min_distance_um is not None:
            _check_positive(self.min_distance_um, "min_distance_um")
        for name in ("log_threshold", "min_snr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number; got {type(value).__name__}")
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if not (0 <= self.min_size_fraction < 1):
            raise ValueError(f"min_size_fraction must be in [0, 1); got {self.min_size_fraction!r}")
        threshold = self.threshold
        if isinstance(threshold, str):
            if threshold not in _THRESHOLD_NAMES:
                raise ValueError(
                    f"threshold must be a number in [0, 1] or one of {_THRESHOLD_NAMES}; "
                    f"got {threshold!r}"
                )
        elif isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TypeError(f"threshold must be a float or 'otsu'; got {type(threshold).__name__}")
        elif not (0 <= threshold <= 1):
            raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
        low, high = (float(p) for p in self.normalize_percentiles)
        if not (0 <= low < high <= 100):
            raise ValueError(
                "normalize_percentiles must be (low, high) with 0 <= low < high <= 100; "
                f"got {self.normalize_percentiles!r}"
            )
        object.__setattr__(self, "normalize_percentiles", (low, high))
        small, large = (float(v) for v in self.log_scale_range)
        if not (0 < small <= large):
            raise ValueError(
                "log_scale_range must be (small, large) with 0 < small <= large; "
                f"got {self.log_scale_range!r}"
            )
        object.__setattr__(self, "log_scale_range", (small, large))
        if self.diameter_px < 3:
            raise ValueError(
                f"diameter_um / pixel_size_um = {self.diameter_um} / {self.pixel_size_um} = "
                f"{self.diameter_px:.2f} px; nuclei must be at least 3 px across to be "
                "detected (check the pixel size)"
            )

    @property
    def diameter_px(self) -> float:
        """Expected nucleus diameter in pixels."""
        return self.diameter_um / self.pixel_size_um

    @property
    def min_distance_px(self) -> float:
        """Smallest distance between detections in pixels (method-dependent default)."""
        if self.min_distance_um is not None:
            return self.min_distance_um / self.pixel_size_um
        fraction = 0.4 if self.method == "watershed" else 0.6
        return fraction * self.diameter_px


@dataclass(frozen=True)
class DetectionResult:
    """Detections of one image.

    Attributes
    ----------
    points : (N, 2) ndarray of float64
        Centroids as (row, column) in pixels, in the image's index space.
    labels : (M, N) ndarray of int32 or None
        Label image (0 = background, object ``i`` has value ``i + 1`` and centroid
        ``points[i]``). For ``"log"`` these are discs of the detected blob size.
    diameters_px : (N,) ndarray of float64
        Estimated diameter of every detection in pixels (blob scale for LoG, equivalent
        circle diameter for label-based methods), e.g. for the size of napari points.
    scores : (N,) ndarray of float64
        Strength of every detection: LoG response, or mean normalised intensity of the object.
    config : DetectionConfig
        The configuration that produced the result.
    """

    points: np.ndarray
    labels: np.ndarray | None
    diameters_px: np.ndarray
    scores: np.ndarray
    config: DetectionConfig

    @property
    def n(self) -> int:
        """Number of detections."""
        return int(self.points.shape[0])

    @property
    def points_um(self) -> np.ndarray:
        """Centroids in micrometres (row, column), using ``config.pixel_size_um``."""
        return self.points * self.config.pixel_size_um


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


def normalize_percentile(
    image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)
) -> np.ndarray:
    """Map the ``percentiles`` of ``image`` to 0 and 1 (float32, not clipped).

    Percentiles, not min/max, so that hot pixels and the camera offset do not set the scale;
    a constant image maps to zeros.
    """
    array = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(array, percentiles)
    if not high > low:
        return np.zeros_like(array)
    return (array - np.float32(low)) / np.float32(high - low)


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}")


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


def _foreground_level(
    norm: np.ndarray, smooth: np.ndarray, smooth_sigma: float, cfg: DetectionConfig
) -> float:
    """Level separating nuclei from background in ``smooth``, or +inf when there are none.

    ``smooth`` is ``norm`` filtered by a Gaussian of ``smooth_sigma`` pixels; its noise is the
    pixel noise of ``norm`` times the filter's white-noise gain.
    """
    from skimage.filters import threshold_otsu

    # Clip to the normalisation range first: a few saturated spots far above the high
    # percentile would otherwise make Otsu split "bright spots" from "everything else".
    clipped = np.clip(smooth, 0.0, 1.0)
    if np.ptp(clipped) == 0:
        return float("inf")  # a flat image has no foreground
    if isinstance(cfg.threshold, str):
        level = float(threshold_otsu(clipped))
    else:
        level = float(cfg.threshold)
    contrast = level - float(np.percentile(smooth, 5))
    noise = _noise_sigma(norm) * _gaussian_noise_gain(smooth_sigma)
    if contrast < cfg.min_snr * noise:
        logger.debug(
            "foreground level %.3g is only %.3g noise sd above background: no nuclei",
            level,
            contrast / noise if noise > 0 else float("nan"),
        )
        return float("inf")
    return level


def _gaussian_noise_gain(sigma: float) -> float:
    """Standard deviation of white unit noise after a 2-D Gaussian filter of ``sigma``."""
    size = 2 * math.ceil(4 * sigma) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return float(np.sqrt((ndi.gaussian_filter(delta, sigma) ** 2).sum()))


def _log_noise_gain(sigma: float) -> float:
    """Standard deviation of white unit noise after the scale-normalised LoG of ``sigma``."""
    size = 2 * math.ceil(5 * sigma) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return float(np.sqrt(((sigma**2 * ndi.gaussian_laplace(delta, sigma)) ** 2).sum()))


def _noise_sigma(norm: np.ndarray) -> float:
    """Pixel noise standard deviation from the MAD of neighbour differences.

    Differences of neighbours cancel smooth structure (nuclei are many pixels wide), and the
    median ignores the edges, so this measures camera noise even in crowded fields.
    """
    diff = np.diff(norm, axis=-1).ravel()
    mad = np.median(np.abs(diff - np.median(diff)))
    return float(1.4826 * mad / math.sqrt(2))


# ---------------------------------------------------------------------------------------------
# LoG


def _detect_log(image: np.ndarray, cfg: DetectionConfig) -> DetectionResult:
    from skimage.feature import peak_local_max

    norm = normalize_percentile(image, cfg.normalize_percentiles)
    sigma0 = cfg.diameter_px / (2 * math.sqrt(2))  # LoG peaks at r = sqrt(2) * sigma for a disc
    sigmas = sigma0 * np.geomspace(*cfg.log_scale_range, _LOG_NUM_SCALES)
    # Scale-normalised (sigma^2) LoG, negated so that bright blobs give positive maxima.
    stack = np.stack([-(s**2) * ndi.gaussian_laplace(norm, s, mode="reflect") for s in sigmas])
    # Maxima in (scale, row, col) space rather than of the max-projection over scales: next to a
    # bright blob the projection is dominated by that blob's large-scale response, which would
    # hide a dimmer neighbour. Duplicates across scales are removed by distance afterwards.
    peaks3d = peak_local_max(
        stack,
        footprint=np.ones((3, 3, 3), dtype=bool),
        threshold_abs=cfg.log_threshold,
        exclude_border=False,
    )
    smooth = ndi.gaussian_filter(norm, sigma0 / 2)
    level = _foreground_level(norm, smooth, sigma0 / 2, cfg)
    if peaks3d.size:
        peaks3d = peaks3d[smooth[peaks3d[:, 1], peaks3d[:, 2]] >= level]
    if peaks3d.size and cfg.min_snr > 0:
        # A blob must also stand out from the noise of the LoG response at its own scale:
        # in strongly blurred, noisy images the noise makes many small maxima on each smeared
        # nucleus, which would otherwise all count as detections.
        noise = _noise_sigma(norm) * np.array([_log_noise_gain(s) for s in sigmas])
        response = stack[peaks3d[:, 0], peaks3d[:, 1], peaks3d[:, 2]]
        peaks3d = peaks3d[response >= cfg.min_snr * noise[peaks3d[:, 0]]]
    if cfg.exclude_border and peaks3d.size:
        margin = cfg.diameter_px / 2
        rc = peaks3d[:, 1:]
        inside = np.all((rc >= margin) & (rc <= np.asarray(image.shape) - 1 - margin), axis=1)
        peaks3d = peaks3d[inside]
    scores = stack[peaks3d[:, 0], peaks3d[:, 1], peaks3d[:, 2]].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    peaks3d, scores = peaks3d[order], scores[order]
    keep = _suppress_close(peaks3d[:, 1:].astype(np.float64), cfg.min_distance_px)
    peaks3d, scores = peaks3d[keep], scores[keep]
    peaks = peaks3d[:, 1:]
    diameters = 2 * math.sqrt(2) * sigmas[peaks3d[:, 0]].astype(np.float64)
    labels = _disc_labels(image.shape, peaks, diameters / 2)
    return DetectionResult(
        points=peaks.astype(np.float64).reshape(-1, 2),
        labels=labels,
        diameters_px=diameters,
        scores=scores,
        config=cfg,
    )


def _suppress_close(points: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of points (sorted strongest first) that keep."""
    from scipy.spatial import cKDTree

    n = len(points)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    suppressed = np.zeros(n, dtype=bool)
    tree = cKDTree(points)
    for i in range(n):
        if suppressed[i]:
            continue
        keep[i] = True
        # Strictly closer than min_distance is a duplicate (r slightly below the distance).
        suppressed[tree.query_ball_point(points[i], r=np.nextafter(min_distance, 0))] = True
    return keep


def _disc_labels(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Paint discs; stronger detections (earlier) keep the pixels where discs overlap."""
    from skimage.draw import disk

    labels = np.zeros(shape, dtype=np.int32)
    for index, (centre, radius) in enumerate(zip(centres, radii), start=1):
        rr, cc = disk(tuple(centre), max(float(radius), 1.0), shape=shape)
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = index
    return labels


# ---------------------------------------------------------------------------------------------
# threshold + distance transform + watershed


def _detect_watershed(image: np.ndarray, cfg: DetectionConfig) -> DetectionResult:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    norm = normalize_percentile(image, cfg.normalize_percentiles)
    diameter = cfg.diameter_px
    # Light smoothing (1/16 of a diameter) removes shot noise and chromatin texture from the
    # mask without merging neighbours.
    smooth_sigma = max(1.0, diameter / 16)
    smooth = ndi.gaussian_filter(norm, smooth_sigma)
    level = _foreground_level(norm, smooth, smooth_sigma, cfg)
    mask = ndi.binary_fill_holes(smooth > level)
    min_area = cfg.min_size_fraction * math.pi * (diameter / 2) ** 2
    mask = _remove_small(mask, min_area)
    if not mask.any():
        return _empty_result(image.shape, cfg)
    components, _ = ndi.label(mask)
    # The distance map has one ridge along elongated nuclei; smoothing it by a fraction of a
    # diameter turns the ridge into a single maximum instead of a chain of plateau peaks.
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), max(1.0, diameter / 10))
    peaks = peak_local_max(
        distance,
        min_distance=max(1, round(cfg.min_distance_px)),
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # Components without a peak (e.g. thin fragments) still become one object each.
    unmarked = mask & ~np.isin(components, components[peaks[:, 0], peaks[:, 1]])
    extra, _ = ndi.label(unmarked)
    markers[extra > 0] = extra[extra > 0] + len(peaks)
    labels = watershed(-distance, markers, mask=mask).astype(np.int32)
    labels = _relabel_min_area(labels, min_area)
    result = _result_from_labels(labels, image, cfg, norm=norm)
    if cfg.exclude_border:
        result = _drop_border(result, cfg)
    return result


def _remove_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def _relabel_min_area(labels: np.ndarray, min_area: float) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    mapping = np.zeros(areas.size, dtype=np.int32)
    mapping[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return mapping[labels]


def _drop_border(result: DetectionResult, cfg: DetectionConfig) -> DetectionResult:
    labels = result.labels
    assert labels is not None  # watershed always makes labels
    margin = cfg.diameter_px / 2
    pts = result.points
    keep = np.all((pts >= margin) & (pts <= np.asarray(labels.shape) - 1 - margin), axis=1)
    mapping = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    mapping[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return DetectionResult(
        points=pts[keep],
        labels=mapping[labels],
        diameters_px=result.diameters_px[keep],
        scores=result.scores[keep],
        config=result.config,
    )


def _empty_result(shape: tuple[int, ...], cfg: DetectionConfig) -> DetectionResult:
    return DetectionResult(
        points=np.zeros((0, 2), dtype=np.float64),
        labels=np.zeros(shape, dtype=np.int32),
        diameters_px=np.zeros(0, dtype=np.float64),
        scores=np.zeros(0, dtype=np.float64),
        config=cfg,
    )


def _result_from_labels(
    labels: np.ndarray,
    image: np.ndarray,
    cfg: DetectionConfig,
    norm: np.ndarray | None = None,
) -> DetectionResult:
    """Sequentially relabel ``labels`` and summarise every object (centroid, size, intensity)."""
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    if labels.shape != image.shape:
        raise ValueError(
            f"label image from {cfg.method!r} has shape {labels.shape}, expected {image.shape}"
        )
    labels = relabel_sequential(labels.astype(np.int32, copy=False))[0].astype(np.int32)
    n = int(labels.max())
    if n == 0:
        return _empty_result(image.shape, cfg)
    if norm is None:
        norm = normalize_percentile(image, cfg.normalize_percentiles)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    rows, cols = np.indices(labels.shape)
    points = np.stack(
        [
            np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / area,
            np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / area,
        ],
        axis=1,
    )
    scores = np.bincount(flat, weights=norm.ravel().astype(np.float64), minlength=n + 1)[1:]
    return DetectionResult(
        points=points,
        labels=labels,
        diameters_px=2 * np.sqrt(area / math.pi),
        scores=scores / area,
        config=cfg,
    )


# ---------------------------------------------------------------------------------------------
# optional deep-learning backends (lazy imports, local weights only)


def _run_stardist(image: np.ndarray, cfg: DetectionConfig) -> np.ndarray:
    try:
        from stardist.models import StarDist2D
    except ImportError as exc:
        raise ImportError(
            "method='stardist' needs the 'stardist' package (and TensorFlow): "
            "pip install stardist tensorflow; or use method='log' or 'watershed'"
        ) from exc
    folder = _stardist_folder(cfg)
    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    norm = normalize_percentile(image, cfg.normalize_percentiles)
    kwargs: dict[str, Any] = {}
    if not isinstance(cfg.threshold, str):
        kwargs["prob_thresh"] = float(cfg.threshold)
    labels, _details = model.predict_instances(norm, **kwargs)
    return np.asarray(labels)


def _stardist_folder(cfg: DetectionConfig) -> Path:
    if cfg.model_path is not None:
        folder = Path(cfg.model_path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model_path {str(folder)!r} is not a StarDist model folder (no config.json)"
            )
        return folder
    name = cfg.model_name or "2D_versatile_fluo"
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    cache = keras_home / "models" / "StarDist2D" / name
    configs = sorted(cache.glob("**/config.json")) if cache.is_dir() else []
    if not configs:
        raise FileNotFoundError(
            f"StarDist model {name!r} is not in the local cache {str(cache)!r}, and this "
            "plugin never downloads weights. Load it once with StarDist2D.from_pretrained("
            f"{name!r}) yourself, or pass model_path= a model folder"
        )
    return configs[0].parent


def _run_cellpose(image: np.ndarray, cfg: DetectionConfig) -> np.ndarray:
    try:
        from cellpose import models as cp_models
    except ImportError as exc:
        raise ImportError(
            "method='cellpose' needs the 'cellpose' package: pip install cellpose; "
            "or use method='log' or 'watershed'"
        ) from exc
    weights = _cellpose_weights(cfg, getattr(cp_models, "MODEL_DIR", None))
    model = cp_models.CellposeModel(gpu=False, pretrained_model=str(weights))
    norm = normalize_percentile(image, cfg.normalize_percentiles)
    output = model.eval(norm, diameter=cfg.diameter_px)
    return np.asarray(output[0])


def _cellpose_weights(cfg: DetectionConfig, model_dir: Any) -> Path:
    if cfg.model_path is not None:
        path = Path(cfg.model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model_path {str(path)!r} is not a Cellpose model file")
        return path
    name = cfg.model_name or "nuclei"
    if model_dir is None:
        env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
        model_dir = Path(env) if env else Path.home() / ".cellpose" / "models"
    model_dir = Path(model_dir)
    # Cellpose 2/3 store built-in weights as '<name>torch_0', custom and newer ones as '<name>'.
    for candidate in (model_dir / name, model_dir / f"{name}torch_0"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Cellpose model {name!r} is not in the local model folder {str(model_dir)!r}, and "
        "this plugin never downloads weights. Run Cellpose once yourself to fetch it, or "
        "pass model_path= a model file"
    )

"""The classical nuclei detectors: scale-space LoG and threshold + watershed.

scikit-image/SciPy only, nothing to download, so a detection score on deblurred images reflects
the image, not a second learned model. Both work on the percentile-normalised image
(:func:`normalize_percentile`) and decide per image whether it holds nuclei at all, from the
contrast of the foreground against the camera noise (``DetectionConfig.min_snr``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage as ndi

from .config import DetectionConfig, DetectionResult

__all__ = ["normalize_percentile"]

logger = logging.getLogger(__name__)


_LOG_NUM_SCALES = 9


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
# noise and foreground


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

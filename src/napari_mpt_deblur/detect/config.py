"""What a nuclei detection is asked (:class:`DetectionConfig`) and what it answers
(:class:`DetectionResult`), shared by the classical detectors and the optional backends.

Sizes are given in micrometres together with the pixel size, so the same configuration works
for images of different magnification (napari layers carry the pixel size in ``layer.scale``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._dataclass_io import DictRoundTrip

__all__ = ["METHODS", "DetectionConfig", "DetectionResult"]


METHODS: tuple[str, ...] = ("log", "watershed", "stardist", "cellpose")
"""Detection methods understood by :func:`detect_nuclei`."""

_THRESHOLD_NAMES = ("otsu",)


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


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}")

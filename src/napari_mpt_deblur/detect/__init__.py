"""Nuclei detection and detection scoring: does deblurring help the analysis downstream?

Classical detectors (scale-space LoG, threshold + watershed) need nothing but scikit-image;
StarDist and Cellpose are used only when installed with their weights stored locally.
Matching is one-to-one within a distance (Hungarian algorithm) and yields precision, recall
and F1.
"""

from __future__ import annotations

from .match import MatchResult, match_detections, match_points, points_from_labels
from .nuclei import METHODS, DetectionConfig, DetectionResult, detect_nuclei, normalize_percentile

__all__ = [
    "METHODS",
    "DetectionConfig",
    "DetectionResult",
    "MatchResult",
    "detect_nuclei",
    "match_detections",
    "match_points",
    "normalize_percentile",
    "points_from_labels",
]

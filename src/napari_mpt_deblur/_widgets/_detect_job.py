"""What the detection preview runs, without Qt or napari: detect, match, judge, summarise.

The panel (:mod:`._detect`) collects choices and shows state; :func:`detection_steps` is the
computation, a generator that yields :class:`DetectionProgress` and returns a
:class:`DetectionOutcome`. The panel runs it in a napari worker (errors come back as
:class:`~._jobs.DetectionFailed` values); tests and scripts drive it synchronously with
:func:`run_detection`. :func:`stain_hint`, :func:`blob_contrast` and :func:`nuclei_doubt` are
the cheap checks behind the panel's warning that a layer may not show nuclei at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detect import DetectionConfig, DetectionResult, MatchResult, detect_nuclei, match_points
from ._jobs import drive

__all__ = [
    "CATEGORY_MATCHED",
    "CATEGORY_ONLY_DEBLURRED",
    "CATEGORY_ONLY_INPUT",
    "MIN_BLOB_CONTRAST",
    "NUCLEAR_WORDS",
    "OTHER_WORDS",
    "DetectionOutcome",
    "DetectionProgress",
    "DetectionRequest",
    "blob_contrast",
    "detection_steps",
    "format_summary",
    "nuclei_doubt",
    "run_detection",
    "stain_hint",
]

CATEGORY_MATCHED = "matched"
CATEGORY_ONLY_INPUT = "only in input"
CATEGORY_ONLY_DEBLURRED = "only in deblurred"


# ------------------------------------------------------------------------------------------
# The computation (no Qt, no napari)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionRequest:
    """Everything one detection run needs, as plain data.

    Attributes
    ----------
    input_image, deblurred_image : (M, N) array_like
        The two planes (numpy, or dask/zarr slices: read in the worker thread). Same shape and
        pixel grid, so that their detections can be compared coordinate by coordinate.
    config : DetectionConfig
        Detector and sizes, shared by both images.
    max_distance_px : float or None
        Largest centroid distance of a match; ``None`` means half the expected diameter.
    """

    input_image: Any
    deblurred_image: Any
    config: DetectionConfig
    max_distance_px: float | None = None

    @property
    def match_distance_px(self) -> float:
        """The matching radius actually used, in pixels."""
        if self.max_distance_px is not None:
            return float(self.max_distance_px)
        return 0.5 * self.config.diameter_px


@dataclass(frozen=True)
class DetectionProgress:
    """``done`` of ``total`` steps; ``stage`` says what runs next."""

    done: int
    total: int
    stage: str


@dataclass(frozen=True)
class DetectionOutcome:
    """Detections on both images and how they agree.

    Attributes
    ----------
    input, deblurred : DetectionResult
        Detections on the input plane and on the deblurred plane.
    match : MatchResult
        ``match_points(deblurred.points, input.points)``: the input is the reference, so
        ``match.only_in_ref`` are the input's unmatched detections and ``match.only_in_pred``
        the deblurred image's.
    seconds : float
        Wall time of the run.
    blob_contrast : float or None
        How nucleus-like the detections look (:func:`blob_contrast`, the larger of the two
        images'); ``None`` with too few detections to judge.
    """

    input: DetectionResult
    deblurred: DetectionResult
    match: MatchResult
    seconds: float = 0.0
    blob_contrast: float | None = None

    @property
    def n_matched(self) -> int:
        """Detections present in both images."""
        return self.match.tp

    @property
    def n_only_input(self) -> int:
        """Input detections without a partner in the deblurred image."""
        return self.match.fn

    @property
    def n_only_deblurred(self) -> int:
        """Deblurred detections without a partner in the input."""
        return self.match.fp

    @property
    def f1(self) -> float:
        """Agreement of the two detection sets (symmetric: 2·matched / (n_input + n_deblurred))."""
        return self.match.f1

    def categories(self) -> tuple[list[str], list[str]]:
        """Category of every input and every deblurred detection (see ``CATEGORY_*``)."""
        input_cat = [CATEGORY_MATCHED] * self.input.n
        for i in self.match.only_in_ref:
            input_cat[int(i)] = CATEGORY_ONLY_INPUT
        deblurred_cat = [CATEGORY_MATCHED] * self.deblurred.n
        for i in self.match.only_in_pred:
            deblurred_cat[int(i)] = CATEGORY_ONLY_DEBLURRED
        return input_cat, deblurred_cat

    def to_dict(self) -> dict[str, Any]:
        """Counts and agreement as plain values (for layer metadata and logs)."""
        return {
            "n_input": self.input.n,
            "n_deblurred": self.deblurred.n,
            "matched": self.n_matched,
            "only_in_input": self.n_only_input,
            "only_in_deblurred": self.n_only_deblurred,
            "f1": self.f1,
            "match_distance_px": self.match.max_distance,
            "seconds": round(self.seconds, 3),
            "blob_contrast": self.blob_contrast,
        }


def detection_steps(
    request: DetectionRequest,
) -> Generator[DetectionProgress, None, DetectionOutcome]:
    """Detect on both planes and match, yielding between the steps.

    Each ``yield`` is where a napari worker's ``quit()`` takes effect, so a live re-run that
    overtakes this one does not wait for the remaining detector passes. Errors propagate.
    """
    start = time.perf_counter()
    yield DetectionProgress(0, 3, "input")
    on_input = detect_nuclei(np.asarray(request.input_image), request.config)
    yield DetectionProgress(1, 3, "deblurred")
    on_deblurred = detect_nuclei(np.asarray(request.deblurred_image), request.config)
    yield DetectionProgress(2, 3, "matching")
    match = match_points(on_deblurred.points, on_input.points, request.match_distance_px)
    contrasts = [c for c in (blob_contrast(request.input_image, on_input),
                             blob_contrast(request.deblurred_image, on_deblurred)) if c is not None]
    return DetectionOutcome(on_input, on_deblurred, match, time.perf_counter() - start,
                            blob_contrast=max(contrasts) if contrasts else None)


# ------------------------------------------------------------------------------------------
# Does the layer show nuclei at all? (cheap checks, no Qt)
# ------------------------------------------------------------------------------------------
#: Words in a layer's name or short metadata strings that mean a nuclear stain ...
NUCLEAR_WORDS = ("nuclei", "nucleus", "nuclear", "hoechst", "dapi", "dna", "draq5", "h2b",
                 "sytox")
#: ... and words that mean another structure (the bundled sample is an actin channel).
OTHER_WORDS = ("actin", "phalloidin", "tubulin", "microtubule", "membrane", "mitochondria",
               "mitotracker", "cytoplasm", "golgi", "wga", "cellmask", "brightfield")
#: Below this median :func:`blob_contrast`, detections sit on texture, not on blobs.
MIN_BLOB_CONTRAST = 0.45
_MIN_JUDGED = 5  # fewer detections than this: too few to judge the image
_MAX_HINT_CHARS = 200  # longer metadata strings (OME-XML) may name every channel of a file


def stain_hint(name: str, metadata: Any = None) -> bool | None:
    """``True`` when a layer's name or metadata names a nuclear stain, ``False`` when it names
    another structure, ``None`` when it says neither.

    Checks whole words in the name and in the metadata's short strings (keys and values, nested
    dicts and lists included; strings over 200 characters such as OME-XML are skipped, since a
    file's XML names all its channels). The name wins over the metadata.
    """
    import re

    def verdict(texts: list[str]) -> bool | None:
        words = set(re.findall(r"[a-z0-9]+", " ".join(texts).lower()))
        if words & set(NUCLEAR_WORDS):
            return True
        if words & set(OTHER_WORDS):
            return False
        return None

    strings: list[str] = []

    def collect(value: Any, depth: int) -> None:
        if depth > 4 or len(strings) > 200:
            return
        if isinstance(value, str):
            if len(value) <= _MAX_HINT_CHARS:
                strings.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(str(key), depth + 1)
                collect(item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item, depth + 1)

    collect(metadata or {}, 0)
    by_name = verdict([name])
    return by_name if by_name is not None else verdict(strings)


def blob_contrast(image: Any, result: DetectionResult) -> float | None:
    """Median contrast of the detections against their surroundings (about 1 for nuclei).

    For each detection of diameter ``d``: (mean of the central disc of radius ``d/4`` minus the
    75th percentile of the ring between ``0.55 d`` and ``0.75 d``) over that mean, on the
    percentile-normalised image. A nucleus is a bright blob on a darker background (about 0.8
    to 1, also 8 µm out of focus); detections on filaments or cytoplasm texture have bright
    surroundings (about 0.1 to 0.3 on the bundled actin sample). ``None`` below 5 detections.
    """
    if result.n < _MIN_JUDGED:
        return None
    img = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(img, (1.0, 99.8))
    norm = (img - lo) / max(float(hi - lo), 1e-12)
    height, width = norm.shape
    values = []
    for (y, x), diameter in zip(result.points, result.diameters_px, strict=True):
        r = 0.5 * float(diameter)
        y0, y1 = max(0, int(y - 1.5 * r) - 1), min(height, int(y + 1.5 * r) + 2)
        x0, x1 = max(0, int(x - 1.5 * r) - 1), min(width, int(x + 1.5 * r) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dist = np.hypot(yy - y, xx - x)
        window = norm[y0:y1, x0:x1]
        inner, ring = window[dist <= 0.5 * r], window[(dist >= 1.1 * r) & (dist <= 1.5 * r)]
        if inner.size and ring.size:
            centre = float(inner.mean())
            values.append((centre - float(np.percentile(ring, 75))) / max(centre, 1e-12))
    return float(np.median(values)) if len(values) >= _MIN_JUDGED else None


def nuclei_doubt(outcome: DetectionOutcome, name: str, metadata: Any = None) -> str | None:
    """Why the counts are probably not nuclei, or ``None`` when nothing speaks against them.

    A nuclear stain named in the layer's name or metadata (:func:`stain_hint`) is trusted;
    another structure named there, or detections that are not blobs (:func:`blob_contrast`
    below 0.45), give a warning.
    """
    hint = stain_hint(name, metadata)
    if hint is True:
        return None
    contrast = outcome.blob_contrast
    if hint is False:
        why = f"{name!r} is named or described as a non-nuclear stain"
    elif contrast is not None and contrast < MIN_BLOB_CONTRAST:
        why = (f"the detections in {name!r} are not bright blobs on a dark background "
               f"(blob contrast {contrast:.2f}; nuclei score about 0.8 to 1)")
    else:
        return None
    return (f"⚠ This does not look like a nuclear stain: {why}. The counts are then "
            "texture, not nuclei; choose a nuclear channel (Hoechst, DAPI).")


def run_detection(
    request: DetectionRequest,
    progress: Callable[[DetectionProgress], None] | None = None,
) -> DetectionOutcome:
    """Drive :func:`detection_steps` to the end in the calling thread (tests, scripts)."""
    return drive(detection_steps(request), progress)


def format_summary(outcome: DetectionOutcome, where: str = "", doubt: str | None = None) -> str:
    """The result label's text: counts on both images and their agreement (``doubt`` first)."""
    head = f"{where}: " if where else ""
    return (
        (f"{doubt}\n" if doubt else "") +
        f"{head}input {outcome.input.n} · deblurred {outcome.deblurred.n} nuclei\n"
        f"matched {outcome.n_matched} · only in input {outcome.n_only_input} · "
        f"only in deblurred {outcome.n_only_deblurred}\n"
        f"F1 input vs deblurred {outcome.f1:.3f} "
        f"(match radius {outcome.match.max_distance:.1f} px, {outcome.seconds:.2f} s)"
    )

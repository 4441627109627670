"""In-focus training sources: finding and reading images, crops and augmentation, and the
synthetic in-focus fallback.

NumPy only (no torch): the fine-tuning panel lists a user's images with :func:`find_images`
before any training starts. The patches drawn from these sources are in :mod:`.patches`, the
batches of a step in :mod:`.data`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "SourceImage",
    "dihedral",
    "find_images",
    "load_sources",
    "random_crop",
    "read_planes",
    "synthetic_infocus",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


# --------------------------------------------------------------------------------------------
# Finding and reading images
# --------------------------------------------------------------------------------------------


def find_images(
    sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    resolve: Callable[[str | os.PathLike[str]], Path] | None = None,
) -> list[Path]:
    """Expand folders, files and glob patterns into a sorted, de-duplicated list of images.

    Parameters
    ----------
    sources : path or sequence of paths
        Folders (their ``.tif``/``.tiff``/``.png`` files, not recursive), files, or glob
        patterns (``"train/*_w2.tif"``).
    resolve : callable, optional
        Maps a relative path to a full one (``TrainConfig.resolve_path``).

    Raises
    ------
    FileNotFoundError
        If a source does not exist or a folder/pattern yields no images.
    """
    from .._io import expand_inputs

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: list[Path] = []
    for source in sources:
        path = resolve(source) if resolve is not None else Path(os.fspath(source)).expanduser()
        if not path.exists() and not any(ch in str(path) for ch in "*?["):
            raise FileNotFoundError(f"image source {str(path)!r} does not exist")
        files = [p for p in expand_inputs([path]) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"{str(path)!r} holds or matches no .tif/.tiff/.png images")
        found.extend(files)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(str(p.resolve()), p)
    return list(unique.values())


def read_planes(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read an image file and split it into 2-D planes (each channel and z/t plane separately).

    Uses :func:`napari_mpt_deblur._io.read_image` and its axes metadata; the planes keep the
    file's dtype (the simulator and the normaliser handle the range).
    """
    from .._io import read_image

    array, meta = read_image(path)
    array = np.asarray(array)
    axes = str((meta or {}).get("axes") or "")
    if array.ndim == 2:
        return [array]
    if len(axes) == array.ndim and "Y" in axes and "X" in axes:
        order = [i for i, a in enumerate(axes) if a not in "YX"] + [axes.index("Y"),
                                                                      axes.index("X")]
        array = np.transpose(array, order)
    elif array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        array = np.moveaxis(array, -1, 0)  # YXC colour image
    planes = list(array.reshape((-1, *array.shape[-2:])))
    if not planes:
        raise ValueError(f"{path} holds no image planes (shape {array.shape})")
    return planes


@dataclass(frozen=True)
class SourceImage:
    """One 2-D plane used as an in-focus source (or an unlabeled image).

    Attributes
    ----------
    name : str
        File name (and plane index for multi-plane files).
    plane : ndarray (M, N)
        Pixel values as read.
    value_range : (float, float)
        Whole-image low/high percentiles (the simulator's or the engine's convention).
    """

    name: str
    plane: np.ndarray = field(repr=False)
    value_range: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.plane.shape[0]), int(self.plane.shape[1]))


def load_sources(
    paths: Sequence[str | os.PathLike[str]],
    *,
    percentiles: Sequence[float] = (0.5, 99.9),
    min_size: int = 16,
) -> list[SourceImage]:
    """Read image files into :class:`SourceImage` planes with their whole-image range.

    Multi-plane files (z stacks, channels, time points) contribute every plane, so give only
    in-focus material: a widefield z stack's out-of-focus planes would teach blur as "sharp".

    Planes smaller than ``min_size`` on a side, or with no intensity range at all, are skipped
    with a warning (they cannot teach anything).
    """
    images: list[SourceImage] = []
    for path in paths:
        planes = read_planes(path)
        for i, plane in enumerate(planes):
            name = Path(path).name + (f"[{i}]" if len(planes) > 1 else "")
            if min(plane.shape) < min_size:
                logger.warning("skipping %s: plane %s is smaller than %d px", name, plane.shape,
                               min_size)
                continue
            if plane.dtype.kind not in "uif":
                raise TypeError(f"{name} has dtype {plane.dtype}; expected a numeric image")
            lo, hi = (float(v) for v in np.percentile(plane, list(percentiles)))
            if not hi > lo:
                logger.warning("skipping %s: no intensity range (constant image)", name)
                continue
            images.append(SourceImage(name=name, plane=plane, value_range=(lo, hi)))
    if not images:
        raise ValueError(f"none of {len(paths)} image files gave a usable plane")
    return images


# --------------------------------------------------------------------------------------------
# Crops and augmentation
# --------------------------------------------------------------------------------------------


def dihedral(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Apply one random flip/90° rotation (of the 8 symmetries of a square) to all arrays."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def _overlaps(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> bool:
    y, x, h, w = box
    oy, ox, oh, ow = other
    return y < oy + oh and oy < y + h and x < ox + ow and ox < x + w


def _can_avoid(shape: tuple[int, ...], size: int, box: tuple[int, int, int, int]) -> bool:
    """Whether a ``size`` crop of a ``shape`` plane can miss ``box`` entirely."""
    h, w = shape[-2:]
    y, x, bh, bw = box
    return y >= size or h - (y + bh) >= size or x >= size or w - (x + bw) >= size


def random_crop(
    plane: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    avoid: tuple[int, int, int, int] | None = None,
    tries: int = 50,
) -> tuple[np.ndarray, tuple[int, int]]:
    """A random ``size`` x ``size`` crop; small planes are mirror-padded first.

    Parameters
    ----------
    avoid : (y, x, h, w), optional
        A box the crop must not overlap (a held-out validation region). If no position avoids
        it after ``tries`` draws, the last draw is used anyway.

    Returns
    -------
    crop : ndarray
    origin : (int, int)
        Top-left corner in the (padded) plane.
    """
    h, w = plane.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        plane = np.pad(plane, ((0, ph), (0, pw)), mode="symmetric")
        h, w = plane.shape
    y = x = 0
    for _ in range(max(1, tries)):
        y = int(rng.integers(h - size + 1))
        x = int(rng.integers(w - size + 1))
        if avoid is None or not _overlaps((y, x, size, size), avoid):
            break
    return plane[y : y + size, x : x + size], (y, x)


# --------------------------------------------------------------------------------------------
# Synthetic in-focus images (replay fallback)
# --------------------------------------------------------------------------------------------


def synthetic_infocus(
    shape: tuple[int, int], rng: np.random.Generator | int | None = None, *,
    n_cells: int | None = None,
) -> np.ndarray:
    """A procedural in-focus fluorescence-like image: textured nuclei and thin filaments.

    Only a fallback for replay during fine-tuning when no real in-focus images are given: it
    keeps the network's response to sharp edges and points of all sizes anchored while it adapts
    to a new domain. Real in-focus images of similar samples are better replay data.

    Returns
    -------
    (M, N) float32 ndarray in [0, 1]
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    h, w = (int(s) for s in shape)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    n = n_cells if n_cells is not None else max(3, int(h * w / 2500))
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(3, 14), rng.uniform(3, 14)
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        u = ((yy - cy) * c + (xx - cx) * s) / a
        v = (-(yy - cy) * s + (xx - cx) * c) / b
        r2 = u * u + v * v
        img += np.where(r2 < 1.0, rng.uniform(0.3, 1.0) * (1.0 - 0.4 * r2), 0.0).astype(
            np.float32)
    for _ in range(max(2, n // 2)):
        # A thin smooth curve: a random walk with momentum, drawn one pixel wide.
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * np.pi)
        value = rng.uniform(0.2, 0.8)
        for _ in range(int(rng.integers(20, 4 * max(h, w)))):
            angle += rng.normal(0, 0.15)
            y, x = y + np.sin(angle), x + np.cos(angle)
            iy, ix = int(y), int(x)
            if not (0 <= iy < h and 0 <= ix < w):
                break
            img[iy, ix] = max(img[iy, ix], value)
    for _ in range(n):
        iy, ix = int(rng.integers(h)), int(rng.integers(w))
        img[iy, ix] += rng.uniform(0.3, 1.0)  # point-like spots
    img += rng.uniform(0.0, 0.03)
    return np.clip(img / max(float(img.max()), 1e-6), 0.0, 1.0).astype(np.float32)

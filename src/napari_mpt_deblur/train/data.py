"""Training data: in-focus sources, simulated pairs, real pairs and unlabeled patches.

Everything random here is a function of ``(seed, stream, step)``: the batch for optimiser step
``s`` is drawn from ``numpy.random.default_rng([seed, stream, s])``. A resumed run therefore
sees exactly the batches it would have seen without the interruption, whatever the number of
DataLoader workers, and no data-loader state needs saving.

Intensity conventions
---------------------
- In-focus sources are used as read (uint8/uint16/float). The simulator maps each *whole*
  source image's low/high percentiles (``SimulationConfig.source_percentiles``, default 0.5 and
  99.9) to 0 and 1, which removes the camera offset and the dim background without guessing
  the camera; crops use the whole image's range, so an empty background crop stays dark.
- Model inputs follow the inference engine (:mod:`napari_mpt_deblur.engine.normalize`): one
  affine map ``(x - lo) / (hi - lo)`` applied to input and target alike, with ``lo, hi`` the
  percentiles of the whole *blurred* plane. Only a crop is simulated at full resolution, so the
  whole plane's percentiles are estimated by blurring a block-averaged copy of the whole source
  (long side <= 256 px) with the pixel-binned PSF, without noise; a fraction
  (``patch_norm_fraction``) of pairs uses the crop's own percentiles instead, as the engine
  does for an image no larger than a patch. (Strong defocus lowers the blurred peaks a lot,
  so a range taken from the sharp source would not match what the engine does.)
- Real pairs and unlabeled images are normalised with the percentiles of the whole blurred
  image, exactly as at inference.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..engine.normalize import IntensityNormalization, normalize, percentile_range

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchBuilder",
    "PairSimulator",
    "RealPairs",
    "SourceImage",
    "StepStream",
    "UnlabeledPatches",
    "ValidationSet",
    "build_validation_set",
    "dihedral",
    "find_images",
    "find_pair_files",
    "load_sources",
    "make_loader",
    "random_crop",
    "read_planes",
    "seed_worker",
    "step_rng",
    "synthetic_infocus",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_BLUR_FOLDERS = ("blur", "blurred")
_SHARP_FOLDERS = ("sharp", "gt", "target")


def step_rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """The generator that draws everything random for one step of one data stream."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


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
# Simulated pairs
# --------------------------------------------------------------------------------------------


class PairSimulator:
    """Draw simulated (blurred, sharp) training patches from in-focus sources.

    Each draw picks a source (probability proportional to its area), a random crop with a
    margin as wide as the PSF (so the patch is blurred by its real surroundings, not by mirrored
    borders), a random dihedral transform, random microscope/camera parameters
    (:func:`~napari_mpt_deblur.simulate.sample_parameters`), simulates, cuts the patch out and
    normalises both images with one affine map: the estimated percentiles of the whole blurred
    plane (:meth:`plane_range`) or, for ``patch_norm_fraction`` of the pairs, the blurred
    patch's own percentiles (module notes).

    Parameters
    ----------
    sources : list of SourceImage
        In-focus planes; ``value_range`` must be the simulator's source percentiles.
    simulation : SimulationConfig
        Parameter ranges.
    patch_size : int
        Side of the patches returned.
    patch_norm_fraction : float
        Fraction of pairs normalised by the blurred patch's own percentiles.
    normalization : IntensityNormalization, optional
        The engine's percentiles (defaults to the engine's defaults).
    max_margin : int
        Cap on the context margin (pixels) around the patch.
    weights : sequence of float, optional
        Relative probability of each source; default: its area (pixels).
    """

    def __init__(
        self,
        sources: Sequence[SourceImage],
        simulation: Any,
        patch_size: int,
        *,
        patch_norm_fraction: float = 0.25,
        normalization: IntensityNormalization | None = None,
        max_margin: int = 64,
        weights: Sequence[float] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("PairSimulator needs at least one source image")
        if patch_size < 8:
            raise ValueError(f"patch_size must be >= 8; got {patch_size}")
        if not 0.0 <= patch_norm_fraction <= 1.0:
            raise ValueError(f"patch_norm_fraction must be in [0, 1]; got {patch_norm_fraction}")
        self.sources = list(sources)
        self.simulation = simulation
        self.patch_size = int(patch_size)
        self.patch_norm_fraction = float(patch_norm_fraction)
        self.normalization = normalization or IntensityNormalization()
        self.max_margin = int(max_margin)
        self.plane_estimate_size = 256
        self._small: dict[int, tuple[np.ndarray, int]] = {}
        if weights is None:
            weights = [s.plane.size for s in self.sources]
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.sources),) or not np.all(w >= 0) or not w.sum() > 0:
            raise ValueError(
                f"weights must be {len(self.sources)} values >= 0 with a positive sum; "
                f"got {list(np.ravel(w))}"
            )
        self._weights = w / w.sum()

    def sample(
        self,
        rng: np.random.Generator,
        *,
        defocus_um: float | None = None,
        patch_norm: bool | None = None,
        source_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One normalised pair ``(blurred, sharp, params)``, each image (P, P) float32.

        ``defocus_um`` fixes the nominal defocus (validation strata); ``patch_norm`` forces
        the normalisation mode; ``source_index`` picks the source.
        """
        from ..simulate import defocus_psf, make_pair, optics_from_params, sample_parameters

        p = self.patch_size
        if source_index is None:
            source_index = int(rng.choice(len(self.sources), p=self._weights))
        src = self.sources[source_index]
        params = sample_parameters(self.simulation, rng, defocus_um=defocus_um)
        margin = min(self.max_margin, defocus_psf(optics_from_params(params)).shape[0] // 2)
        margin = min(margin, max(0, (min(src.shape) - p) // 2))
        crop, _ = random_crop(src.plane, p + 2 * margin, rng)
        (crop,) = dihedral([crop], rng)
        pair = make_pair(crop, params, rng, source_range=src.value_range)
        blurred = pair.blurred[margin : margin + p, margin : margin + p]
        sharp = pair.sharp[margin : margin + p, margin : margin + p]
        if patch_norm is None:
            patch_norm = bool(rng.random() < self.patch_norm_fraction)
        if patch_norm:
            lo, hi = percentile_range(blurred, self.normalization)
        else:
            lo, hi = self.plane_range(source_index, params)
        params = dict(pair.params, norm_range=[lo, hi], source=src.name,
                      norm="patch" if patch_norm else "plane")
        return normalize(blurred, lo, hi), normalize(sharp, lo, hi), params

    @property
    def probabilities(self) -> np.ndarray:
        """Probability of drawing each source (a copy)."""
        return self._weights.copy()

    def _small_source(self, index: int) -> tuple[np.ndarray, int]:
        if index not in self._small:
            plane = np.asarray(self.sources[index].plane, dtype=np.float32)
            f = max(1, math.ceil(max(plane.shape) / self.plane_estimate_size))
            h, w = (plane.shape[0] // f) * f, (plane.shape[1] // f) * f
            small = plane[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
            self._small[index] = (small, f)
        return self._small[index]

    def plane_range(self, index: int, params: Mapping[str, Any]) -> tuple[float, float]:
        """Estimated engine percentiles of the whole blurred plane of source ``index``.

        The simulator's intensity mapping is applied to a block-averaged copy of the source,
        which is blurred with the PSF binned by the same factor (noise-free).
        """
        from ..simulate import blur, defocus_psf, optics_from_params

        small, f = self._small_source(index)
        lo_s, hi_s = self.sources[index].value_range
        x = np.maximum((small - lo_s) / (hi_s - lo_s), 0.0)
        gamma = float(params.get("intensity_gamma", 1.0))
        if gamma != 1.0:
            x = x**gamma
        x = x * float(params.get("intensity_scale", 1.0)) + float(params.get("background", 0.0))
        psf = defocus_psf(optics_from_params(params), dtype=np.float32)
        if f > 1:
            k = psf.shape[0]
            m = math.ceil((k / f - 1) / 2)
            side = f * (2 * m + 1)
            pad = (side - k) // 2
            psf = np.pad(psf, ((pad, side - k - pad), (pad, side - k - pad)))
            psf = psf.reshape(2 * m + 1, f, 2 * m + 1, f).sum(axis=(1, 3))
        return percentile_range(blur(x.astype(np.float32), psf), self.normalization)

    def describe(self) -> dict[str, Any]:
        """Short JSON description for checkpoint metadata."""
        return {
            "sources": [s.name for s in self.sources],
            "patch_size": self.patch_size,
            "patch_norm_fraction": self.patch_norm_fraction,
        }


# --------------------------------------------------------------------------------------------
# Real pairs and unlabeled images
# --------------------------------------------------------------------------------------------


def _subfolder(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    return None


def find_pair_files(folder: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Matching ``(blurred, sharp)`` files of a real-pair folder, paired by file name.

    The folder holds ``blur/`` (or ``blurred/``) and ``sharp/`` subfolders; files are matched by
    name without suffix, never by position. Unmatched files are reported and skipped.
    """
    folder = Path(folder).expanduser()
    blur_dir = _subfolder(folder, _BLUR_FOLDERS)
    sharp_dir = _subfolder(folder, _SHARP_FOLDERS)
    if blur_dir is None or sharp_dir is None:
        raise FileNotFoundError(
            f"paired folder {str(folder)!r} must contain a blur/ (or blurred/) and a sharp/ "
            "subfolder"
        )
    blurs = {p.stem: p for p in find_images([blur_dir])}
    sharps = {p.stem: p for p in find_images([sharp_dir])}
    common = sorted(set(blurs) & set(sharps))
    unmatched = sorted(set(blurs) ^ set(sharps))
    if unmatched:
        logger.warning("%s: %d files without a partner are skipped (e.g. %s)", folder,
                       len(unmatched), unmatched[:3])
    if not common:
        raise ValueError(f"paired folder {str(folder)!r} has no file names common to both parts")
    return [(blurs[k], sharps[k]) for k in common]


class RealPairs:
    """Random aligned patches from real (blurred, sharp) image pairs.

    Both images of a pair are normalised with the blurred image's whole-plane percentiles, the
    inference engine's convention.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        patch_size: int,
        *,
        names: Sequence[str] | None = None,
        normalization: IntensityNormalization | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("RealPairs needs at least one pair")
        self.patch_size = int(patch_size)
        norm = normalization or IntensityNormalization()
        self.names = list(names) if names is not None else [f"pair{i}" for i in range(len(pairs))]
        self.pairs: list[np.ndarray] = []
        for name, (b, s) in zip(self.names, pairs):
            b, s = np.asarray(b), np.asarray(s)
            if b.shape != s.shape or b.ndim != 2:
                raise ValueError(
                    f"pair {name}: blurred and sharp must be 2-D and the same shape; got "
                    f"{b.shape} and {s.shape}"
                )
            lo, hi = percentile_range(b, norm)
            self.pairs.append(np.stack([normalize(b, lo, hi), normalize(s, lo, hi)]))
        areas = np.array([p[0].size for p in self.pairs], dtype=np.float64)
        self._weights = areas / areas.sum()

    @classmethod
    def from_folders(
        cls, folders: Sequence[str | os.PathLike[str]], patch_size: int, **kwargs: Any
    ) -> RealPairs:
        """Load every matched pair of ``blur/``+``sharp/`` folders (see :func:`find_pair_files`)."""
        pairs, names = [], []
        for folder in folders:
            for bpath, spath in find_pair_files(folder):
                b, s = read_planes(bpath), read_planes(spath)
                if len(b) != len(s):
                    raise ValueError(f"{bpath.name}: blurred and sharp have different plane counts")
                for i, (bp, sp) in enumerate(zip(b, s)):
                    pairs.append((bp, sp))
                    names.append(bpath.stem + (f"[{i}]" if len(b) > 1 else ""))
        return cls(pairs, patch_size, names=names, **kwargs)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One normalised ``(blurred, sharp)`` patch pair, (P, P) float32 each."""
        i = int(rng.choice(len(self.pairs), p=self._weights))
        stack = self.pairs[i]
        h, w = stack.shape[-2:]
        p = self.patch_size
        if h < p or w < p:
            stack = np.pad(stack, ((0, 0), (0, max(0, p - h)), (0, max(0, p - w))),
                           mode="symmetric")
            h, w = stack.shape[-2:]
        y = int(rng.integers(h - p + 1))
        x = int(rng.integers(w - p + 1))
        b, s = dihedral([stack[0, y : y + p, x : x + p], stack[1, y : y + p, x : x + p]], rng)
        return b, s


class UnlabeledPatches:
    """Random patches of images without ground truth (EFCR's ``E``; re-blur pairs).

    Each image is normalised with its whole-plane percentiles (the engine's convention).

    Parameters
    ----------
    images : sequence of 2-D arrays
        The user's blurry images (any real dtype).
    patch_size : int
        Patch side.
    holdout : dict, optional
        ``{image_index: (y, x, h, w)}`` boxes that training patches avoid (validation crops).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        patch_size: int,
        *,
        holdout: Mapping[int, tuple[int, int, int, int]] | None = None,
        normalization: IntensityNormalization | None = None,
    ) -> None:
        if not images:
            raise ValueError("UnlabeledPatches needs at least one image")
        norm = normalization or IntensityNormalization()
        self.patch_size = int(patch_size)
        self.images: list[np.ndarray] = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.ndim != 2:
                raise ValueError(f"unlabeled image {i} must be 2-D; got shape {img.shape}")
            lo, hi = percentile_range(img, norm)
            self.images.append(normalize(img, lo, hi))
        self.holdout = dict(holdout or {})
        areas = np.array([im.size for im in self.images], dtype=np.float64)
        for i, box in self.holdout.items():
            if not _can_avoid(self.images[i].shape, self.patch_size, box) and len(self.images) > 1:
                areas[i] = 0.0  # no patch fits beside the held-out box: do not train on it
        self._weights = areas / areas.sum()

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One normalised (P, P) float32 patch, randomly flipped/rotated."""
        i = int(rng.choice(len(self.images), p=self._weights))
        crop, _ = random_crop(self.images[i], self.patch_size, rng, avoid=self.holdout.get(i))
        (crop,) = dihedral([crop], rng)
        return crop


# --------------------------------------------------------------------------------------------
# Batches per step
# --------------------------------------------------------------------------------------------


class BatchBuilder:
    """The recipe for the batch of one optimiser step; a pure function of ``step``.

    Parameters
    ----------
    seed, stream : int
        Together with the step they seed :func:`step_rng`.
    simulator : PairSimulator, optional
        Source of ``n_simulated`` simulated pairs per step.
    real : RealPairs, optional
        Source of ``n_real`` real pairs per step.
    unlabeled : UnlabeledPatches, optional
        Source of ``n_unlabeled`` unlabeled patches per step.

    The batch is a dict of float32 tensors: ``blurred`` and ``sharp`` (N, 1, P, P) for the
    pairs (simulated first) and ``unlabeled`` (M, 1, P, P), plus ``defocus_um`` (N,) (NaN for
    real pairs).
    """

    def __init__(
        self,
        *,
        seed: int,
        stream: int = 0,
        simulator: PairSimulator | None = None,
        n_simulated: int = 0,
        real: RealPairs | None = None,
        n_real: int = 0,
        unlabeled: UnlabeledPatches | None = None,
        n_unlabeled: int = 0,
    ) -> None:
        if n_simulated and simulator is None:
            raise ValueError("n_simulated > 0 needs a simulator")
        if n_real and real is None:
            raise ValueError("n_real > 0 needs real pairs")
        if n_unlabeled and unlabeled is None:
            raise ValueError("n_unlabeled > 0 needs unlabeled images")
        if n_simulated + n_real + n_unlabeled < 1:
            raise ValueError("a batch needs at least one simulated, real or unlabeled patch")
        self.seed, self.stream = int(seed), int(stream)
        self.simulator, self.n_simulated = simulator, int(n_simulated)
        self.real, self.n_real = real, int(n_real)
        self.unlabeled, self.n_unlabeled = unlabeled, int(n_unlabeled)

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = step_rng(self.seed, self.stream, step)
        blurred, sharp, defocus = [], [], []
        for _ in range(self.n_simulated):
            b, s, params = self.simulator.sample(rng)  # type: ignore[union-attr]
            blurred.append(b)
            sharp.append(s)
            defocus.append(float(params["defocus_um"]))
        for _ in range(self.n_real):
            b, s = self.real.sample(rng)  # type: ignore[union-attr]
            blurred.append(b)
            sharp.append(s)
            defocus.append(math.nan)
        batch: dict[str, torch.Tensor] = {"step": torch.tensor(int(step))}
        if blurred:
            batch["blurred"] = torch.from_numpy(np.stack(blurred)[:, None].astype(np.float32))
            batch["sharp"] = torch.from_numpy(np.stack(sharp)[:, None].astype(np.float32))
            batch["defocus_um"] = torch.tensor(defocus, dtype=torch.float32)
        if self.n_unlabeled:
            patches = [self.unlabeled.sample(rng) for _ in range(self.n_unlabeled)]  # type: ignore[union-attr]
            batch["unlabeled"] = torch.from_numpy(np.stack(patches)[:, None].astype(np.float32))
        return batch


class StepStream(IterableDataset):
    """Batches for steps ``start, start + 1, ...`` (forever when ``stop`` is None).

    With ``W`` DataLoader workers, worker ``w`` builds the steps ``start + w + k·W``; the
    DataLoader interleaves workers round-robin, so batches arrive in step order and are
    identical to a single-process run.
    """

    def __init__(self, builder: Callable[[int], dict[str, torch.Tensor]], start: int = 0,
                 stop: int | None = None) -> None:
        super().__init__()
        self.builder = builder
        self.start = int(start)
        self.stop = stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        offset, stride = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start + offset
        while self.stop is None or step < self.stop:
            yield self.builder(step)
            step += stride


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from torch's per-worker seed.

    The batches themselves are drawn from per-step generators; this only tames code that uses
    the global generators.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - seeding third-party code's global generator
    random.seed(seed)


def make_loader(
    builder: Callable[[int], dict[str, torch.Tensor]],
    *,
    start: int = 0,
    stop: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over :class:`StepStream` (``batch_size=None``: the builder makes batches)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        StepStream(builder, start, stop),
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationSet:
    """A fixed set of normalised validation pairs, built once per run.

    Attributes
    ----------
    blurred, sharp : Tensor (N, 1, P, P)
    params : list of dict
        Simulation parameters of each pair (defocus for per-level reporting).
    """

    blurred: torch.Tensor
    sharp: torch.Tensor
    params: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.blurred.shape[0])

    def describe(self) -> dict[str, Any]:
        """JSON summary for logs and checkpoint metadata."""
        defocus = [abs(float(p.get("defocus_um", math.nan))) for p in self.params]
        return {
            "n": len(self),
            "patch_size": int(self.blurred.shape[-1]),
            "sources": sorted({str(p.get("source", "")) for p in self.params}),
            "defocus_um_min": float(np.nanmin(defocus)) if defocus else None,
            "defocus_um_max": float(np.nanmax(defocus)) if defocus else None,
        }


def build_validation_set(
    sources: Sequence[SourceImage],
    simulation: Any,
    *,
    n_patches: int,
    patch_size: int,
    seed: int,
    normalization: IntensityNormalization | None = None,
) -> ValidationSet:
    """Simulate ``n_patches`` validation pairs with a fixed seed.

    The nominal defocus is stratified over the simulation's range (evenly spaced magnitudes,
    random sign), so the score weighs every blur level equally and does not change with the
    luck of a draw; sources are used in turn. All pairs use the image-level normalisation.
    """
    if n_patches < 1:
        raise ValueError(f"n_patches must be >= 1; got {n_patches}")
    sim = PairSimulator(sources, simulation, patch_size, patch_norm_fraction=0.0,
                        normalization=normalization)
    rng = np.random.default_rng([int(seed), 7919])
    lo, hi = simulation.defocus_um_range
    levels = np.linspace(lo, hi, n_patches) if n_patches > 1 else np.array([(lo + hi) / 2])
    blurred, sharp, params = [], [], []
    for i, level in enumerate(levels):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if simulation.defocus_sides != "both":
            sign = 1.0 if simulation.defocus_sides == "positive" else -1.0
        b, s, prm = sim.sample(rng, defocus_um=sign * float(level), patch_norm=False,
                               source_index=i % len(sources))
        blurred.append(b)
        sharp.append(s)
        params.append(prm)
    return ValidationSet(
        blurred=torch.from_numpy(np.stack(blurred)[:, None].copy()),
        sharp=torch.from_numpy(np.stack(sharp)[:, None].copy()),
        params=params,
    )


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

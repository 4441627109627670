"""Where the patches of a training step come from: simulated pairs, real pairs and unlabeled
images.

Each source draws its patches from a ``numpy.random.Generator`` it is given, so that
:class:`~napari_mpt_deblur.train.data.BatchBuilder` can make every batch a function of
``(seed, stream, step)``.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.normalize import IntensityNormalization, normalize, percentile_range
from .sources import SourceImage, _can_avoid, dihedral, find_images, random_crop, read_planes

__all__ = [
    "PairSimulator",
    "RealPairs",
    "UnlabeledPatches",
    "find_pair_files",
]

logger = logging.getLogger(__name__)

_BLUR_FOLDERS = ("blur", "blurred")
_SHARP_FOLDERS = ("sharp", "gt", "target")


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
    simulation : SimulationConfig or SimulationMixture
        Parameter ranges; a mixture first draws the member of each pair (recorded as
        ``params["member"]``).
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
        member: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One normalised pair ``(blurred, sharp, params)``, each image (P, P) float32.

        ``defocus_um`` fixes the nominal defocus (validation strata); ``patch_norm`` forces
        the normalisation mode; ``source_index`` picks the source; ``member`` the member of a
        :class:`~napari_mpt_deblur.simulate.SimulationMixture`.
        """
        from ..simulate import (
            SimulationMixture,
            defocus_psf,
            make_pair,
            optics_from_params,
            sample_parameters,
        )

        p = self.patch_size
        if source_index is None:
            source_index = int(rng.choice(len(self.sources), p=self._weights))
        src = self.sources[source_index]
        if isinstance(self.simulation, SimulationMixture):
            params = self.simulation.sample_parameters(rng, member=member, defocus_um=defocus_um)
        elif member not in (None, 0):
            raise ValueError(f"member {member!r} given, but the simulation is not a mixture")
        else:
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

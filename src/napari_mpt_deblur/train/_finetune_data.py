"""The data of one fine-tuning run: what it trains on and what it is judged by.

:class:`~napari_mpt_deblur.train._finetune_run._FinetuneRun` builds these once, before its
first step (as :mod:`._fit_data` does for supervised training): the user's images as planes
(:func:`user_planes`) with the held-out validation crop (:func:`holdout_box`); the simulation
the model was trained with (:func:`model_simulation`), carried over to the user's optics for
the replay pairs and the selection score (:func:`replay_and_score`); the re-blur PSFs
(:func:`finetune_reblur_bank`); what each step's batch holds (:func:`compose_batches`); and the
fixed validation inputs (:func:`validation_inputs`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .optics_domain import (  # SCORE_SEED, model_simulation: re-exported, their home before
    SCORE_SEED,
    SimulatedScore,
    bundled_infocus_sources,
    estimate_noise_sigma,
    match_camera,
    mean_wavelength,
    model_simulation,
    simulation_for_optics,
    start_output_sources,
)
from .reblur import ReblurBank, build_reblur_bank

if TYPE_CHECKING:
    from ..engine.normalize import IntensityNormalization
    from .data import BatchBuilder, UnlabeledPatches
    from .finetune import FinetuneConfig

__all__ = ["SCORE_SEED", "BatchPlan", "compose_batches", "crop_padded", "finetune_reblur_bank",
           "holdout_box", "model_simulation", "planes_fingerprint", "replay_and_score",
           "score_label", "user_planes", "validation_inputs"]

logger = logging.getLogger(__name__)

_STREAM_DATA = 11


def user_planes(images: Sequence[Any] | Any) -> tuple[list[np.ndarray], list[str]]:
    """User images (arrays or files) as 2-D planes with names."""
    from .data import read_planes

    if isinstance(images, (np.ndarray, str, os.PathLike)):
        images = [images]
    planes, names = [], []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            parts = read_planes(item)
            label = Path(item).name
        else:
            arr = np.asarray(item)
            if arr.ndim < 2:
                raise ValueError(f"image {i} must be at least 2-D; got shape {arr.shape}")
            if arr.dtype.kind not in "uif":
                raise TypeError(f"image {i} has dtype {arr.dtype}; expected a numeric image")
            parts = list(arr.reshape((-1, *arr.shape[-2:])))
            label = f"image{i}"
        for j, p in enumerate(parts):
            planes.append(np.asarray(p))
            names.append(label + (f"[{j}]" if len(parts) > 1 else ""))
    if not planes:
        raise ValueError("unlabeled_images is empty: give at least one blurry image")
    return planes, names


def planes_fingerprint(planes: Sequence[np.ndarray]) -> str:
    """A short hash of the user's planes (a subsample): a resumed run must see the same images."""
    digest = hashlib.sha256()
    for p in planes:
        digest.update(str(p.shape).encode())
        digest.update(np.ascontiguousarray(p[::7, ::7]).tobytes())
    return digest.hexdigest()[:16]


def finetune_reblur_bank(settings: FinetuneConfig, simulation: Any) -> ReblurBank:
    """The re-blur PSFs at the user's optical hints, each missing hint taken from
    ``simulation`` (the model's training optics)."""
    n = settings.immersion_index or float(simulation.immersion_index)
    na = settings.numerical_aperture or float(np.mean(simulation.numerical_aperture_range))
    if na >= n:
        raise ValueError(
            f"numerical_aperture {na} must be below the immersion index {n}; pass "
            "immersion_index (e.g. 1.515 for oil) with a high-NA hint"
        )
    return build_reblur_bank(
        pixel_size_um=settings.pixel_size_um or float(simulation.pixel_size_um),
        numerical_aperture=na,
        wavelength_nm=settings.wavelength_nm or mean_wavelength(simulation),
        immersion_index=n,
        defocus_dof=settings.reblur_defocus_dof,
        max_kernel_size=settings.reblur_kernel_size,
    )


def holdout_box(planes: Sequence[np.ndarray], side: int, multiple: int, patch: int
             ) -> tuple[int, tuple[int, int, int, int], bool]:
    """Pick the validation crop in the largest plane, leaving room for training patches.

    Tries the centre, then a corner, then smaller crops (down to one model multiple); returns
    ``exclusive=False`` when no placement leaves a training patch beside it (a single small
    image), in which case training patches may overlap the crop.
    """
    from .sources import _can_avoid

    index = int(np.argmax([p.size for p in planes]))
    h, w = planes[index].shape
    others = len(planes) > 1
    side = max(multiple, (min(side, h, w) // multiple) * multiple)
    candidates = []
    s = side
    while s >= multiple:
        candidates += [(max(0, (h - s) // 2), max(0, (w - s) // 2), s, s), (0, 0, s, s)]
        s -= multiple
    for box in candidates:
        if others or _can_avoid((h, w), patch, box):
            return index, box, True
    return index, candidates[0], False


def score_label(selection_score: str, user_optics: bool) -> str:
    """The selection score's name in the panel's plot, status line and verdicts."""
    where = "your optics" if user_optics else "the model's training optics"
    if selection_score == "own-images":
        return f"simulated PSNR on your images at {where}"
    return f"simulated PSNR at {where}"


def crop_padded(plane: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``plane[box]`` (``box`` = y, x, h, w), mirror-padded where it runs past the plane."""
    y, x, hh, ww = box
    crop = plane[y : y + hh, x : x + ww]
    if crop.shape != (hh, ww):
        crop = np.pad(crop, ((0, hh - crop.shape[0]), (0, ww - crop.shape[1])), mode="symmetric")
    return crop


def replay_and_score(model: nn.Module, planes: Sequence[np.ndarray], names: Sequence[str],
                     simulation: Any, settings: FinetuneConfig, *,
                     normalization: IntensityNormalization, noise_sigma: float,
                     device: torch.device, multiple: int) -> tuple[Any, SimulatedScore]:
    """The replay simulation (``simulation`` at the user's optics when they are given, its
    camera matched to the images' noise when asked) and the selection score on it.

    The score's pairs are fixed here, before any step, with :data:`SCORE_SEED`: from the
    bundled in-focus images, or from the user's own content (the start model's output on the
    user's images, re-blurred).
    """
    s = settings
    replay_simulation = simulation
    if s.uses_user_optics:
        replay_simulation = simulation_for_optics(
            simulation, pixel_size_um=float(s.pixel_size_um),
            numerical_aperture=float(s.numerical_aperture), wavelength_nm=s.wavelength_nm,
            immersion_index=s.immersion_index, max_defocus_um=s.max_defocus_um)
    # read the bundled in-focus images once: camera matching and the score both use them
    score_sources = bundled_infocus_sources(replay_simulation)
    if s.match_camera:
        replay_simulation = match_camera(
            replay_simulation, noise_sigma, sources=score_sources,
            normalization=normalization, seed=SCORE_SEED)
    score_patch = max(multiple, (128 // multiple) * multiple)
    if s.selection_score == "own-images":
        score_sources = start_output_sources(model, planes, replay_simulation,
                                             device=device, names=list(names),
                                             count=s.score_pairs)
    score = SimulatedScore(replay_simulation, sources=score_sources,
                           n_pairs=s.score_pairs, patch_size=score_patch,
                           seed=SCORE_SEED, normalization=normalization,
                           key="user" if s.selection_score == "own-images" else "sim")
    return replay_simulation, score


@dataclass
class BatchPlan:
    """What each step's batch holds, and the stream that draws it.

    Attributes
    ----------
    builder : BatchBuilder
        The batch of each step as a function of ``(seed, stream, step)`` (resumable).
    composition : dict
        Patches per step: ``replay``, ``paired``, ``reblur`` (re-blur pairs) and ``unlabeled``
        (the EFCR relative term's patches); recorded in the checkpoint.
    n_reblur : int
        Re-blur pairs per step (0 in the ``efcr`` and ``replay`` modes).
    replay_description : str
        Where the replay pairs' in-focus content comes from, in words.
    """

    builder: BatchBuilder
    composition: dict[str, int]
    n_reblur: int
    replay_description: str


def compose_batches(settings: FinetuneConfig, patch: int, *, unlabeled: UnlabeledPatches,
                    paired: Sequence[tuple[np.ndarray, np.ndarray]] | None,
                    replay_images: Sequence[Any] | None, replay_simulation: Any,
                    normalization: IntensityNormalization) -> BatchPlan:
    """Split ``settings.batch_size`` between re-blur pairs on the user's images, replay pairs
    simulated on in-focus images (``replay_images``, else procedural ones) and the user's own
    pairs, as the mode asks (module notes of :mod:`~napari_mpt_deblur.train.finetune`)."""
    from .data import BatchBuilder, PairSimulator, RealPairs, SourceImage, synthetic_infocus

    s = settings
    n_replay = n_paired = 0
    real = None
    if paired and s.mode != "reblur_only":
        real = RealPairs(list(paired), patch, normalization=normalization)
        n_paired = max(1, round(s.batch_size * s.paired_fraction))
    if s.mode != "reblur_only" and s.replay_fraction > 0:
        n_replay = max(1, round(s.batch_size * s.replay_fraction))
    n_reblur = max(1, s.batch_size - n_replay - n_paired)
    if s.mode in ("efcr", "replay"):
        n_replay = max(n_replay, s.batch_size - n_paired)
    simulator = None
    replay_description = "none"
    if n_replay:
        if replay_images is not None:
            rplanes, rnames = user_planes(replay_images)
            replay_description = f"{len(rplanes)} in-focus images"
        else:
            rng = np.random.default_rng([s.seed, 4242])
            side = max(2 * patch, 256)
            rplanes = [synthetic_infocus((side, side), rng) for _ in range(4)]
            rnames = [f"synthetic{i}" for i in range(len(rplanes))]
            replay_description = "procedural in-focus images (no replay images given)"
        pct = list(replay_simulation.source_percentiles)
        sources = []
        for name, p in zip(rnames, rplanes):
            lo_r, hi_r = (float(v) for v in np.percentile(p, pct))
            if hi_r > lo_r:
                sources.append(SourceImage(name=name, plane=p, value_range=(lo_r, hi_r)))
        simulator = PairSimulator(sources, replay_simulation, patch,
                                  patch_norm_fraction=0.25, normalization=normalization)
    reblur_pairs = n_reblur if s.mode not in ("efcr", "replay") else 0
    builder = BatchBuilder(seed=s.seed, stream=_STREAM_DATA, simulator=simulator,
                           n_simulated=n_replay, real=real, n_real=n_paired,
                           unlabeled=unlabeled, n_unlabeled=n_reblur)
    composition = {"replay": n_replay, "paired": n_paired, "reblur": reblur_pairs,
                   "unlabeled": n_reblur}
    return BatchPlan(builder, composition, reblur_pairs, replay_description)


def validation_inputs(val_crop: np.ndarray, bank: ReblurBank, settings: FinetuneConfig,
                      device: torch.device) -> torch.Tensor:
    """The fixed validation inputs: the held-out crop ``E`` and two re-blurred copies of it
    (with fixed noise when the run adds noise to its re-blur pairs), stacked ``(3, 1, H, W)``
    (fewer copies for a bank with fewer kernels)."""
    e = torch.from_numpy(np.ascontiguousarray(val_crop))[None, None].to(device)
    k = len(bank)
    idx = sorted({min(1, k - 1), min(2, k - 1)})
    g = torch.Generator().manual_seed(settings.seed + 99)
    reblurred = []
    for i in idx:
        r = bank.apply(e, [i])
        if settings.reblur_noise:
            sigma = estimate_noise_sigma(e)
            r = r + sigma * torch.randn(r.shape, generator=g).to(r.device)
        reblurred.append(r)
    return torch.cat([e, *reblurred])

"""EFCR fine-tuning of a trained model on a lab's own unlabeled blurry images.

A lab's images differ from any training set (objective, NA, wavelength, sample, camera). This
engine adapts a model to them without ground truth, mixing per step:

(a) self-supervised re-blur pairs on the user's images: ``f(G(E)) ≈ E``, where ``G`` is a small
    physical defocus PSF (from the optical hints, or the model's simulation optics) drawn per
    patch, plus camera-like noise matched to the patch's own noise level;
(b) EFCR on the real blurry images: the relative term pushes ``f(E)`` away from re-blurred
    copies of ``E`` (:func:`~napari_mpt_deblur.train.losses.efcr_terms`), and the contrastive
    ratio acts on every labeled pair in the batch;
(c) replay of simulated labeled pairs on in-focus replay images, so the model does not forget
    how to undo strong defocus; when the user gives the optics (pixel size, NA, ...) the replay
    is simulated at *their* optics (:mod:`~napari_mpt_deblur.train.optics_domain`), which
    teaches the new PSF family directly; optional user pairs join them.

Modes for ablations: ``"full"`` = (a) + (b) + (c); ``"reblur_only"`` = (a) alone (pixel loss, no
EFCR, no replay); ``"efcr"`` = (b) + (c) without the re-blur pixel loss; ``"replay"`` = (c)
alone (supervised on simulated pairs, the user's images only for validation).

Selection and the guard: the self-supervised re-blur PSNR ``PSNR(f(G(E)), E)`` on the user's
held-out crop rose while the true PSNR fell (docs/finetuning.md), so it only stays as a
diagnostic. Weights are chosen by the PSNR on fixed simulated pairs at the replay optics, made
from real in-focus images that training never sees (the bundled samples), in focus included;
the starting weights are kept unless a checkpoint beats them by ``min_gain_db``.

:func:`finetune_iter` is a generator of :class:`~napari_mpt_deblur.train.updates.TrainUpdate`
records, so a napari ``thread_worker`` can forward them and stop it between steps;
:func:`finetune` runs it to the end for scripts and the CLI.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._dataclass_io import dataclass_from_dict, dataclass_to_dict
from .._device import get_device
from . import _common
from ._common import (
    STATE_FORMAT,
    STATE_VERSION,
    CancelLike,
    atomic_torch_save,
    autocast,
    is_cancelled,
    load_state_file,
    lr_at,
    psnr_ssim,
    resolve_amp,
    set_lr,
    step_generator,
)
from .losses import PIXEL_LOSSES, efcr_terms, haar_dwt, pixel_loss
from .optics_domain import (
    SimulatedScore,
    bundled_infocus_sources,
    estimate_noise_sigma,
    match_camera,
    mean_wavelength,
    planes_noise_sigma,
    simulation_for_optics,
)
from .reblur import ReblurBank, build_reblur_bank, make_negatives, make_reblurred_set
from .trainable import TRAINABLE_CHOICES, select_trainable
from .updates import TrainUpdate, UpdateKind

__all__ = [
    "FINETUNE_MODES",
    "FINETUNE_PRESETS",
    "FinetuneConfig",
    "FinetuneResult",
    "estimate_noise_sigma",
    "finetune",
    "finetune_iter",
    "get_finetune_preset",
    "list_finetune_presets",
]

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "reblur_only", "efcr", "replay")
REPLAY_OPTICS = ("auto", "user", "model")
#: The selection score's pairs do not depend on the run's seed: one yardstick for every run.
SCORE_SEED = 2027
_STREAM_DATA = 11
_STREAM_STEP = 12
_RUN_CONTROL = frozenset({"steps", "time_budget_s", "device", "val_every", "preview_every",
                          "state_every"})


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of an EFCR fine-tuning run.

    Attributes
    ----------
    steps : int
        Optimiser steps (also the length of the cosine schedule).
    time_budget_s : float or None
        Stop cleanly before this many seconds have passed.
    batch_size : int
        Labeled pairs per step (re-blur pairs + replay + user pairs); the EFCR relative term
        uses as many unlabeled patches as there are re-blur pairs.
    patch_size : int
        Patch side; rounded up to the model's ``size_multiple``.
    lr, min_lr : float
        Peak and final learning rate (AdamW). Small: this adapts a trained model.
    warmup_steps : int
        Linear warm-up steps.
    weight_decay : float
        AdamW weight decay.
    grad_clip : float
        Gradient-norm clip (0: off).
    efcr_weight : float
        λ on the contrastive ratio CR (authors: 5e-4).
    efcr_rel_weight : float
        Factor on the relative term inside CR (paper: 0.1).
    replay_fraction : float
        Fraction of the labeled batch drawn as simulated replay pairs ("full" and "efcr").
    paired_fraction : float
        Fraction of the labeled batch drawn from user pairs, when given.
    pixel_loss : {"l1", "mse", "charbonnier", "psnr"}
        Pixel loss.
    mode : {"full", "reblur_only", "efcr", "replay"}
        Which parts are used (module notes).
    pixel_size_um, numerical_aperture, wavelength_nm, refractive_index : float or None
        Optical hints for the re-blur operator; ``None`` takes them from the model's simulation
        preset.
    reblur_defocus_dof : tuple of float
        Re-blur defocus values, in multiples of the depth of field ``λ·n/NA²``. The default
        (2-8) re-blurs about as strongly as the defocus being corrected: with the weaker 0.5-2
        the network learned to undo only slight blur and fine-tuning lowered PSNR on held-out
        pairs (docs/finetuning.md, benchmarks/finetune_domain_shift.py).
    reblur_kernel_size : int
        Largest re-blur kernel side, px (odd); larger defocus PSFs are cropped to it. Raise it
        with large ``reblur_defocus_dof`` at fine pixel sizes, where defocus spans many pixels.
    reblur_noise : bool
        Add noise of the patch's own estimated level to ``G(E)`` (a re-blurred patch is
        otherwise smoother than any real input).
    simulation : str or None
        Simulation preset for replay; ``None`` uses the model's own (metadata), else "bbbc006".
    replay_optics : {"auto", "user", "model"}
        Optics of the replay pairs and of the selection score. "user" moves the replay
        simulation to the optical hints (:func:`~napari_mpt_deblur.train.optics_domain.
        simulation_for_optics`: the user's PSF family, the model's relative defocus range);
        "model" keeps the model's own simulation; "auto" is "user" when ``pixel_size_um`` and
        ``numerical_aperture`` are given.
    max_defocus_um : float or None
        Deepest defocus the user expects, µm; default: the model's training range carried over
        to the user's optics in depths of field.
    min_gain_db : float
        Guard: fine-tuned weights replace the starting ones only when they beat them on the
        selection score (simulated PSNR at the replay optics) by at least this much.
    score_pairs : int
        Number of fixed simulated pairs behind the selection score.
    match_camera : bool
        Set the photon count of replay pairs and score pairs so they are as noisy as the user's
        images (:func:`~napari_mpt_deblur.train.optics_domain.match_camera`).
    trainable : {"all", "late", "norms"}
        Which parameters adapt (:mod:`~napari_mpt_deblur.train.trainable`): all, the last third
        of the network's blocks, or normalisation weights and biases.
    val_crop_size : int
        Side of the held-out validation crop (rounded down to the model's multiple).
    val_every, preview_every, state_every : int
        Steps between validations, previews and resumable-state saves (0: never).
    amp : {"auto", "off", "bf16", "fp16"}
        Mixed precision on CUDA.
    device : str
        Torch device or "auto".
    seed : int
        Seeds every random choice (resumable step by step).
    """

    steps: int = 300
    time_budget_s: float | None = None
    batch_size: int = 2
    patch_size: int = 128
    lr: float = 5e-5
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    efcr_weight: float = 5e-4
    efcr_rel_weight: float = 0.1
    replay_fraction: float = 0.5
    paired_fraction: float = 0.25
    pixel_loss: str = "l1"
    mode: str = "full"
    pixel_size_um: float | None = None
    numerical_aperture: float | None = None
    wavelength_nm: float | None = None
    refractive_index: float | None = None
    reblur_defocus_dof: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0)
    reblur_kernel_size: int = 63
    reblur_noise: bool = True
    simulation: str | None = None
    replay_optics: str = "auto"
    max_defocus_um: float | None = None
    min_gain_db: float = 0.05
    score_pairs: int = 16
    match_camera: bool = True
    trainable: str = "all"
    val_crop_size: int = 256
    val_every: int = 25
    preview_every: int = 50
    state_every: int = 50
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reblur_defocus_dof",
                           tuple(float(v) for v in self.reblur_defocus_dof))
        if self.mode not in FINETUNE_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(map(repr, FINETUNE_MODES))}; got {self.mode!r}"
            )
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(
                f"pixel_loss must be one of {', '.join(map(repr, PIXEL_LOSSES))}; "
                f"got {self.pixel_loss!r}"
            )
        if self.replay_optics not in REPLAY_OPTICS:
            raise ValueError(f"replay_optics must be one of {', '.join(map(repr, REPLAY_OPTICS))};"
                             f" got {self.replay_optics!r}")
        if self.replay_optics == "user" and (self.pixel_size_um is None
                                             or self.numerical_aperture is None):
            raise ValueError("replay_optics='user' needs pixel_size_um and numerical_aperture")
        if self.max_defocus_um is not None and not self.max_defocus_um > 0:
            raise ValueError(f"max_defocus_um must be > 0 or None; got {self.max_defocus_um!r}")
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable must be one of {', '.join(map(repr, TRAINABLE_CHOICES))}"
                             f"; got {self.trainable!r}")
        if not self.min_gain_db >= 0:
            raise ValueError(f"min_gain_db must be >= 0; got {self.min_gain_db!r}")
        for name in ("steps", "batch_size", "patch_size", "val_crop_size", "score_pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name in ("warmup_steps", "val_every", "preview_every", "state_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        for name in ("min_lr", "weight_decay", "grad_clip", "efcr_weight", "efcr_rel_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}")
        for name in ("replay_fraction", "paired_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        for name in ("pixel_size_um", "numerical_aperture", "wavelength_nm", "refractive_index"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number or None; got {v!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None; got {self.time_budget_s!r}")
        if not self.reblur_defocus_dof or min(self.reblur_defocus_dof) <= 0:
            raise ValueError(
                f"reblur_defocus_dof must hold positive numbers; got {self.reblur_defocus_dof!r}"
            )
        size = self.reblur_kernel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
            raise ValueError(f"reblur_kernel_size must be an odd integer >= 3; got {size!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16'; got {self.amp!r}")

    @property
    def uses_user_optics(self) -> bool:
        """Whether replay pairs and the selection score are simulated at the optical hints."""
        if self.replay_optics == "model":
            return False
        return self.pixel_size_um is not None and self.numerical_aperture is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`, also for YAML: unknown keys and lossy values raise
        ``ValueError`` naming them."""
        return dataclass_from_dict(cls, data)

    def replace(self, **changes: Any) -> FinetuneConfig:
        """Copy with some fields changed (unknown names raise ``ValueError``)."""
        return FinetuneConfig.from_dict({**self.to_dict(), **changes})


FINETUNE_PRESETS: dict[str, FinetuneConfig] = {
    # A few hundred small steps: minutes for mpt-tiny on a laptop CPU.
    # Replay at the user's optics, adapting the last third of the network at a high learning
    # rate: the winner of benchmarks/finetune_domain_shift.py on both shifted domains (NA 1.2
    # oil, and a dim camera) on this 2-core CPU; 200 steps take about 3 minutes there.
    "cpu-laptop": FinetuneConfig(steps=200, batch_size=2, patch_size=128, lr=3e-4,
                                 mode="replay", trainable="late",
                                 time_budget_s=1800.0, val_crop_size=256, val_every=25,
                                 preview_every=50, state_every=50),
    # Larger patches and batches on a GPU (the objective and the learning rate were chosen
    # before the CPU benchmark that changed the laptop preset; not measured on a GPU since).
    "gpu": FinetuneConfig(steps=2000, batch_size=8, patch_size=256, lr=1e-4, warmup_steps=50,
                          val_crop_size=512, val_every=100, preview_every=100,
                          state_every=200),
}


def list_finetune_presets() -> list[str]:
    """Names of the fine-tuning presets."""
    return sorted(FINETUNE_PRESETS)


def get_finetune_preset(name: str, **overrides: Any) -> FinetuneConfig:
    """The preset ``name`` (``ValueError`` listing the valid names otherwise)."""
    if name not in FINETUNE_PRESETS:
        raise ValueError(
            f"unknown fine-tuning preset {name!r}; choose one of "
            f"{', '.join(map(repr, list_finetune_presets()))}"
        )
    preset = FINETUNE_PRESETS[name]
    return preset.replace(**overrides) if overrides else preset


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes
    ----------
    model : nn.Module
        The fine-tuned model (best weights loaded, eval mode).
    history : list of dict
        Loss and validation records (``kind`` "loss"/"validation").
    best : dict
        Validation scores of the kept weights (``step`` 0 = the starting model).
    baseline : dict
        Validation scores of the starting model.
    checkpoint : Path or None
        The checkpoint written, if any.
    stopped : str
        "completed", "cancelled" or "time_budget".
    kept_start : bool
        True when no checkpoint beat the starting weights by ``min_gain_db`` on the selection
        score, so ``model`` holds the starting weights.
    verdict : str
        One sentence saying which weights were kept and why.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    stopped: str = "completed"
    kept_start: bool = False
    verdict: str = ""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _planes(images: Sequence[Any] | Any) -> tuple[list[np.ndarray], list[str]]:
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


def _fingerprint(planes: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for p in planes:
        digest.update(str(p.shape).encode())
        digest.update(np.ascontiguousarray(p[::7, ::7]).tobytes())
    return digest.hexdigest()[:16]


def _model_simulation(model: nn.Module, override: str | None) -> Any:
    """The replay simulation config: override, else the model's metadata, else bbbc006."""
    from ..simulate import SimulationConfig, get_simulation_preset

    if override is not None:
        return get_simulation_preset(override)
    sim = (getattr(model, "info", None) or {}).get("simulation")
    if isinstance(sim, str):
        try:
            return get_simulation_preset(sim)
        except ValueError:
            logger.warning("model's simulation preset %r is unknown; using 'bbbc006'", sim)
    elif isinstance(sim, Mapping):
        names = {f.name for f in dataclasses.fields(SimulationConfig)}
        fields = {k: v for k, v in sim.items() if k in names}
        try:
            if fields:
                return SimulationConfig.from_dict(fields)
            if isinstance(sim.get("preset"), str):
                return get_simulation_preset(sim["preset"])
        except (TypeError, ValueError) as exc:
            logger.warning("model's simulation metadata is unusable (%s); using 'bbbc006'", exc)
    return get_simulation_preset("bbbc006")


def _reblur_bank(settings: FinetuneConfig, simulation: Any) -> ReblurBank:
    n = settings.refractive_index or float(simulation.immersion_index)
    na = settings.numerical_aperture or float(np.mean(simulation.numerical_aperture_range))
    if na >= n:
        raise ValueError(
            f"numerical_aperture {na} must be below the refractive index {n}; pass "
            "refractive_index (e.g. 1.515 for oil) with a high-NA hint"
        )
    return build_reblur_bank(
        pixel_size_um=settings.pixel_size_um or float(simulation.pixel_size_um),
        numerical_aperture=na,
        wavelength_nm=settings.wavelength_nm or mean_wavelength(simulation),
        refractive_index=n,
        defocus_dof=settings.reblur_defocus_dof,
        max_kernel_size=settings.reblur_kernel_size,
    )


def _holdout(planes: Sequence[np.ndarray], side: int, multiple: int, patch: int
             ) -> tuple[int, tuple[int, int, int, int], bool]:
    """Pick the validation crop in the largest plane, leaving room for training patches.

    Tries the centre, then a corner, then smaller crops (down to one model multiple); returns
    ``exclusive=False`` when no placement leaves a training patch beside it (a single small
    image), in which case training patches may overlap the crop.
    """
    from .data import _can_avoid

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


def _score(record: Mapping[str, Any]) -> float:
    """The selection score of a validation record (older records: minus infinity)."""
    value = record.get("score")
    return float(value) if value is not None else -math.inf


def _crop_padded(plane: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, hh, ww = box
    crop = plane[y : y + hh, x : x + ww]
    if crop.shape != (hh, ww):
        crop = np.pad(crop, ((0, hh - crop.shape[0]), (0, ww - crop.shape[1])), mode="symmetric")
    return crop


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def finetune_iter(
    model: nn.Module,
    unlabeled_images: Sequence[Any] | Any,
    *,
    paired: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    settings: FinetuneConfig | str | None = None,
    replay_images: Sequence[Any] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    state_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    cancel: CancelLike = None,
) -> Iterator[TrainUpdate]:
    """Fine-tune ``model`` on unlabeled blurry images, yielding progress records.

    Parameters
    ----------
    model : nn.Module
        A trained model (e.g. from ``load_model``); it is changed in place and ends in eval
        mode with the best weights found (the starting weights count as a candidate).
    unlabeled_images : array, path or sequence of them
        The user's blurry images (2-D, or stacks split into planes). A centre crop of the
        largest is held out for validation.
    paired : sequence of (blurred, sharp) arrays, optional
        User pairs with ground truth, if any (mixed into the labeled batch).
    settings : FinetuneConfig or preset name, optional
        Defaults to ``FinetuneConfig()``.
    replay_images : sequence of arrays or paths, optional
        In-focus images for replay pairs. Without them, procedural in-focus images
        (:func:`~napari_mpt_deblur.train.data.synthetic_infocus`) are used.
    out_path : path, optional
        Checkpoint (``.safetensors``) written with the best weights at every state save and at
        the end.
    state_path : path, optional
        Resumable state; default ``out_path`` with suffix ``.state.pt`` (none without either).
    resume : bool
        Continue from ``state_path``.
    cancel : threading.Event or callable, optional
        Checked before every step; the run then stops, keeping the best weights.

    Yields
    ------
    TrainUpdate
        VALIDATION (step 0: the starting model), LOSS every step, VALIDATION / PREVIEW /
        CHECKPOINT as configured, DONE at the end (``value["result"]`` is a
        :class:`FinetuneResult`). On an exception an ERROR record is yielded and the exception
        re-raised.
    """
    if isinstance(settings, str):
        settings = get_finetune_preset(settings)
    settings = settings or FinetuneConfig()
    if not isinstance(settings, FinetuneConfig):
        raise TypeError(f"settings must be a FinetuneConfig or preset name; got {type(settings)}")
    total = settings.steps
    step = 0
    try:
        run = _FinetuneRun(model, unlabeled_images, paired=paired, settings=settings,
                           replay_images=replay_images, out_path=out_path,
                           state_path=state_path, resume=resume)
        step = run.step
        yield from run.start_updates()
        t0 = time.monotonic()
        recent: deque[float] = deque(maxlen=20)
        stopped = "completed"
        while run.step < total:
            if is_cancelled(cancel):
                stopped = "cancelled"
                break
            if settings.time_budget_s is not None:
                typical = max(recent) if recent else 0.0
                if time.monotonic() - t0 + typical > settings.time_budget_s:
                    stopped = "time_budget"
                    break
            t_step = time.monotonic()
            record = run.train_step()
            step = run.step
            yield TrainUpdate(UpdateKind.LOSS, step, total, record)
            if settings.val_every and (step % settings.val_every == 0 or step == total):
                yield TrainUpdate(UpdateKind.VALIDATION, step, total, run.validate())
            if settings.preview_every and step % settings.preview_every == 0:
                yield TrainUpdate(UpdateKind.PREVIEW, step, total, run.preview())
            if settings.state_every and step % settings.state_every == 0 and step != total:
                yield from run.save()
            recent.append(time.monotonic() - t_step)
        if not settings.val_every or run.last_val_step != run.step:
            yield TrainUpdate(UpdateKind.VALIDATION, run.step, total, run.validate())
        run.stopped = stopped
        yield from run.save()
        result = run.finish()
        yield TrainUpdate(UpdateKind.DONE, run.step, total, {
            "reason": stopped, "best": result.best, "baseline": result.baseline,
            "kept_start": result.kept_start, "verdict": result.verdict,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "result": result,
        })
    except GeneratorExit:
        # The consumer stopped iterating (e.g. napari worker.quit()): keep the best weights.
        if "run" in locals():
            run.restore_best()
        raise
    except Exception as exc:
        yield TrainUpdate(UpdateKind.ERROR, step, total, exc)
        raise


def finetune(
    model: nn.Module,
    unlabeled_images: Sequence[Any] | Any,
    *,
    paired: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    settings: FinetuneConfig | str | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    cancel: CancelLike = None,
    updates: Callable[[TrainUpdate], None] | None = None,
    **kwargs: Any,
) -> FinetuneResult:
    """Run :func:`finetune_iter` to the end and return its :class:`FinetuneResult`.

    ``progress(step, total, info)`` is called on every LOSS and VALIDATION record and
    ``updates(record)`` on every record; other keyword arguments go to :func:`finetune_iter`
    (``replay_images``, ``out_path``, ``state_path``, ``resume``).
    """
    result: FinetuneResult | None = None
    for update in finetune_iter(model, unlabeled_images, paired=paired, settings=settings,
                                cancel=cancel, **kwargs):
        if updates is not None:
            updates(update)
        if progress is not None and update.kind in (UpdateKind.LOSS, UpdateKind.VALIDATION):
            progress(update.step, update.total, dict(update.value))
        if update.kind is UpdateKind.DONE:
            result = update.value["result"]
    assert result is not None  # DONE is always the last record of a successful run
    return result


class _FinetuneRun:
    """State of one fine-tuning run; :func:`finetune_iter` drives it step by step."""

    def __init__(
        self,
        model: nn.Module,
        unlabeled_images: Any,
        *,
        paired: Sequence[tuple[np.ndarray, np.ndarray]] | None,
        settings: FinetuneConfig,
        replay_images: Sequence[Any] | None,
        out_path: str | os.PathLike[str] | None,
        state_path: str | os.PathLike[str] | None,
        resume: bool,
    ) -> None:
        from ..engine.normalize import IntensityNormalization, normalize, percentile_range
        from .data import (
            BatchBuilder,
            PairSimulator,
            RealPairs,
            SourceImage,
            UnlabeledPatches,
            synthetic_infocus,
        )

        s = self.settings = settings
        self.model = model
        if not any(p.requires_grad for p in model.parameters()):
            logger.info("all parameters were frozen; unfreezing them for fine-tuning")
            model.requires_grad_(True)
        self.device = get_device(s.device)
        model.to(self.device)
        self.amp_dtype = resolve_amp(s.amp, self.device)
        info = dict(getattr(model, "info", None) or {})
        self.normalization = IntensityNormalization.from_dict(info.get("normalization"))
        multiple = int(getattr(model, "size_multiple", 1) or 1)
        patch = -(-s.patch_size // multiple) * multiple
        if patch != s.patch_size:
            logger.info("patch_size %d rounded up to %d (model multiple %d)", s.patch_size,
                        patch, multiple)
        self.patch = patch

        planes, self.image_names = _planes(unlabeled_images)
        self.fingerprint = _fingerprint(planes)
        val_index, box, exclusive = _holdout(planes, s.val_crop_size, multiple, patch)
        if not exclusive:
            logger.warning("only one small image: the validation crop overlaps training patches")
        unlabeled = UnlabeledPatches(planes, patch, holdout={val_index: box} if exclusive else None,
                                     normalization=self.normalization)
        lo, hi = percentile_range(planes[val_index], self.normalization)
        self.val_crop = normalize(_crop_padded(planes[val_index], box), lo, hi)
        self.val_range = (float(lo), float(hi))
        self.val_box = box
        self.val_image = self.image_names[val_index]

        self.simulation = _model_simulation(model, s.simulation)
        self.bank = _reblur_bank(s, self.simulation).to(self.device)
        self.replay_simulation = self.simulation
        if s.uses_user_optics:
            self.replay_simulation = simulation_for_optics(
                self.simulation, pixel_size_um=float(s.pixel_size_um),
                numerical_aperture=float(s.numerical_aperture), wavelength_nm=s.wavelength_nm,
                refractive_index=s.refractive_index, max_defocus_um=s.max_defocus_um)
        self.noise_sigma = planes_noise_sigma(planes, self.normalization)
        # read the bundled in-focus images once: camera matching and the score both use them
        score_sources = bundled_infocus_sources(self.replay_simulation)
        if s.match_camera:
            self.replay_simulation = match_camera(
                self.replay_simulation, self.noise_sigma, sources=score_sources,
                normalization=self.normalization, seed=SCORE_SEED)
        score_patch = max(multiple, (128 // multiple) * multiple)
        self.score = SimulatedScore(self.replay_simulation, sources=score_sources,
                                    n_pairs=s.score_pairs, patch_size=score_patch,
                                    seed=SCORE_SEED, normalization=self.normalization)
        self.score_label = ("simulated PSNR at your optics" if s.uses_user_optics else
                            "simulated PSNR at the model's training optics")

        # Batch composition.
        n_replay = n_paired = 0
        real = None
        if paired and s.mode != "reblur_only":
            real = RealPairs(list(paired), patch, normalization=self.normalization)
            n_paired = max(1, round(s.batch_size * s.paired_fraction))
        if s.mode != "reblur_only" and s.replay_fraction > 0:
            n_replay = max(1, round(s.batch_size * s.replay_fraction))
        n_reblur = max(1, s.batch_size - n_replay - n_paired)
        if s.mode in ("efcr", "replay"):
            n_replay = max(n_replay, s.batch_size - n_paired)
        simulator = None
        self.replay_description = "none"
        if n_replay:
            if replay_images is not None:
                rplanes, rnames = _planes(replay_images)
                self.replay_description = f"{len(rplanes)} in-focus images"
            else:
                rng = np.random.default_rng([s.seed, 4242])
                side = max(2 * patch, 256)
                rplanes = [synthetic_infocus((side, side), rng) for _ in range(4)]
                rnames = [f"synthetic{i}" for i in range(len(rplanes))]
                self.replay_description = "procedural in-focus images (no replay images given)"
            pct = list(self.replay_simulation.source_percentiles)
            sources = []
            for name, p in zip(rnames, rplanes):
                lo_r, hi_r = (float(v) for v in np.percentile(p, pct))
                if hi_r > lo_r:
                    sources.append(SourceImage(name=name, plane=p, value_range=(lo_r, hi_r)))
            simulator = PairSimulator(sources, self.replay_simulation, patch,
                                      patch_norm_fraction=0.25, normalization=self.normalization)
        self.n_reblur = n_reblur if s.mode not in ("efcr", "replay") else 0
        self.builder = BatchBuilder(
            seed=s.seed, stream=_STREAM_DATA, simulator=simulator, n_simulated=n_replay,
            real=real, n_real=n_paired, unlabeled=unlabeled,
            n_unlabeled=n_reblur,
        )
        self.composition = {"replay": n_replay, "paired": n_paired, "reblur": self.n_reblur,
                            "unlabeled": n_reblur}

        # Fixed validation inputs: E and two re-blurred copies with fixed noise.
        e = torch.from_numpy(np.ascontiguousarray(self.val_crop))[None, None].to(self.device)
        k = len(self.bank)
        idx = sorted({min(1, k - 1), min(2, k - 1)})
        g = torch.Generator().manual_seed(s.seed + 99)
        reblurred = []
        for i in idx:
            r = self.bank.apply(e, [i])
            if s.reblur_noise:
                sigma = estimate_noise_sigma(e)
                r = r + sigma * torch.randn(r.shape, generator=g).to(r.device)
            reblurred.append(r)
        self.val_inputs = torch.cat([e, *reblurred])

        self.n_trainable = select_trainable(model, s.trainable)
        self.optimizer = torch.optim.AdamW(
            _common.parameter_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_val_step = -1
        self.stopped = "completed"
        self.out_path = Path(out_path) if out_path is not None else None
        if state_path is None and self.out_path is not None:
            state_path = self.out_path.with_name(self.out_path.stem + ".state.pt")
        self.state_path = Path(state_path) if state_path is not None else None
        self.base_info = info
        self.baseline: dict[str, Any] = {}
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self._resumed = False
        if resume:
            if self.state_path is None or not self.state_path.is_file():
                logger.warning("resume requested but there is no state file (%s); starting anew",
                               self.state_path)
            else:
                self._load_state()

    # ------------------------------------------------------------------------------------
    def start_updates(self) -> Iterator[TrainUpdate]:
        if not self._resumed:
            self.baseline = self.validate(record_history=False)
            self.best = dict(self.baseline)
            self.best_state = self._snapshot()
            self.history.append({"kind": "validation", **self.baseline})
            logger.info("fine-tuning %s: %s; composition %s; starting %s %.2f dB (re-blur "
                        "PSNR %.2f dB)", self.settings.mode, ", ".join(self.image_names),
                        self.composition, self.score_label, self.baseline["score"],
                        self.baseline["reblur_psnr"])
            yield TrainUpdate(UpdateKind.VALIDATION, 0, self.settings.steps, dict(self.baseline))
            if self.settings.preview_every:
                yield TrainUpdate(UpdateKind.PREVIEW, 0, self.settings.steps, self.preview())
        else:
            yield TrainUpdate(UpdateKind.VALIDATION, self.step, self.settings.steps,
                              dict(self.best, resumed=True))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        select_trainable(self.model, "all")  # the model handed back trains like any other
        self.model.eval()

    # ------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        s, model, device = self.settings, self.model, self.device
        step = self.step
        model.train()
        lr = lr_at(step, lr=s.lr, min_lr=s.min_lr, warmup_steps=s.warmup_steps,
                   total_steps=s.steps)
        set_lr(self.optimizer, lr)
        gen = step_generator(s.seed, _STREAM_STEP, step)
        batch = self.builder(step)
        inputs, targets = [], []
        if "blurred" in batch:
            inputs.append(batch["blurred"].to(device))
            targets.append(batch["sharp"].to(device))
        e = batch["unlabeled"].to(device)
        uses_efcr = s.mode in ("full", "efcr") and s.efcr_weight > 0
        if self.n_reblur or uses_efcr:
            g_e, members = make_reblurred_set(e, self.bank, generator=gen)
            if s.reblur_noise:
                sigma = estimate_noise_sigma(e)
                g_e = g_e + sigma * torch.randn(g_e.shape, generator=gen).to(device)
        if self.n_reblur:
            inputs.append(g_e)
            targets.append(e)
        parts: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=device)
        restored = blurred = sharp = None
        if inputs:
            blurred = torch.cat(inputs)
            sharp = torch.cat(targets)
            with autocast(device, self.amp_dtype):
                restored = model(blurred)
            parts["pixel"] = pixel_loss(restored, sharp, s.pixel_loss)
            loss = loss + parts["pixel"]
        if uses_efcr:
            with autocast(device, self.amp_dtype):
                f_e = model(e)
            negatives = (make_negatives(blurred, self.bank, generator=gen)
                         if blurred is not None else [])
            terms = efcr_terms(restored, sharp, blurred, negatives=negatives,
                               unlabeled_restored=f_e, unlabeled=e, unlabeled_reblurred=members,
                               rel_weight=s.efcr_rel_weight)
            parts["efcr"] = terms.cr
            parts["efcr_rel"] = terms.rel
            loss = loss + s.efcr_weight * terms.cr
        self.optimizer.zero_grad(set_to_none=True)
        record: dict[str, float] = {"lr": lr}
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
            if s.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                record["grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(),
                                                                     s.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            logger.warning("fine-tune step %d: non-finite loss, update skipped", step + 1)
        self.step = step + 1
        record.update({"loss": float(loss.detach()),
                       **{k: float(v.detach()) for k, v in parts.items()}})
        self.history.append({"kind": "loss", "step": self.step, **record})
        return record

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self) -> torch.Tensor:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with autocast(self.device, self.amp_dtype):
                out = model(self.val_inputs)
        finally:
            model.train(was_training)
        return out.float()

    def validate(self, *, record_history: bool = True) -> dict[str, Any]:
        out = self._outputs().cpu()
        e = self.val_inputs[:1].float().cpu()
        target = e[0, 0].numpy()
        psnrs = [psnr_ssim(out[i, 0].numpy(), target)[0] for i in range(1, out.shape[0])]
        identity = [psnr_ssim(self.val_inputs[i, 0].float().cpu().numpy(), target)[0]
                    for i in range(1, out.shape[0])]
        _, hf_out = haar_dwt(out[:1])
        _, hf_e = haar_dwt(e)
        simulated = self.score(self.model, device=self.device, amp_dtype=self.amp_dtype)
        scores = {
            "step": self.step,
            "score": simulated["sim_psnr"],
            "score_name": self.score_label,
            **simulated,
            "reblur_psnr": float(np.mean(psnrs)),
            "reblur_psnr_identity": float(np.mean(identity)),
            "hf_energy_ratio": float((hf_out**2).sum() / (hf_e**2).sum().clamp_min(1e-12)),
        }
        if record_history:
            self.last_val_step = self.step
            self.history.append({"kind": "validation", **scores})
            if self._beats_best(scores):
                self.best = dict(scores)
                self.best_state = self._snapshot()
        return scores

    def _beats_best(self, scores: Mapping[str, Any]) -> bool:
        """The guard: new weights must beat the best so far *and* the starting model by
        ``min_gain_db`` on the selection score, so noise in the score cannot swap in a model
        that is no better than the one the user started from."""
        if not self.best:
            return True
        start = _score(self.baseline) + self.settings.min_gain_db
        return scores["score"] > _score(self.best) and scores["score"] >= start

    def preview(self) -> dict[str, Any]:
        out = self._outputs()[0, 0].cpu().numpy().astype(np.float32)
        return {"image": out, "input": self.val_crop.astype(np.float32), "box": self.val_box,
                "source": self.val_image, "norm_range": self.val_range}

    # ------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        base = self.base_info
        meta: dict[str, Any] = {
            "name": (self.out_path.stem if self.out_path else f"{base.get('name', 'model')}-ft"),
            "normalization": self.normalization.to_dict(),
            "finetune": {
                "settings": self.settings.to_dict(),
                "mode": self.settings.mode,
                "images": self.image_names,
                "image_fingerprint": self.fingerprint,
                "validation_crop": {"image": self.val_image, "box_yxhw": list(self.val_box)},
                "composition": self.composition,
                "trainable_parameters": self.n_trainable,
                "replay": self.replay_description,
                "replay_simulation": self.replay_simulation.to_dict(),
                "image_noise_sigma": self.noise_sigma,
                "score": {"name": self.score_label, **self.score.describe()},
                "reblur_defocus_um": list(self.bank.defocus_um or ()),
                "steps_done": self.step,
                "best": self.best,
                "baseline": self.baseline,
                "base_model": {k: base.get(k) for k in ("name", "source", "sha256")
                               if base.get(k) is not None},
                "stopped": self.stopped,
            },
            "simulation": base.get("simulation") or {"preset": self.simulation.name,
                                                     **self.simulation.to_dict()},
            # The base model's metrics do not describe these weights: keep them apart.
            "metrics": {"finetune_validation": self.best,
                        "base_model_metrics": base.get("metrics")},
            "description": (f"{base.get('name', 'model')} fine-tuned ({self.settings.mode}) on "
                            f"{len(self.image_names)} unlabeled images"),
        }
        if "training" in base:
            meta["training"] = base["training"]
        return meta

    def _write_checkpoint(self) -> Path | None:
        if self.out_path is None:
            return None
        from ..models.checkpoint import save_checkpoint

        current = self._snapshot()
        try:
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            return save_checkpoint(self.out_path, self.model, metadata=self._metadata())
        finally:
            self.model.load_state_dict(current)

    def save(self) -> Iterator[TrainUpdate]:
        total = self.settings.steps
        path = self._write_checkpoint()
        if path is not None:
            self.out_path = path
            yield TrainUpdate(UpdateKind.CHECKPOINT, self.step, total,
                              {"path": str(path), "kind": "best", **self.best})
        if self.state_path is not None:
            atomic_torch_save(
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "kind": "finetune",
                    "step": self.step,
                    "model": self.model.state_dict(),
                    "best_model": self.best_state or {},
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                    "rng": _common.rng_state(),
                    "history": json.dumps(self.history, default=_common._json_default),
                    "best": json.dumps(self.best),
                    "baseline": json.dumps(self.baseline),
                    "settings": json.dumps(self.settings.to_dict()),
                    "fingerprint": self.fingerprint,
                },
                self.state_path,
            )
            yield TrainUpdate(UpdateKind.CHECKPOINT, self.step, total,
                              {"path": str(self.state_path), "kind": "state"})

    def _load_state(self) -> None:
        assert self.state_path is not None
        state = load_state_file(self.state_path, "finetune")
        saved = FinetuneConfig.from_dict(json.loads(state["settings"]))
        differing = [f.name for f in dataclasses.fields(FinetuneConfig)
                     if f.name not in _RUN_CONTROL
                     and getattr(saved, f.name) != getattr(self.settings, f.name)]
        if differing:
            raise ValueError(
                f"cannot resume {self.state_path}: settings differ in {differing}; only "
                f"{sorted(_RUN_CONTROL)} may change"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"cannot resume {self.state_path}: it was made with other images"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_state = dict(state["best_model"]) or None
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state["best"])
        self.baseline = json.loads(state["baseline"])
        _common.set_rng_state(state["rng"])
        self.last_val_step = max((h["step"] for h in self.history if h["kind"] == "validation"),
                                 default=-1)
        self._resumed = True
        logger.info("resumed fine-tuning at step %d of %d", self.step, self.settings.steps)

    def verdict(self) -> tuple[bool, str]:
        """Whether the starting weights were kept, and why, in words for the panel and CLI."""
        name = self.score_label
        base, best = _score(self.baseline), _score(self.best)
        if not self.best.get("step"):
            seen = [float(h["score"]) for h in self.history
                    if h.get("kind") == "validation" and h.get("step") and "score" in h]
            top = f"; the best checkpoint reached {max(seen) - base:+.2f} dB" if seen else ""
            return True, (f"kept the starting model: no checkpoint beat it by "
                          f"{self.settings.min_gain_db:g} dB on the {name} "
                          f"({base:.2f} dB){top}")
        return False, (f"fine-tuned weights of step {self.best['step']}: {name} "
                       f"{base:.2f} → {best:.2f} dB ({best - base:+.2f} dB)")

    def finish(self) -> FinetuneResult:
        self.restore_best()
        kept_start, verdict = self.verdict()
        logger.info("fine-tuning ended (%s): %s", self.stopped, verdict)
        return FinetuneResult(
            model=self.model,
            history=copy.deepcopy(self.history),
            best=dict(self.best),
            baseline=dict(self.baseline),
            checkpoint=self.out_path if self.out_path and self.out_path.exists() else None,
            stopped=self.stopped,
            kept_start=kept_start,
            verdict=verdict,
        )

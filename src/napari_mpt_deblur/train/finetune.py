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

The steps are taken by the trainer that supervised training uses
(:mod:`~napari_mpt_deblur.train.engine`); one run's data, loss, validation, guard and files are
:class:`~napari_mpt_deblur.train._finetune_run._FinetuneRun`, and this module keeps the settings,
the presets and the two entry points.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._dataclass_io import composed_of_parts, renamed_fields
from ..models.conditioning import assume_optics
from ._common import CancelLike
from ._finetune_run import (  # noqa: F401 - _FinetuneRun, _reblur_bank: tests reach them here
    SCORE_SEED,
    FinetuneResult,
    _FinetuneRun,
    _reblur_bank,
)
from .config import (  # the choices live in the torch-free config module (the CLI's parser)
    FINETUNE_MODES,
    REPLAY_OPTICS,
    SELECTION_SCORES,
    TRAINABLE_CHOICES,
    EfcrConfig,
    OpticsHints,
    OptimConfig,
    RunConfig,
)
from .engine import Every, StepLoop
from .losses import PIXEL_LOSSES
from .optics_domain import estimate_noise_sigma
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



@renamed_fields(refractive_index="immersion_index")
@composed_of_parts
@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
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
    optim : OptimConfig
        The optimiser, :class:`~napari_mpt_deblur.train.config.OptimConfig` (lr, min_lr,
        warmup_steps, weight_decay, schedule, grad_clip, amp, compile; read and written flat:
        ``cfg.lr``, ``lr=``); by default a small ``lr`` (5e-5), 10 warm-up steps and no weight
        decay: this adapts a trained model.
    efcr : EfcrConfig
        EFCR, :class:`~napari_mpt_deblur.train.config.EfcrConfig` (efcr_weight,
        efcr_rel_weight, reblur_defocus_dof; flat like ``optim``). The default
        ``reblur_defocus_dof`` (2-8 depths of field ``λ·n/NA²``) re-blurs about as strongly as
        the defocus being corrected: with the weaker 0.5-2 the network learned to undo only
        slight blur and fine-tuning lowered PSNR on held-out pairs (docs/finetuning.md,
        benchmarks/finetune_domain_shift.py).
    replay_fraction : float
        Fraction of the labeled batch drawn as simulated replay pairs ("full" and "efcr").
    paired_fraction : float
        Fraction of the labeled batch drawn from user pairs, when given.
    pixel_loss : {"l1", "mse", "charbonnier", "psnr"}
        Pixel loss.
    mode : {"full", "reblur_only", "efcr", "replay"}
        Which parts are used (module notes).
    optics : OpticsHints
        Optical hints for the re-blur operator, :class:`~napari_mpt_deblur.simulate.optics.
        OpticsHints` (pixel_size_um, numerical_aperture, wavelength_nm, immersion_index; flat
        like ``optim``); ``None`` takes them from the model's simulation preset.
        ``refractive_index``, the old name of ``immersion_index``, still loads
        (``DeprecationWarning``).
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
    max_level_loss_db : float
        Guard: fine-tuned weights are refused when any third of the selection score's defocus
        range (in focus to the deepest) is worse than with the starting weights by more than
        this, however much the mean gains: the user's images may all lie in that third.
    score_pairs : int
        Number of fixed simulated pairs behind the selection score.
    selection_score : {"bundled-images", "own-images"}
        Content of the selection score's pairs, the score that decides which weights are kept.
        "bundled-images" (default): the package's real in-focus images
        (:func:`~napari_mpt_deblur.train.optics_domain.bundled_infocus_sources`).
        "own-images": the start model's output on the user's images, re-blurred at the replay
        optics (:func:`~napari_mpt_deblur.train.optics_domain.start_output_sources`); it has
        the user's content but not their sharp truth, and on the domain-shift benchmark it
        ranked checkpoints worse than "bundled-images" (docs/finetuning.md, 2026-12-06).
    match_camera : bool
        Set the photon count of replay pairs and score pairs so they are as noisy as the user's
        images (:func:`~napari_mpt_deblur.train.optics_domain.match_camera`).
    trainable : {"all", "late", "norms", "optics"}
        Which parameters adapt (:mod:`~napari_mpt_deblur.train.trainable`): all, the last third
        of the network's blocks, normalisation weights and biases, or an optics-conditioned
        model's optics conditioning only.
    val_crop_size : int
        Side of the held-out validation crop (rounded down to the model's multiple).
    val_every, preview_every, state_every : int
        Steps between validations, previews and resumable-state saves (0: never).
    device : str
        Torch device or "auto".
    seed : int
        Seeds every random choice (resumable step by step).
    """

    steps: int = 300
    time_budget_s: float | None = None
    batch_size: int = 2
    patch_size: int = 128
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=10, weight_decay=0.0))
    efcr: EfcrConfig = field(
        default_factory=lambda: EfcrConfig(reblur_defocus_dof=(2.0, 4.0, 6.0, 8.0)))
    replay_fraction: float = 0.5
    paired_fraction: float = 0.25
    pixel_loss: str = "l1"
    mode: str = "full"
    optics: OpticsHints = field(default_factory=OpticsHints)
    reblur_kernel_size: int = 63
    reblur_noise: bool = True
    simulation: str | None = None
    replay_optics: str = "auto"
    max_defocus_um: float | None = None
    min_gain_db: float = 0.05
    max_level_loss_db: float = 0.1
    score_pairs: int = 16
    selection_score: str = "bundled-images"
    match_camera: bool = True
    trainable: str = "all"
    val_crop_size: int = 256
    val_every: int = 25
    preview_every: int = 50
    state_every: int = 50
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FINETUNE_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(map(repr, FINETUNE_MODES))}; got {self.mode!r}"
            )
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(
                f"pixel_loss must be one of {', '.join(map(repr, PIXEL_LOSSES))}; "
                f"got {self.pixel_loss!r}"
            )
        if self.selection_score not in SELECTION_SCORES:
            raise ValueError(f"selection_score must be one of "
                             f"{', '.join(map(repr, SELECTION_SCORES))}; "
                             f"got {self.selection_score!r}")
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
        if not self.max_level_loss_db >= 0:
            raise ValueError(f"max_level_loss_db must be >= 0; got {self.max_level_loss_db!r}")
        for name in ("steps", "batch_size", "patch_size", "val_crop_size", "score_pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name in ("val_every", "preview_every", "state_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
        for name in ("replay_fraction", "paired_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None; got {self.time_budget_s!r}")
        size = self.reblur_kernel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
            raise ValueError(f"reblur_kernel_size must be an odd integer >= 3; got {size!r}")

    @property
    def uses_user_optics(self) -> bool:
        """Whether replay pairs and the selection score are simulated at the optical hints."""
        return self.replay_optics != "model" and self.optics.has_psf

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
    device: torch.device | None = None,
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
    device : torch.device, optional
        The device ``settings.device`` already resolved to, taken as it is (the Fine-tune
        panel resolves it once per run); default: resolved here.

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
    # An optics-conditioned model is trained, scored and previewed at the optics the run is
    # about (the user's, when the replay is simulated at them), as it will be used.
    run_optics = settings.optics if settings.uses_user_optics else None
    with assume_optics(model, run_optics):
        run = None
        try:
            run = _FinetuneRun(model, unlabeled_images, paired=paired, settings=settings,
                               replay_images=replay_images, out_path=out_path,
                               state_path=state_path, resume=resume, device=device)
            yield from run.start_updates()
            loop = StepLoop(
                run.trainer, run.loss, start=run.step, total=total, cancel=cancel,
                time_budget_s=settings.time_budget_s,
                every=(Every(settings.val_every, run.validation_updates, at_last=True),
                       Every(settings.preview_every, run.preview_updates),
                       Every(settings.state_every, run.save, at_last=False)),
            )
            for update in loop:
                if update.kind is UpdateKind.LOSS:
                    run.record_step(update)
                yield update
            assert loop.stopped is not None
            if not settings.val_every or run.last_val_step != run.step:
                yield from run.validation_updates(run.step)
            run.stopped = loop.stopped.reason
            yield from run.save()
            result = run.finish()
            yield TrainUpdate(UpdateKind.DONE, run.step, total, {
                "reason": run.stopped, "best": result.best, "baseline": result.baseline,
                "kept_start": result.kept_start, "verdict": result.verdict,
                "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                "result": result,
            })
        except GeneratorExit:
            # The consumer stopped iterating (e.g. napari worker.quit()): keep the best weights.
            if run is not None:
                run.restore_best()
            raise
        except Exception as exc:
            yield TrainUpdate(UpdateKind.ERROR, run.step if run is not None else 0, total, exc)
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

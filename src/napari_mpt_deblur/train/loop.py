"""Supervised training on simulated (and real) pairs, with EFCR, in resumable chunks.

:func:`fit` trains a model from a :class:`~napari_mpt_deblur.train.config.TrainConfig`. A run
lives in ``out_dir``:

``config.json``
    The config of the latest invocation.
``log.jsonl``
    One JSON object per logged step, validation, checkpoint and stop.
``best.safetensors``
    Project checkpoint (:func:`~napari_mpt_deblur.models.checkpoint.save_checkpoint`) of the
    best validation PSNR so far, with training config, simulation ranges, metrics and a data
    description in its header.
``last.safetensors``
    The weights when the latest invocation stopped.
``state.pt``
    Resumable state: model, optimiser, loss scaler, step, RNG states and history, written
    atomically and loadable with ``torch.load(weights_only=True)``.
``state-NNNNN.pt``
    With ``keep_every``, copies of that state at every ``keep_every`` steps, for choosing a
    checkpoint afterwards on data the trainer does not validate on.

Runs are meant to be cut into chunks (``time_budget_s``) and continued with ``resume=True``:
the learning rate is a pure function of the step and each step's batch and random choices are
drawn from generators seeded by ``(seed, step)``, so on the same device and software a resumed
run reproduces an uninterrupted one bit for bit.

The fine-tuning engine for a lab's own unlabeled images lives in
:mod:`napari_mpt_deblur.train.finetune` and is re-exported here.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._device import get_device, seed_everything
from ..models.htcsf import multiscale_loss
from . import _common
from ._common import (
    METRIC_CONVENTION,
    STATE_FORMAT,
    STATE_VERSION,
    CancelLike,
    JsonlLog,
    atomic_torch_save,
    autocast,
    is_cancelled,
    load_state_file,
    lr_at,
    parameter_groups,
    predict_batches,
    psnr_ssim,
    resolve_amp,
    set_lr,
    step_generator,
)
from .config import RUN_CONTROL_FIELDS, TrainConfig
from .finetune import FinetuneConfig, finetune, finetune_iter
from .losses import efcr_terms, pixel_loss
from .reblur import ReblurBank, build_reblur_bank, make_negatives, make_reblurred_set
from .updates import TrainUpdate, UpdateKind

__all__ = [
    "FinetuneConfig",
    "History",
    "build_model",
    "evaluate_pairs",
    "finetune",
    "finetune_iter",
    "fit",
    "reblur_bank_for_simulation",
    "simulation_from_config",
]

logger = logging.getLogger(__name__)

Callback = Callable[[TrainUpdate], None]
Progress = Callable[[int, int, dict[str, Any]], None]

_MAX_BAD_STEPS = 10


@dataclass
class History:
    """What happened in a run (accumulated over resumed chunks).

    Attributes
    ----------
    train : list of dict
        Logged training steps: ``step``, ``loss``, its parts, ``lr``, ``grad_norm``.
    validation : list of dict
        Validations: ``step``, ``psnr``, ``ssim`` (see ``metric_convention``) and per-defocus
        PSNR.
    baseline : dict or None
        PSNR/SSIM of the blurred inputs of the validation set (the "do nothing" score).
    step : int
        Optimiser steps completed.
    total_steps : int
        Steps planned.
    best_step, best_psnr : int or None, float or None
        Step and validation PSNR of the best checkpoint.
    best_checkpoint, last_checkpoint, state_path : str or None
        Files written.
    stopped : str
        Why the latest invocation ended: "completed", "cancelled", "time_budget" or "error".
    elapsed_s : float
        Wall time of all invocations together.
    metric_convention : str
        How PSNR/SSIM are computed.
    """

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    step: int = 0
    total_steps: int = 0
    best_step: int | None = None
    best_psnr: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    state_path: str | None = None
    stopped: str = "not started"
    elapsed_s: float = 0.0
    metric_convention: str = METRIC_CONVENTION

    @property
    def losses(self) -> list[float]:
        """Logged training losses in step order."""
        return [float(r["loss"]) for r in self.train]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------------------------
# Helpers that the CLI and the fine-tuning engine share
# --------------------------------------------------------------------------------------------


def build_model(config: TrainConfig) -> nn.Module:
    """Create the untrained model of ``config`` (preset, overrides and routing)."""
    from ..models._registry import create_model

    overrides = dict(config.model_overrides)
    overrides.setdefault("routing", config.routing)
    try:
        return create_model(config.model, **overrides)
    except (TypeError, ValueError) as exc:
        if "routing" in str(exc) and "routing" not in config.model_overrides:
            overrides.pop("routing")
            logger.info("model %s has no routing option; building it without", config.model)
            return create_model(config.model, **overrides)
        raise


def simulation_from_config(config: TrainConfig) -> Any:
    """The :class:`~napari_mpt_deblur.simulate.SimulationConfig` of a training config."""
    from ..simulate import get_simulation_preset

    sim = get_simulation_preset(config.simulation)
    if config.simulation_overrides:
        sim = sim.replace(**config.simulation_overrides)
    return sim


def reblur_bank_for_simulation(simulation: Any, defocus_dof: Iterable[float]) -> ReblurBank:
    """Small physical re-blur PSFs for the mid-range optics of a simulation config."""
    na = float(np.mean(simulation.numerical_aperture_range))
    if simulation.wavelength_nm_choices:
        wavelength = float(np.mean(simulation.wavelength_nm_choices))
    else:
        wavelength = float(np.mean(simulation.wavelength_nm_range))
    return build_reblur_bank(
        pixel_size_um=float(simulation.pixel_size_um),
        numerical_aperture=na,
        wavelength_nm=wavelength,
        refractive_index=float(simulation.immersion_index),
        defocus_dof=tuple(defocus_dof),
    )


def evaluate_pairs(
    model: nn.Module,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    defocus_um: Iterable[float] | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Mean PSNR/SSIM of ``model`` on normalised pairs (N, 1, H, W), convention in
    ``METRIC_CONVENTION``; with ``defocus_um`` also the PSNR per third of the defocus range."""
    device = device or next(model.parameters()).device
    pred = predict_batches(model, blurred, device=device, amp_dtype=amp_dtype,
                           batch_size=batch_size)
    return _scores(pred.numpy(), sharp.numpy(), defocus_um)


def _scores(pred: np.ndarray, sharp: np.ndarray, defocus_um: Iterable[float] | None
            ) -> dict[str, Any]:
    pairs = [psnr_ssim(p[0], s[0]) for p, s in zip(pred, sharp)]
    psnr = np.array([a for a, _ in pairs])
    ssim = np.array([b for _, b in pairs])
    out: dict[str, Any] = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}
    if defocus_um is not None:
        d = np.abs(np.asarray(list(defocus_um), dtype=np.float64))
        if d.size == psnr.size and np.isfinite(d).all() and d.max() > d.min():
            edges = np.linspace(d.min(), d.max(), 4)
            bins = np.clip(np.digitize(d, edges[1:-1]), 0, 2)
            out["psnr_by_defocus_um"] = {
                f"{edges[b]:.1f}-{edges[b + 1]:.1f}": float(psnr[bins == b].mean())
                for b in range(3) if (bins == b).any()
            }
    return out


def _emit(callbacks: list[Callback], update: TrainUpdate) -> None:
    for cb in callbacks:
        cb(update)


def _as_callbacks(callbacks: Callback | Iterable[Callback] | None) -> list[Callback]:
    if callbacks is None:
        return []
    if callable(callbacks):
        return [callbacks]
    return list(callbacks)


def _as_train_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str]
                     ) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_file(config)
    raise TypeError(
        f"config must be a TrainConfig, a mapping or a config file path; got {type(config)}"
    )


def _check_resume_compatible(saved: TrainConfig, current: TrainConfig) -> None:
    differing = [
        name for name in TrainConfig.field_names()
        if name not in RUN_CONTROL_FIELDS and getattr(saved, name) != getattr(current, name)
    ]
    if differing:
        raise ValueError(
            f"cannot resume: the config differs from the saved run in {differing}; only "
            f"{sorted(RUN_CONTROL_FIELDS)} may change between chunks"
        )
    if saved.steps != current.steps:
        logger.warning("resuming with steps=%d instead of %d: the cosine schedule is stretched",
                       current.steps, saved.steps)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


@dataclass
class _RunData:
    builder: Any
    val: Any
    bank: ReblurBank | None
    simulation: Any
    description: dict[str, Any]


def _weighted_sources(
    cfg: TrainConfig, source_dirs: tuple[str, ...], simulation: Any
) -> tuple[list[Path], list[Any], list[float] | None]:
    """Source files, their planes, and (with ``cfg.source_weights``) each plane's weight.

    An entry's weight is shared among its planes in proportion to their area; a file named by
    two entries is read once, for the first.
    """
    from .data import find_images, load_sources

    if not cfg.source_weights:
        files = find_images(source_dirs, resolve=cfg.resolve_path)
        return files, load_sources(files, percentiles=simulation.source_percentiles), None
    files: list[Path] = []
    sources: list[Any] = []
    weights: list[float] = []
    seen: set[str] = set()
    for entry, weight in zip(source_dirs, cfg.source_weights):
        found = [f for f in find_images([entry], resolve=cfg.resolve_path)
                 if str(f.resolve()) not in seen]
        seen.update(str(f.resolve()) for f in found)
        if not found or not float(weight) > 0:
            continue
        planes = load_sources(found, percentiles=simulation.source_percentiles)
        area = sum(p.plane.size for p in planes)
        files.extend(found)
        sources.extend(planes)
        weights.extend(float(weight) * p.plane.size / area for p in planes)
    if not sources:
        raise ValueError("source_weights leaves no training source with a positive weight")
    return files, sources, weights


def _prepare_data(cfg: TrainConfig, patch_multiple: int) -> _RunData:
    from .data import (
        BatchBuilder,
        PairSimulator,
        RealPairs,
        UnlabeledPatches,
        build_validation_set,
        find_images,
        load_sources,
        read_planes,
    )

    for name, size in (("patch_size", cfg.patch_size),
                       ("val_patch_size", cfg.effective_val_patch_size)):
        if size % patch_multiple:
            raise ValueError(
                f"{name} must be a multiple of the model's size_multiple ({patch_multiple}); "
                f"got {size}"
            )
    simulation = simulation_from_config(cfg)
    description: dict[str, Any] = {"simulation_preset": cfg.simulation}
    simulator = None
    source_dirs = (*cfg.train_dirs, *cfg.extra_dirs)
    if source_dirs:
        files, sources, weights = _weighted_sources(cfg, source_dirs, simulation)
        simulator = PairSimulator(sources, simulation, cfg.patch_size, weights=weights)
        description["train_sources"] = [str(f) for f in files]
        if cfg.source_weights:
            description["source_probabilities"] = {
                s.name: round(float(p), 6) for s, p in zip(sources, simulator.probabilities)
            }
    real = None
    if cfg.paired_dirs:
        real = RealPairs.from_folders([cfg.resolve_path(d) for d in cfg.paired_dirs],
                                      cfg.patch_size)
        description["paired_sources"] = [str(cfg.resolve_path(d)) for d in cfg.paired_dirs]
    n_real = 0
    if real is not None:
        n_real = (cfg.batch_size if simulator is None
                  else round(cfg.batch_size * cfg.paired_fraction))
    unlabeled = None
    n_unlabeled = 0
    if cfg.unlabeled_dirs:
        files = find_images(cfg.unlabeled_dirs, resolve=cfg.resolve_path)
        planes = [p for f in files for p in read_planes(f)]
        unlabeled = UnlabeledPatches(planes, cfg.patch_size)
        n_unlabeled = cfg.unlabeled_batch_size
        description["unlabeled_sources"] = [str(f) for f in files]
    builder = BatchBuilder(
        seed=cfg.seed, stream=0, simulator=simulator, n_simulated=cfg.batch_size - n_real,
        real=real, n_real=n_real, unlabeled=unlabeled, n_unlabeled=n_unlabeled,
    )
    if cfg.val_dirs:
        val_files = find_images(cfg.val_dirs, resolve=cfg.resolve_path)
        val_sources = load_sources(val_files, percentiles=simulation.source_percentiles)
        description["val_sources"] = [str(f) for f in val_files]
    elif simulator is not None:
        logger.warning("no val_dirs: validating on training images (scores are optimistic)")
        val_sources = simulator.sources
        description["val_sources"] = "training images (no val_dirs)"
    else:
        raise ValueError("val_dirs is empty and there are no in-focus training images")
    val = build_validation_set(val_sources, simulation, n_patches=cfg.num_val_patches,
                               patch_size=cfg.effective_val_patch_size, seed=cfg.seed)
    description["validation"] = val.describe()
    bank = None
    if cfg.efcr_weight > 0 or (cfg.reblur_weight > 0 and unlabeled is not None):
        bank = reblur_bank_for_simulation(simulation, cfg.reblur_defocus_dof)
        description["reblur_defocus_um"] = list(bank.defocus_um or ())
    return _RunData(builder, val, bank, simulation, description)


def _train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    cfg: TrainConfig,
    step: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    bank: ReblurBank | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, float] | None:
    """One optimiser step; returns the logged values, or None when the loss was not finite."""
    model.train()
    lr = lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
               total_steps=cfg.steps, schedule=cfg.schedule)
    set_lr(optimizer, lr)
    gen = step_generator(cfg.seed, 1, step)
    parts: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=device)
    restored = blurred = sharp = None
    if "blurred" in batch:
        blurred = batch["blurred"].to(device, non_blocking=True)
        sharp = batch["sharp"].to(device, non_blocking=True)
        if hasattr(model, "forward_multiscale"):
            # Multi-scale models (HTCSF) are supervised at every scale, as their paper trains
            # them; "pixel" stays the full-resolution term so logs compare across models.
            with autocast(device, amp_dtype):
                scales = model.forward_multiscale(blurred)
            restored = scales[-1]
            parts["pixel"] = pixel_loss(restored, sharp, cfg.pixel_loss)
            parts["multiscale"] = multiscale_loss(
                scales, sharp.float(),
                loss_fn=lambda p, t: pixel_loss(p, t, cfg.pixel_loss),
            )
            loss = loss + parts["multiscale"]
        else:
            with autocast(device, amp_dtype):
                restored = model(blurred)
            parts["pixel"] = pixel_loss(restored, sharp, cfg.pixel_loss)
            loss = loss + parts["pixel"]
    unlabeled = batch.get("unlabeled")
    members: list[torch.Tensor] = []
    if unlabeled is not None and bank is not None:
        unlabeled = unlabeled.to(device, non_blocking=True)
        reblurred, members = make_reblurred_set(unlabeled, bank, generator=gen)
        if cfg.reblur_weight > 0:
            with autocast(device, amp_dtype):
                out = model(reblurred)
            parts["reblur"] = pixel_loss(out, unlabeled, cfg.pixel_loss)
            loss = loss + cfg.reblur_weight * parts["reblur"]
    if cfg.efcr_weight > 0 and bank is not None and (restored is not None or members):
        negatives = make_negatives(blurred, bank, generator=gen) if blurred is not None else []
        unlabeled_restored = None
        if members:
            with autocast(device, amp_dtype):
                unlabeled_restored = model(unlabeled)
        terms = efcr_terms(
            restored, sharp, blurred, negatives=negatives,
            unlabeled_restored=unlabeled_restored,
            unlabeled=unlabeled if members else None,
            unlabeled_reblurred=members, rel_weight=cfg.efcr_rel_weight,
        )
        parts["efcr"] = terms.cr
        if members:
            parts["efcr_rel"] = terms.rel
        loss = loss + cfg.efcr_weight * terms.cr
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return None
    scaler.scale(loss).backward()
    grad_norm = math.nan
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    scaler.step(optimizer)
    scaler.update()
    record = {"loss": float(loss.detach()), "lr": lr, "grad_norm": grad_norm}
    record.update({k: float(v.detach()) for k, v in parts.items()})
    return record


def fit(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    resume: bool = False,
    time_budget_s: float | None = None,
    progress: Progress | None = None,
    cancel: CancelLike = None,
    callbacks: Callback | Iterable[Callback] | None = None,
) -> History:
    """Train a model on simulated (and optional real) pairs; resumable, budgeted, cancellable.

    Parameters
    ----------
    config : TrainConfig, dict or path
        The run (a JSON/YAML file path is read with :meth:`TrainConfig.from_file`).
    model : nn.Module, optional
        Start from this network (e.g. pretrained weights) instead of a fresh
        ``create_model(config.model, ...)``. On resume the saved weights replace its weights.
    resume : bool
        Continue from ``out_dir/state.pt``. Without it, an ``out_dir`` that already holds a
        state raises ``FileExistsError`` rather than silently starting over.
    time_budget_s : float, optional
        Overrides ``config.time_budget_s``: stop cleanly (state saved) before this many seconds
        of this invocation have passed, judged from the duration of recent steps.
    progress : callable(step, total, info), optional
        Called after every step with the logged values.
    cancel : threading.Event or callable, optional
        Checked before every step; when set the run stops, saves its resumable state and keeps
        the best checkpoint.
    callbacks : callable(TrainUpdate) or list of them, optional
        Receive LOSS, VALIDATION, CHECKPOINT and DONE updates (and ERROR before an exception
        propagates).

    Returns
    -------
    History
        ``stopped`` says why the invocation ended; ``best_checkpoint`` names the best weights.

    Notes
    -----
    Loss: ``pixel_loss(f(B), S) + efcr_weight · CR`` (+ ``reblur_weight`` · re-blur loss on
    unlabeled patches). Unlike the authors' release, CR carries gradients. Validation scores use
    ``METRIC_CONVENTION`` on a fixed simulated set from ``val_dirs``.
    """
    from ..engine.normalize import IntensityNormalization
    from ..models.checkpoint import save_checkpoint

    cfg = _as_train_config(config)
    if time_budget_s is not None:
        cfg = cfg.replace(time_budget_s=float(time_budget_s))
    cbs = _as_callbacks(callbacks)
    out = Path(os.path.expanduser(cfg.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    best_path = out / "best.safetensors"
    last_path = out / "last.safetensors"
    log = JsonlLog(out / "log.jsonl")

    state = None
    if state_path.exists():
        if not resume:
            raise FileExistsError(
                f"{out} already holds a training state ({state_path.name}); pass resume=True "
                "(--resume) to continue it, or choose another out_dir"
            )
        state = load_state_file(state_path, "fit")
        _check_resume_compatible(TrainConfig.from_dict(json.loads(state["config"])), cfg)
    elif resume:
        logger.warning("resume requested but %s has no state; starting a new run", out)

    device = get_device(cfg.device)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg)
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        logger.info("all parameters were frozen; unfreezing them for training")
        model.requires_grad_(True)
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    data = _prepare_data(cfg, multiple)
    if data.bank is not None:
        data.bank.to(device)

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.999))
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # The compiled wrapper shares the parameters; validation and checkpoints use ``model``.
    train_model = torch.compile(model) if cfg.compile else model
    if amp_dtype is not None or cfg.compile:
        logger.info("training forward: %s%s", "compiled, " if cfg.compile else "",
                    f"autocast {str(amp_dtype).removeprefix('torch.')}" if amp_dtype else "float32")
    history = History(total_steps=cfg.steps)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = History.from_dict(json.loads(state["history"]))
        history.total_steps = cfg.steps
        start = int(state["step"])
        _common.set_rng_state(state["rng"])
        logger.info("resuming %s at step %d of %d", out, start, cfg.steps)
    cfg.save(out / "config.json")

    normalization = IntensityNormalization().to_dict()
    val_defocus = [p.get("defocus_um", math.nan) for p in data.val.params]
    if history.baseline is None:
        history.baseline = _scores(data.val.blurred.numpy(), data.val.sharp.numpy(), val_defocus)
        log.write({"event": "baseline", "step": start, **history.baseline})

    def metadata(metrics: dict[str, Any], step: int) -> dict[str, Any]:
        return {
            "name": out.name,
            "description": f"{cfg.model} trained on simulated '{cfg.simulation}' defocus pairs",
            "normalization": normalization,
            "training": {"config": cfg.to_dict(), "step": step, "data": data.description,
                         "init": (getattr(model, "info", None) or {}).get("source")},
            "simulation": {"preset": cfg.simulation, **data.simulation.to_dict()},
            "metrics": {**metrics, "baseline_blurred": history.baseline,
                        "convention": METRIC_CONVENTION},
        }

    def save_state(step: int) -> None:
        history.state_path = str(state_path)
        atomic_torch_save(
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "kind": "fit",
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
                              "total_steps": cfg.steps, "lr": cfg.lr, "min_lr": cfg.min_lr},
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": _common.rng_state(),
                "history": json.dumps(history.to_dict(), default=_common._json_default),
                "config": json.dumps(cfg.to_dict()),
            },
            state_path,
        )
        log.write({"event": "state", "step": step, "path": str(state_path)})
        if cfg.keep_every and step % cfg.keep_every == 0:
            kept = out / f"state-{step:05d}.pt"
            _common.atomic_copy(state_path, kept)
            log.write({"event": "state", "step": step, "path": str(kept), "kept": True})
        _emit(cbs, TrainUpdate(UpdateKind.CHECKPOINT, step, cfg.steps,
                               {"path": str(state_path), "kind": "state"}))

    def validate(step: int) -> dict[str, Any]:
        scores = evaluate_pairs(model, data.val.blurred, data.val.sharp, device=device,
                                amp_dtype=amp_dtype, defocus_um=val_defocus)
        record = {"step": step, **scores}
        history.validation.append(record)
        log.write({"event": "validation", **record})
        _emit(cbs, TrainUpdate(UpdateKind.VALIDATION, step, cfg.steps, dict(scores)))
        if history.best_psnr is None or scores["psnr"] > history.best_psnr:
            history.best_psnr, history.best_step = scores["psnr"], step
            save_checkpoint(best_path, model, metadata=metadata(scores, step))
            history.best_checkpoint = str(best_path)
            log.write({"event": "best", "step": step, "psnr": scores["psnr"],
                       "path": str(best_path)})
            _emit(cbs, TrainUpdate(UpdateKind.CHECKPOINT, step, cfg.steps,
                                   {"path": str(best_path), "kind": "best", **scores}))
        return scores

    t0 = time.monotonic()
    elapsed_before = history.elapsed_s
    recent = collections.deque(maxlen=20)
    stopped = "completed"
    done = start
    bad_steps = 0
    loader = None
    try:
        from .data import make_loader

        loader = make_loader(data.builder, start=start, stop=cfg.steps,
                             num_workers=cfg.num_workers, seed=cfg.seed)
        batches = iter(loader)
        last_val: dict[str, Any] = {}
        for step in range(start, cfg.steps):
            if is_cancelled(cancel):
                stopped = "cancelled"
                break
            elapsed = time.monotonic() - t0
            if cfg.time_budget_s is not None:
                # Stop before a step (with its validation/save) would overrun the budget.
                typical = max(recent) if recent else 0.0
                if elapsed + typical > cfg.time_budget_s:
                    stopped = "time_budget"
                    break
            t_step = time.monotonic()
            batch = next(batches)
            record = _train_step(train_model, batch, cfg=cfg, step=step, optimizer=optimizer,
                                 scaler=scaler, bank=data.bank, device=device,
                                 amp_dtype=amp_dtype)
            done = step + 1
            if record is None:
                bad_steps += 1
                logger.warning("step %d: non-finite loss, update skipped", done)
                if bad_steps >= _MAX_BAD_STEPS:
                    raise FloatingPointError(
                        f"{bad_steps} consecutive non-finite losses at step {done}; lower lr "
                        "or disable amp"
                    )
                continue
            bad_steps = 0
            record["step"] = done
            if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
                record["time_s"] = round(elapsed_before + time.monotonic() - t0, 3)
                history.train.append(record)
                log.write({"event": "train", **record})
            _emit(cbs, TrainUpdate(UpdateKind.LOSS, done, cfg.steps, dict(record)))
            if done % cfg.val_every == 0 or done == cfg.steps:
                last_val = validate(done)
            if done % cfg.ckpt_every == 0 and done != cfg.steps:
                save_state(done)
            history.step = done
            recent.append(time.monotonic() - t_step)
            if progress is not None:
                info = {k: v for k, v in record.items() if k != "step"}
                if last_val:
                    info["val_psnr"] = last_val["psnr"]
                progress(done, cfg.steps, info)
        history.step = done
        history.stopped = stopped
        history.elapsed_s = elapsed_before + time.monotonic() - t0
        if not history.validation or history.validation[-1]["step"] != done:
            if stopped == "completed" and done > 0:
                validate(done)
        save_checkpoint(last_path, model, metadata=metadata(
            history.validation[-1] if history.validation else {}, done))
        history.last_checkpoint = str(last_path)
        save_state(done)
    except BaseException as exc:
        history.stopped = "error"
        log.write({"event": "error", "step": done, "error": f"{type(exc).__name__}: {exc}"})
        _emit(cbs, TrainUpdate(UpdateKind.ERROR, done, cfg.steps, exc))
        raise
    finally:
        del loader
    summary = {"reason": stopped, "step": done, "best_psnr": history.best_psnr,
               "best_step": history.best_step, "best_checkpoint": history.best_checkpoint,
               "elapsed_s": round(history.elapsed_s, 3)}
    log.write({"event": "stop", **summary})
    _emit(cbs, TrainUpdate(UpdateKind.DONE, done, cfg.steps, summary))
    logger.info("training %s at step %d/%d (best PSNR %s at step %s)", stopped, done, cfg.steps,
                history.best_psnr, history.best_step)
    return history

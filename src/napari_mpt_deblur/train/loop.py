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
    checkpoint afterwards on data the trainer does not validate on. Any of these states loads
    as a network like a checkpoint does (:func:`model_from_state`, which
    :func:`~napari_mpt_deblur.models.resolve.resolve_model` calls for such files).

Runs are meant to be cut into chunks (``time_budget_s``) and continued with ``resume=True``:
the learning rate is a pure function of the step and each step's batch and random choices are
drawn from generators seeded by ``(seed, step)``, so on the same device and software a resumed
run reproduces an uninterrupted one bit for bit.

The steps, the cancel check and the time budget are the one trainer's
(:mod:`napari_mpt_deblur.train.engine`); this module supplies the supervised loss
(:func:`_supervised_loss`) and the run's files and records (:class:`_FitRun`), and
:mod:`napari_mpt_deblur.train._fit_data` its data. The fine-tuning engine for a lab's own
unlabeled images, on the same trainer, lives in :mod:`napari_mpt_deblur.train.finetune` and is
re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._device import get_device, seed_everything
from ..models.htcsf import multiscale_loss
from ..models.info import model_info, optics_conditioned, size_multiple
from . import _common
from ._common import (
    METRIC_CONVENTION,
    CancelLike,
    JsonlLog,
    load_state_file,
    predict_batches,
    psnr_ssim,
    step_generator,
)
from ._fit_data import (
    _prepare_data,
    reblur_bank_for_simulation,
    simulation_from_config,
    simulation_record,
)
from .config import RUN_CONTROL_FIELDS, TrainConfig
from .engine import Every, StepContext, StepLoop, Trainer, write_state
from .finetune import FinetuneConfig, finetune, finetune_iter
from .losses import efcr_terms, pixel_loss
from .reblur import ReblurBank, make_negatives, make_reblurred_set
from .updates import TrainUpdate, UpdateKind

__all__ = [
    "FinetuneConfig",
    "History",
    "build_model",
    "evaluate_pairs",
    "finetune",
    "finetune_iter",
    "fit",
    "model_from_state",
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


def model_from_state(path: str | os.PathLike[str]) -> nn.Module:
    """The network a supervised run's resumable state holds, in eval mode on the CPU.

    Why here: a kept ``state-NNNNN.pt`` is a snapshot that ``scripts/select_checkpoint.py``
    may score and ``scripts/export_weights.py`` may ship, and only this module knows what a
    ``fit`` state holds; :func:`~napari_mpt_deblur.models.resolve.resolve_model` hands such
    files (``state.pt``, ``state-NNNNN.pt``) here, so that every caller gets the same network
    and info from them.

    The file is read with ``weights_only=True``. The architecture is the state's own
    :class:`TrainConfig` (:func:`build_model`). The info is the header of the run's
    ``last.safetensors`` beside it when there is one (normalisation, simulation, training
    config: what the run itself wrote), else what :func:`fit` writes into every header (the
    default normalisation, the config); its ``training.step`` is the state's step, its
    ``metrics`` gain the validation logged at that step, its name is
    ``"<run folder>/state@<step>"`` and its ``sha256`` is the state file's.

    Raises
    ------
    CheckpointError
        The file is not a supervised run's state (a fine-tuning state holds no architecture:
        load that run's ``.safetensors`` instead).
    """
    from ..engine.normalize import IntensityNormalization
    from ..models._registry import architecture_of
    from ..models.checkpoint import CheckpointError, file_sha256, read_header
    from ..models.info import ModelInfo, attach_info

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects, a truncated file ...
        raise CheckpointError(f"{path} is not a readable training state: {exc}") from exc
    if not (isinstance(state, dict) and isinstance(state.get("config"), str)
            and isinstance(state.get("model"), dict) and "step" in state
            and state.get("kind", "fit") == "fit"):
        kind = state.get("kind") if isinstance(state, dict) else None
        raise CheckpointError(
            f"{path} is not a supervised training state (state.pt of mpt-deblur train)"
            + (f"; it is a {kind!r} state, whose run's .safetensors is the model" if kind
               else ""))
    cfg = TrainConfig.from_dict(json.loads(state["config"]))
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    step = int(state["step"])
    last = path.with_name("last.safetensors")
    header = (read_header(last) if last.is_file() else None) or {
        "normalization": IntensityNormalization().to_dict(),
        "training": {"config": cfg.to_dict()}}
    header.setdefault("training", {})["step"] = step
    history = json.loads(state.get("history") or "{}")
    scores = next((v for v in history.get("validation", []) if v.get("step") == step), None)
    if scores is not None:
        header.setdefault("metrics", {}).update(scores)  # its "step" too: last's may be later
    info = ModelInfo.from_header(
        {k: v for k, v in header.items() if k != "config"},
        config=model.config.to_dict(),
        name=f"{path.parent.name}/state@{step}",
        source=str(path),
        sha256=file_sha256(path),
        routing=getattr(model.config, "routing", None),
        arch=header.get("arch") or architecture_of(model.config).name,
    )
    attach_info(model, info)
    return model.eval()


def evaluate_pairs(
    model: nn.Module,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    defocus_um: Iterable[float] | None = None,
    batch_size: int = 4,
    members: Iterable[str] | None = None,
    optics: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Mean PSNR/SSIM of ``model`` on normalised pairs (N, 1, H, W), convention in
    ``METRIC_CONVENTION``; with ``defocus_um`` also the PSNR per third of the defocus range,
    with ``members`` (a simulation mixture's member of each pair) also PSNR and SSIM per
    member. ``optics`` (N, 3): the optics vector of each pair, for an optics-conditioned
    model."""
    device = device or next(model.parameters()).device
    pred = predict_batches(model, blurred, device=device, amp_dtype=amp_dtype,
                           batch_size=batch_size, optics=optics)
    return _scores(pred.numpy(), sharp.numpy(), defocus_um, members)


def _scores(pred: np.ndarray, sharp: np.ndarray, defocus_um: Iterable[float] | None,
            members: Iterable[str] | None = None) -> dict[str, Any]:
    pairs = [psnr_ssim(p[0], s[0]) for p, s in zip(pred, sharp)]
    psnr = np.array([a for a, _ in pairs])
    ssim = np.array([b for _, b in pairs])
    out: dict[str, Any] = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}
    if members is not None:
        names = np.array(list(members), dtype=object)
        if names.size == psnr.size:
            out["by_member"] = {
                str(m): {"psnr": float(psnr[names == m].mean()),
                         "ssim": float(ssim[names == m].mean()), "n": int((names == m).sum())}
                for m in dict.fromkeys(names.tolist())
            }
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


#: Stream of :func:`step_generator` for the optics dropout (1: the loss's re-blur choices).
_STREAM_OPTICS = 2


def _pair_optics(batch: Mapping[str, torch.Tensor], cfg: TrainConfig, step: int
                 ) -> torch.Tensor:
    """The optics vectors an optics-conditioned model sees for the batch's pairs: the true
    ones, each replaced by the blind vector with probability ``cfg.optics_dropout``."""
    from ..models.conditioning import BLIND_OPTICS

    optics = batch["optics"].clone()
    gen = step_generator(cfg.seed, _STREAM_OPTICS, step)
    drop = torch.rand(optics.shape[0], generator=gen) < cfg.optics_dropout
    optics[drop] = torch.tensor(BLIND_OPTICS, dtype=optics.dtype)
    return optics


def _supervised_loss(ctx: StepContext, batch: Mapping[str, torch.Tensor], cfg: TrainConfig,
                     bank: ReblurBank | None, conditioned: bool = False
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one supervised step: pixel (+ multi-scale) + EFCR (+ re-blur on unlabeled).

    An optics-conditioned model (``conditioned``) sees each pair's optics (:func:`_pair_optics`)
    and runs blind on unlabeled patches, whose optics nobody knows.
    """
    device = ctx.device
    gen = step_generator(cfg.seed, 1, ctx.step)
    parts: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=device)
    restored = blurred = sharp = None
    if "blurred" in batch:
        blurred = batch["blurred"].to(device, non_blocking=True)
        sharp = batch["sharp"].to(device, non_blocking=True)
        if hasattr(ctx.net, "forward_multiscale"):
            # Multi-scale models (HTCSF) are supervised at every scale, as their paper trains
            # them; "pixel" stays the full-resolution term so logs compare across models.
            with ctx.autocast():
                scales = ctx.net.forward_multiscale(blurred)
            restored = scales[-1]
            parts["pixel"] = pixel_loss(restored, sharp, cfg.pixel_loss)
            parts["multiscale"] = multiscale_loss(
                scales, sharp.float(),
                loss_fn=lambda p, t: pixel_loss(p, t, cfg.pixel_loss),
            )
            loss = loss + parts["multiscale"]
        else:
            optics = (_pair_optics(batch, cfg, ctx.step).to(device, non_blocking=True)
                      if conditioned else None)
            restored = ctx.forward(blurred, optics)
            parts["pixel"] = pixel_loss(restored, sharp, cfg.pixel_loss)
            loss = loss + parts["pixel"]
    unlabeled = batch.get("unlabeled")
    members: list[torch.Tensor] = []
    if unlabeled is not None and bank is not None:
        unlabeled = unlabeled.to(device, non_blocking=True)
        reblurred, members = make_reblurred_set(unlabeled, bank, generator=gen)
        if cfg.reblur_weight > 0:
            parts["reblur"] = pixel_loss(ctx.forward(reblurred), unlabeled, cfg.pixel_loss)
            loss = loss + cfg.reblur_weight * parts["reblur"]
    if cfg.efcr_weight > 0 and bank is not None and (restored is not None or members):
        negatives = make_negatives(blurred, bank, generator=gen) if blurred is not None else []
        terms = efcr_terms(
            restored, sharp, blurred, negatives=negatives,
            unlabeled_restored=ctx.forward(unlabeled) if members else None,
            unlabeled=unlabeled if members else None,
            unlabeled_reblurred=members, rel_weight=cfg.efcr_rel_weight,
        )
        parts["efcr"] = terms.cr
        if members:
            parts["efcr_rel"] = terms.rel
        loss = loss + cfg.efcr_weight * terms.cr
    return loss, parts


class _FitRun:
    """The files and records of one :func:`fit` invocation; the steps are the trainer's."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, trainer: Trainer, data: Any,
                 out: Path, history: History, progress: Progress | None) -> None:
        from ..engine.normalize import IntensityNormalization

        self.cfg, self.model, self.trainer, self.data = cfg, model, trainer, data
        self.out, self.history = out, history
        self.state_path = out / "state.pt"
        self.best_path = out / "best.safetensors"
        self.last_path = out / "last.safetensors"
        self.log = JsonlLog(out / "log.jsonl")
        self.normalization = IntensityNormalization().to_dict()
        self.init_source = model_info(model).source
        self.val_defocus = [p.get("defocus_um", math.nan) for p in data.val.params]
        self.val_members = data.val.members  # None unless the simulation is a mixture
        self.val_optics = None  # the validation pairs' true optics, for a conditioned model
        if optics_conditioned(model):
            from ..models.conditioning import optics_batch

            self.val_optics = optics_batch(data.val.params)
        self.last_val: dict[str, Any] = {}  # this invocation's latest validation
        self.last_record: dict[str, Any] = {}  # the latest reported step's record
        self.progress = progress

    def metadata(self, metrics: Mapping[str, Any], step: int) -> dict[str, Any]:
        cfg, history = self.cfg, self.history
        return {
            "name": self.out.name,
            "description": f"{cfg.model} trained on simulated '{self.data.simulation.name}' "
                           "defocus pairs",
            "normalization": self.normalization,
            "training": {"config": cfg.to_dict(), "step": step, "data": self.data.description,
                         "init": self.init_source},
            "simulation": simulation_record(self.data.simulation),
            "metrics": {**metrics, "baseline_blurred": history.baseline,
                        "convention": METRIC_CONVENTION},
        }

    def save_state(self, step: int) -> Iterator[TrainUpdate]:
        cfg = self.cfg
        self.history.state_path = str(self.state_path)
        write_state(
            self.state_path, "fit", step, self.trainer,
            scheduler={"schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
                       "total_steps": cfg.steps, "lr": cfg.lr, "min_lr": cfg.min_lr},
            history=json.dumps(self.history.to_dict(), default=_common._json_default),
            config=json.dumps(cfg.to_dict()),
        )
        self.log.write({"event": "state", "step": step, "path": str(self.state_path)})
        if cfg.keep_every and step % cfg.keep_every == 0:
            kept = self.out / f"state-{step:05d}.pt"
            _common.atomic_copy(self.state_path, kept)
            self.log.write({"event": "state", "step": step, "path": str(kept), "kept": True})
        yield TrainUpdate(UpdateKind.CHECKPOINT, step, cfg.steps,
                          {"path": str(self.state_path), "kind": "state"})

    def validate(self, step: int) -> Iterator[TrainUpdate]:
        from ..models.checkpoint import save_checkpoint

        history, val = self.history, self.data.val
        scores = evaluate_pairs(self.model, val.blurred, val.sharp, device=self.trainer.device,
                                amp_dtype=self.trainer.amp_dtype, defocus_um=self.val_defocus,
                                members=self.val_members, optics=self.val_optics)
        record = {"step": step, **scores}
        self.last_val = scores
        history.validation.append(record)
        self.log.write({"event": "validation", **record})
        yield TrainUpdate(UpdateKind.VALIDATION, step, self.cfg.steps, dict(scores))
        if history.best_psnr is None or scores["psnr"] > history.best_psnr:
            history.best_psnr, history.best_step = scores["psnr"], step
            save_checkpoint(self.best_path, self.model, metadata=self.metadata(scores, step))
            history.best_checkpoint = str(self.best_path)
            self.log.write({"event": "best", "step": step, "psnr": scores["psnr"],
                            "path": str(self.best_path)})
            yield TrainUpdate(UpdateKind.CHECKPOINT, step, self.cfg.steps,
                              {"path": str(self.best_path), "kind": "best", **scores})

    def record_step(self, update: TrainUpdate, start: int, elapsed_s: float
                    ) -> dict[str, Any] | None:
        """The record of a LOSS update, logged every ``log_every`` steps; None for a skipped
        (non-finite) step, which is neither logged nor reported, as before."""
        if not math.isfinite(update.value["loss"]):
            return None
        done = update.step
        record = {**update.value, "step": done}
        if done % self.cfg.log_every == 0 or done == self.cfg.steps or done == start + 1:
            record["time_s"] = round(elapsed_s, 3)
            self.history.train.append(record)
            self.log.write({"event": "train", **record})
        self.last_record = record
        return record

    def report_progress(self, step: int) -> Iterable[TrainUpdate]:
        """``progress(step, total, info)`` after a reported step and its actions (a periodic
        action of the loop, so that ``info`` has the validation of the same step)."""
        self.history.step = step
        if self.progress is not None and self.last_record.get("step") == step:
            info = {k: v for k, v in self.last_record.items() if k != "step"}
            if self.last_val:
                info["val_psnr"] = self.last_val["psnr"]
            self.progress(step, self.cfg.steps, info)
        return ()

    def finish(self, stopped: str, done: int) -> Iterator[TrainUpdate]:
        """The end of an invocation: a last validation when completed, last weights, state."""
        from ..models.checkpoint import save_checkpoint

        history = self.history
        if not history.validation or history.validation[-1]["step"] != done:
            if stopped == "completed" and done > 0:
                yield from self.validate(done)
        save_checkpoint(self.last_path, self.model, metadata=self.metadata(
            history.validation[-1] if history.validation else {}, done))
        history.last_checkpoint = str(self.last_path)
        yield from self.save_state(done)


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
    ``METRIC_CONVENTION`` on a fixed simulated set from ``val_dirs``. The steps, the cancel
    check and the time budget are the :class:`~napari_mpt_deblur.train.engine.StepLoop`'s.
    """
    cfg = _as_train_config(config)
    if time_budget_s is not None:
        cfg = cfg.replace(time_budget_s=float(time_budget_s))
    cbs = _as_callbacks(callbacks)
    out = Path(os.path.expanduser(cfg.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"

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
    elif cfg.model_overrides.get("optics_conditioning") and not optics_conditioned(model):
        from ..models.mpt import add_optics_conditioning

        model = add_optics_conditioning(model)  # same output until the FiLM is trained
        logger.info("added optics conditioning to the start model, as the config asks")
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        logger.info("all parameters were frozen; unfreezing them for training")
        model.requires_grad_(True)
    data = _prepare_data(cfg, size_multiple(model))
    if data.bank is not None:
        data.bank.to(device)

    trainer = Trainer(model, cfg.optim, total_steps=cfg.steps, device=device)
    history = History(total_steps=cfg.steps)
    start = 0
    if state is not None:
        trainer.load_state(state)
        history = History.from_dict(json.loads(state["history"]))
        history.total_steps = cfg.steps
        start = int(state["step"])
        logger.info("resuming %s at step %d of %d", out, start, cfg.steps)
    cfg.save(out / "config.json")
    run = _FitRun(cfg, model, trainer, data, out, history, progress)
    if history.baseline is None:
        val = data.val
        history.baseline = _scores(val.blurred.numpy(), val.sharp.numpy(), run.val_defocus,
                                   run.val_members)
        run.log.write({"event": "baseline", "step": start, **history.baseline})

    t0 = time.monotonic()
    elapsed_before = history.elapsed_s
    done = start
    loader = None
    try:
        from .data import make_loader

        conditioned = optics_conditioned(model)
        loader = make_loader(data.builder, start=start, stop=cfg.steps,
                             num_workers=cfg.num_workers, seed=cfg.seed)
        batches = iter(loader)
        loop = StepLoop(
            trainer, lambda ctx: _supervised_loss(ctx, next(batches), cfg, data.bank,
                                                  conditioned),
            start=start, total=cfg.steps, cancel=cancel, time_budget_s=cfg.time_budget_s,
            max_bad_steps=_MAX_BAD_STEPS,
            every=(Every(cfg.val_every, run.validate, at_last=True),
                   Every(cfg.ckpt_every, run.save_state, at_last=False),
                   Every(1, run.report_progress)),
        )
        for update in loop:
            done = update.step
            if update.kind is UpdateKind.LOSS:
                record = run.record_step(update, start, elapsed_before + time.monotonic() - t0)
                if record is None:
                    continue
                update = TrainUpdate(UpdateKind.LOSS, done, cfg.steps, dict(record))
            _emit(cbs, update)
        assert loop.stopped is not None
        stopped = loop.stopped.reason
        done = loop.stopped.step
        history.step = done
        history.stopped = stopped
        history.elapsed_s = elapsed_before + time.monotonic() - t0
        for update in run.finish(stopped, done):
            _emit(cbs, update)
    except BaseException as exc:
        history.stopped = "error"
        run.log.write({"event": "error", "step": done, "error": f"{type(exc).__name__}: {exc}"})
        _emit(cbs, TrainUpdate(UpdateKind.ERROR, done, cfg.steps, exc))
        raise
    finally:
        del loader
    summary = {"reason": stopped, "step": done, "best_psnr": history.best_psnr,
               "best_step": history.best_step, "best_checkpoint": history.best_checkpoint,
               "elapsed_s": round(history.elapsed_s, 3)}
    run.log.write({"event": "stop", **summary})
    _emit(cbs, TrainUpdate(UpdateKind.DONE, done, cfg.steps, summary))
    logger.info("training %s at step %d/%d (best PSNR %s at step %s)", stopped, done, cfg.steps,
                history.best_psnr, history.best_step)
    return history

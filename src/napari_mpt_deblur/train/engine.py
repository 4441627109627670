"""The one trainer: the optimiser step and the step loop of every training run.

Supervised training (:func:`~napari_mpt_deblur.train.loop.fit`) and fine-tuning
(:func:`~napari_mpt_deblur.train.finetune.finetune_iter`) differ in their data and their loss,
not in how a step is taken or when a run stops, so both use the two pieces here:

:class:`Trainer`
    Owns the optimiser (AdamW over :func:`~._common.parameter_groups`), the learning rate as a
    pure function of the step (:func:`~._common.lr_at`, so resumes need no scheduler object),
    autocast (:func:`~._common.resolve_amp`), the fp16 loss scaler, gradient clipping and the
    optional ``torch.compile`` of the training forward. :meth:`Trainer.step` takes a *loss
    function* of a :class:`StepContext` and returns a :class:`StepResult`; a non-finite loss
    skips the update.
:class:`StepLoop`
    Runs the steps ``start..total``: checks ``cancel`` before every step, stops before a step
    that would overrun the time budget (judged from the slowest recent step), stops after too
    many consecutive non-finite losses, and runs the periodic actions (:class:`Every`:
    validation, preview, state saves). Everything it reports, the steps' LOSS records and the
    records the actions make, comes out of one iterator of
    :class:`~napari_mpt_deblur.train.updates.TrainUpdate`, the records the widgets and the CLI
    already consume; why it stopped is :attr:`StepLoop.stopped` afterwards.

:func:`write_state` / :meth:`Trainer.load_state` write and read the optimiser part of a
resumable ``state.pt`` under the same keys as before (``model``, ``optimizer``, ``scaler``,
``rng``), so states written by earlier versions resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _common
from ._common import (
    STATE_FORMAT,
    STATE_VERSION,
    CancelLike,
    atomic_torch_save,
    autocast,
    is_cancelled,
    lr_at,
    parameter_groups,
    resolve_amp,
    set_lr,
)
from .config import OptimConfig
from .updates import TrainUpdate, UpdateKind

__all__ = ["Every", "StepContext", "StepLoop", "StepResult", "Stopped", "Trainer", "write_state"]

logger = logging.getLogger(__name__)

#: Stop reasons of :attr:`StepLoop.stopped`.
STOP_REASONS = ("completed", "cancelled", "time_budget")


@dataclass(frozen=True)
class StepContext:
    """What a loss function gets for one step.

    Attributes
    ----------
    step : int
        0-based index of the step being taken (seeds its random choices).
    net : nn.Module
        The training forward: the model, or its ``torch.compile`` wrapper (same parameters).
    device : torch.device
        Where the model lives.
    amp_dtype : torch.dtype or None
        Autocast dtype (``None``: float32).
    """

    step: int
    net: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this run (a no-op in float32)."""
        return autocast(self.device, self.amp_dtype)

    def forward(self, x: torch.Tensor, optics: torch.Tensor | None = None) -> torch.Tensor:
        """``net(x)`` under autocast; losses are computed outside, in float32. ``optics``
        (``(N, 3)`` optics vectors) is passed on only when given: to an optics-conditioned
        model."""
        with self.autocast():
            return self.net(x) if optics is None else self.net(x, optics=optics)


#: A loss function: the total loss and its named parts (logged, not weighted again).
LossFn = Callable[[StepContext], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


@dataclass(frozen=True)
class StepResult:
    """The outcome of one :meth:`Trainer.step`.

    Attributes
    ----------
    step : int
        Steps completed after this one (1-based: the first step reports 1).
    loss : float
        Total loss (non-finite when the update was skipped).
    lr : float
        Learning rate of the update.
    grad_norm : float
        Global gradient norm before clipping (NaN without clipping or when skipped).
    parts : dict of str to float
        The loss's named parts.
    """

    step: int
    loss: float
    lr: float
    grad_norm: float = math.nan
    parts: Mapping[str, float] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        """Whether the loss was finite (and so the update applied)."""
        return math.isfinite(self.loss)

    def record(self) -> dict[str, float]:
        """The logged values: ``loss``, ``lr``, ``grad_norm`` and the parts."""
        return {"loss": self.loss, "lr": self.lr, "grad_norm": self.grad_norm, **self.parts}


@dataclass(frozen=True)
class Stopped:
    """Why and where a :class:`StepLoop` ended.

    Attributes
    ----------
    reason : {"completed", "cancelled", "time_budget"}
        ``"cancelled"``: ``cancel`` was set before a step; ``"time_budget"``: the next step
        would have overrun the budget.
    step : int
        Steps completed.
    """

    reason: str
    step: int


class Trainer:
    """The optimiser step of every training run (module notes).

    Parameters
    ----------
    model : nn.Module
        The network; its trainable parameters (``requires_grad``) are optimised.
    optim : OptimConfig
        Learning rate, schedule, weight decay, clipping, amp and compile.
    total_steps : int
        Length of the learning-rate schedule.
    device : torch.device
        Where the model lives (decides autocast and the loss scaler).
    """

    def __init__(self, model: nn.Module, optim: OptimConfig, *, total_steps: int,
                 device: torch.device) -> None:
        self.model = model
        self.optim = optim
        self.total_steps = int(total_steps)
        self.device = device
        self.optimizer = torch.optim.AdamW(parameter_groups(model, optim.weight_decay),
                                           lr=optim.lr, betas=(0.9, 0.999))
        self.amp_dtype = resolve_amp(optim.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        # The compiled wrapper shares the parameters; validation and checkpoints use ``model``.
        self.net = torch.compile(model) if optim.compile else model
        if self.amp_dtype is not None or optim.compile:
            dtype = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None
            logger.info("training forward: %s%s", "compiled, " if optim.compile else "",
                        f"autocast {dtype}" if dtype else "float32")

    def lr_at(self, step: int) -> float:
        """Learning rate of the update made at 0-based ``step``."""
        o = self.optim
        return lr_at(step, lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                     total_steps=self.total_steps, schedule=o.schedule)

    def step(self, step: int, loss_fn: LossFn) -> StepResult:
        """One optimiser step at 0-based ``step``: loss, backward, clip, update.

        A non-finite loss skips the update (the optimiser state is untouched) and is reported
        in the result; the caller decides what to do about it.
        """
        self.model.train()
        lr = self.lr_at(step)
        set_lr(self.optimizer, lr)
        loss, parts = loss_fn(StepContext(step, self.net, self.device, self.amp_dtype))
        self.optimizer.zero_grad(set_to_none=True)
        values = {k: float(v.detach()) for k, v in parts.items()}
        if not torch.isfinite(loss):
            return StepResult(step + 1, float(loss.detach()), lr, math.nan, values)
        self.scaler.scale(loss).backward()
        grad_norm = math.nan
        if self.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(),
                                                       self.optim.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(step + 1, float(loss.detach()), lr, grad_norm, values)

    # ------------------------------------------------------------------ resumable state
    def state_entries(self) -> dict[str, Any]:
        """The trainer's part of a resumable state (the keys every state file has had)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": _common.rng_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_entries` saved (model, optimiser, scaler, global RNGs)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            _common.set_rng_state(state["rng"])


def write_state(path: str | os.PathLike[str], kind: str, step: int, trainer: Trainer,
                **extra: Any) -> Path:
    """Write a resumable state file atomically: format header, the trainer's entries and the
    run's own ``extra`` entries (history, config ...); loadable with ``weights_only=True``."""
    return atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "kind": kind,
                              "step": int(step), **trainer.state_entries(), **extra}, path)


@dataclass(frozen=True)
class Every:
    """A periodic action of a :class:`StepLoop`, run after the steps it is due at.

    Attributes
    ----------
    steps : int
        Period in completed steps; 0 never runs it.
    action : callable(step) -> iterable of TrainUpdate
        What to do (validate, save ...); the records it yields go out through the loop.
    at_last : bool or None
        At the run's last step: ``True`` always run, ``False`` never (the caller does it once
        the loop has ended), ``None`` only when due like any other step.
    """

    steps: int
    action: Callable[[int], Iterable[TrainUpdate]]
    at_last: bool | None = None

    def due(self, step: int, total: int) -> bool:
        if not self.steps:
            return False
        if step == total and self.at_last is not None:
            return self.at_last
        return step % self.steps == 0


class StepLoop:
    """Steps ``start`` to ``total`` of a :class:`Trainer`, as one iterator of progress records.

    Iterating yields, after each step, a LOSS :class:`TrainUpdate` (``value``: the
    :meth:`StepResult.record`) and then the records of the :class:`Every` actions due at that
    step, in the order given. Before each step ``cancel`` is checked (once) and the time budget
    judged; afterwards :attr:`stopped` says why the loop ended.

    Parameters
    ----------
    trainer : Trainer
    loss_fn : callable(StepContext) -> (loss, parts)
        The run's loss; it draws its own batch for ``ctx.step``.
    start, total : int
        Steps already done (a resumed run) and steps planned.
    cancel : threading.Event or callable, optional
    time_budget_s : float, optional
        Stop before a step would end after this many seconds since iteration began.
    every : sequence of Every
        Periodic actions.
    max_bad_steps : int, optional
        Raise ``FloatingPointError`` after this many consecutive non-finite losses (the
        updates are skipped either way).
    """

    def __init__(self, trainer: Trainer, loss_fn: LossFn, *, start: int, total: int,
                 cancel: CancelLike = None, time_budget_s: float | None = None,
                 every: Iterable[Every] = (), max_bad_steps: int | None = None) -> None:
        self.trainer = trainer
        self.loss_fn = loss_fn
        self.start = int(start)
        self.total = int(total)
        self.cancel = cancel
        self.time_budget_s = time_budget_s
        self.every = tuple(every)
        self.max_bad_steps = max_bad_steps
        self.step = self.start
        self.stopped: Stopped | None = None

    def __iter__(self) -> Iterator[TrainUpdate]:
        t0 = time.monotonic()
        recent: deque[float] = deque(maxlen=20)
        bad = 0
        reason = "completed"
        for index in range(self.start, self.total):
            if is_cancelled(self.cancel):
                reason = "cancelled"
                break
            if self.time_budget_s is not None:
                # Stop before a step (with its validation/save) would overrun the budget.
                typical = max(recent) if recent else 0.0
                if time.monotonic() - t0 + typical > self.time_budget_s:
                    reason = "time_budget"
                    break
            t_step = time.monotonic()
            result = self.trainer.step(index, self.loss_fn)
            self.step = done = result.step
            if not result.finite:
                bad += 1
                logger.warning("step %d: non-finite loss, update skipped", done)
                if self.max_bad_steps is not None and bad >= self.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad} consecutive non-finite losses at step {done}; lower lr "
                        "or disable amp"
                    )
            else:
                bad = 0
            yield TrainUpdate(UpdateKind.LOSS, done, self.total, result.record())
            for periodic in self.every:
                if periodic.due(done, self.total):
                    yield from periodic.action(done)
            recent.append(time.monotonic() - t_step)
        self.stopped = Stopped(reason, self.step)

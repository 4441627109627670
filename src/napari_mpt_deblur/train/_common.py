"""Pieces shared by :func:`~napari_mpt_deblur.train.loop.fit` and the fine-tuning engine."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _device
from .._io import atomic_write

logger = logging.getLogger(__name__)

STATE_FORMAT = "napari_mpt_deblur.train_state"
STATE_VERSION = 1

CancelLike = threading.Event | Callable[[], bool] | None

METRIC_CONVENTION = (
    "napari_mpt_deblur.metrics: per patch, both images normalised by the sharp patch's "
    "min-max range, PSNR = 10·log10(1 / MSE) and SSIM with a Gaussian window (sigma 1.5, "
    "Wang et al. 2004); model output not clipped; mean over patches"
)


def is_cancelled(cancel: CancelLike) -> bool:
    """True when ``cancel`` (an Event, a zero-argument callable or None) asks to stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel must be a threading.Event, a callable or None; got {type(cancel)}")


def step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """A CPU torch generator for the random choices of one training step (resumable)."""
    mixed = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(mixed[0]) << 32 | int(mixed[1]))
    return g


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels, none on norms, biases, temperatures
    and position-bias tables (decaying them only shrinks scales the network relies on)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "relative_position_bias" in name or "temperature" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    # an empty group (e.g. only norms and biases train) would make AdamW refuse the list
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
          schedule: str = "cosine") -> float:
    """Learning rate for the update made at ``step`` (0-based): linear warm-up, then cosine
    decay to ``min_lr`` at ``total_steps`` (or constant). A pure function of the step, so a
    resumed run needs no scheduler object to agree with an uninterrupted one."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device``; ``None`` means full float32.

    CUDA: "auto" and "bf16" use bf16 where the GPU supports it (no loss scaling needed), fp16
    with a GradScaler otherwise. CPU: only an explicit "bf16" turns autocast on, and only on a
    CPU with native bf16 (``benchmarks/train_throughput.py`` measured 1.22x the float32 step
    rate for mpt-tiny on an AVX-512 BF16 CPU, 1.43x with ``compile``); "auto" stays float32
    there so that results do not depend on which CPU ran them. MPS always runs float32.
    """
    if mode not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"amp must be one of 'auto', 'off', 'bf16', 'fp16'; got {mode!r}")
    if mode == "off":
        return None
    if device.type == "cpu":
        if mode == "bf16":
            if _device.cpu_has_native_bf16():
                return torch.bfloat16
            logger.warning("amp='bf16': this CPU has no native bf16, training in float32")
        return None
    if device.type != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def psnr_ssim(pred: np.ndarray, sharp: np.ndarray) -> tuple[float, float]:
    """PSNR (dB, capped at 100) and SSIM of one 2-D patch by the project convention
    (:mod:`napari_mpt_deblur.metrics`, ``METRIC_CONVENTION``)."""
    from ..metrics import psnr, ssim

    return min(psnr(pred, sharp), 100.0), ssim(pred, sharp)


@torch.no_grad()
def predict_batches(model: nn.Module, inputs: torch.Tensor, *, device: torch.device,
                    amp_dtype: torch.dtype | None, batch_size: int = 4,
                    optics: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``model`` over ``inputs`` (N, C, H, W) in eval mode; returns float32 on the CPU.

    ``optics`` (N, 3), for an optics-conditioned model: each input's optics vector."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        for i in range(0, inputs.shape[0], batch_size):
            x = inputs[i : i + batch_size].to(device)
            kwargs = {} if optics is None else {"optics": optics[i : i + batch_size].to(device)}
            with autocast(device, amp_dtype):
                y = model(x, **kwargs)
            outs.append(y.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file: a killed job leaves the old file or the new one."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=True)


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy a file through a temporary file, so that ``path`` is never seen half written."""
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp), overwrite=True)


def load_state_file(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Load a resumable state written by :func:`atomic_torch_save` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no resumable state at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a napari-mpt-deblur training state file")
    if state.get("kind") != kind:
        raise ValueError(f"{path} holds a {state.get('kind')!r} state, not a {kind!r} state")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise ValueError(
            f"{path} was written by a newer version (state version {state.get('version')})"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA) in a weights_only-safe form."""
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - saving the legacy global state
    state: dict[str, Any] = {
        "python": json.dumps([py[0], list(py[1]), py[2]]),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *[
            v if not isinstance(v, np.generic) else v.item() for v in np_state[2:]
        ]]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (missing parts are left alone)."""
    if "python" in state:
        version, internal, gauss = json.loads(state["python"])
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
        np.random.set_state((name,  # noqa: NPY002 - restoring the legacy global state
                             np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


class JsonlLog:
    """Append-only JSON-lines log (one object per line; flushed so a killed run keeps it).

    A run killed while writing leaves its last line cut short. Reading skips such a line with a
    warning instead of failing, and the next :meth:`write` (a resumed run) first ends it with a
    newline, so the new record starts on a line of its own; nothing already written is changed.
    The cut line then sits between complete records and is skipped the same way.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, default=_json_default) + "\n").encode("utf-8")
        with self.path.open("a+b") as fh:  # appends always go to the end, whatever is read
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
            fh.write(line)

    def read(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    where = ("last line, cut short" if not line.endswith("\n")
                             else f"line {number}, cut short before a resume")
                    logger.warning("%s: skipped an incomplete record (%s; was the run killed?)",
                                   self.path, where)
                    continue
                yield record


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)

"""The one place that decides which torch device runs a model."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def list_devices() -> list[str]:
    """Devices torch can use here, best first (for pickers and ``mpt-deblur info``)."""
    import torch

    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where oneDNN's bf16
    kernels are fast; elsewhere they are emulated and slower than float32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def get_device(
    device: str | torch.device | None = "auto", *, fallback: bool = True
) -> torch.device:
    """Resolve a device name.

    ``"auto"`` (or ``None``) picks CUDA, then MPS, then CPU. An explicit GPU that is not present
    falls back to the CPU with a warning when ``fallback`` is true (the user's job still runs),
    and raises ``ValueError`` otherwise. Unknown names raise ``ValueError`` listing the choices.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return torch.device(list_devices()[0])
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if _mps_available():
            return torch.device("mps")
        return _unavailable(name, fallback)
    if name == "cuda" or name.startswith("cuda:"):
        index = 0
        if ":" in name:
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                choices = ", ".join(DEVICE_CHOICES)
                raise ValueError(
                    f"device {device!r} is not understood; choose one of {choices}"
                ) from None
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return torch.device("cuda", index)
        return _unavailable(name, fallback)
    raise ValueError(
        f"device {device!r} is not understood; choose one of {', '.join(DEVICE_CHOICES)} "
        f"(available here: {', '.join(list_devices())})"
    )


def require_device(device: str | None) -> str:
    """Check a device the user named explicitly, before any work starts.

    The library falls back to the CPU for a missing GPU so that a widget or a notebook keeps
    working, but a command line that was told ``--device cuda`` and quietly ran on the CPU
    (for hours, with exit code 0) hides a broken driver or a CPU-only torch. So the CLI calls
    this first: ``"auto"``/``None`` and present devices pass (returned normalised, e.g.
    ``" CUDA:0"`` -> ``"cuda:0"``), a missing GPU raises ``ValueError`` listing the devices torch
    does see, and the later resolutions then succeed without a second warning.
    """
    name = "auto" if device is None else str(device).strip().lower()
    if name != "auto":
        try:
            get_device(name, fallback=False)
        except ValueError as exc:
            raise ValueError(f"{exc}; pick one of those, or --device auto") from None
    return name


def _unavailable(name: str, fallback: bool) -> torch.device:
    import torch

    message = f"device {name!r} is not available here (available: {', '.join(list_devices())})"
    if not fallback:
        raise ValueError(message)
    logger.warning("%s; using the CPU instead", message)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds legacy global users too
    torch.manual_seed(seed)

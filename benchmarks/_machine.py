"""The line every benchmark table starts with: what ran it, and the command that made it."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path


def command_line() -> str:
    """The command as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    return " ".join(["python", f"benchmarks/{script.name}", *sys.argv[1:]])


def machine_line(device: str = "cpu", threads: int | None = None) -> str:
    """Machine, torch, date and command, for the head of a results table."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    where = device
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{device} ({torch.cuda.get_device_name(0)})"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} torch threads, device {where}, "
        f"torch {torch.__version__}, {datetime.date.today()}. Command: `{command_line()}`"
    )

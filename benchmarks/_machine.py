"""What the benchmarks share: the line their tables start with (machine, torch, date, command)
and measurement in a fresh process, so that peak memory is that run's own."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
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


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh Python; its last stdout line is the JSON result."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])

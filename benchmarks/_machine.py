"""What the benchmarks share: the line their tables start with (machine, torch, date, command)
and measurement in a fresh process, so that peak memory is that run's own."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def median(values: list[float]) -> float:
    """Median of timings: one slow outlier (a page-fault burst, a busy core) does not move it,
    unlike the mean, and it does not reward one lucky run, unlike the minimum."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a wall-clock interval covers the kernels it launched."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(
    n: int = 2048, dtype: str = "fp32", device: str = "cpu", repeats: int = 3
) -> float:
    """Best-of-``repeats`` GFLOP/s of one ``n``×``n`` matmul in ``dtype``, with the current
    torch thread count.

    Why: "achieved GFLOP/s" of a network means little without the ceiling of *this* machine;
    a large square matmul is the best case the BLAS reaches, so it is the peak the model's
    throughput is compared against. The best run, not the median, because a peak is wanted.
    """
    import time

    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
    torch.mm(a, b)  # warm-up: BLAS thread pool, packing buffers, GPU kernels
    synchronize(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _attention_flops(query_shape: Sequence[int], key_shape: Sequence[int],
                     value_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    """``softmax(q kᵀ) v``: two matmuls per (batch…, query, key) triple; mask and softmax are
    elementwise and not counted, as for every other op."""
    import math

    import torch

    batch = math.prod(torch.broadcast_shapes(tuple(query_shape[:-2]), tuple(key_shape[:-2])))
    s_q, d = query_shape[-2:]
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * batch * s_q * s_k * (d + d_v)


def forward_flops(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  device: str = "cpu") -> int:
    """FLOPs (multiply and add counted separately) of one inference forward of ``model`` on ``x``.

    Why the custom entries: in torch 2.13 ``FlopCounterMode`` counts convolutions, ``mm``,
    ``addmm``, ``bmm`` and the CUDA attention kernels (flash, memory-efficient, cuDNN), but on the
    CPU ``scaled_dot_product_attention`` reaches it as the un-decomposed
    ``aten.scaled_dot_product_attention`` (or ``_scaled_dot_product_flash_attention_for_cpu``),
    which has no formula: MPT's window attention would count as zero. Both get the usual
    ``2·S_q·S_k·(d + d_v)`` per batch-head.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {aten.scaled_dot_product_attention: _attention_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        model(x)
        synchronize(device)
    return int(counter.get_total_flops())

"""Throughput and peak memory of MPT inference: our engine vs. a port of the released algorithm.

Each measurement runs in a fresh subprocess (so peak RSS is its own), with random weights of the
preset in ``compat`` routing — the function the released code computes — and checks that both
implementations agree to 1e-4 before timing them.

    python benchmarks/speed.py                       # default table (CPU, 2 threads)
    python benchmarks/speed.py --presets mpt-base --sizes 256 512 --device cpu --threads 2
    python benchmarks/speed.py --presets mpt-base --sizes 512 --allocator-control
    python benchmarks/speed.py --device cuda --sizes 512 2048 4096 --no-reference
    python benchmarks/speed.py --fair-ratio                  # ours vs released, ABAB, per size
    python benchmarks/speed.py --fair-ratio --allocator off  # ... both without the policy
    python benchmarks/speed.py --fair-ratio --threads 1 --clock cpu  # ... on a busy machine
    python benchmarks/speed.py --peak-table --presets mpt-tiny mpt-base --sizes 256 512

``--fair-ratio`` and ``--peak-table`` print their own tables instead of the default one (pass
``--default-table`` to get it as well). The fair ratio times both implementations alternately in
*one* process (after one warm-up run each) under the *same* allocator setting, so neither side
gets a quieter moment, a warmer heap or a different malloc policy; the default table measures
each side in its own process, which is right for peak memory but lets machine noise and the
allocator fall on one side only. The peak table relates the forward's FLOPs (counted with
``torch.utils.flop_counter``) to this machine's measured matmul peak.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from _machine import forward_flops, machine_line, matmul_peak, median, run_child, synchronize

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {bench!r})
from napari_mpt_deblur import create_model
from napari_mpt_deblur.engine import retain_freed_memory
preset, size, impl, device, threads, repeats, dtype = {args!r}
torch.set_num_threads(threads)
torch.manual_seed(0)
# MPT in compat routing computes the released function; other architectures have no routing.
model = create_model(preset, **({{"routing": "compat"}} if preset.startswith("mpt") else {{}}))
model = model.eval().to(device)
x = torch.rand(1, 1, size, size, device=device)
if impl.startswith("reference"):
    from speed import released_forward
    run = lambda: released_forward(model, x)
else:
    amp = {{"bf16": torch.bfloat16, "fp16": torch.float16}}.get(dtype)
    def run():
        with torch.inference_mode():
            if amp is not None:
                with torch.autocast(device.split(":")[0], dtype=amp):
                    return model(x)
            return model(x)
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
# The engine (deblur) runs CPU inference under its allocator policy; so do "ours" and the
# "reference-allocator" control, which shows how much of the gain is the allocator alone.
policy = retain_freed_memory() if impl != "reference" else None
if policy is not None:
    policy.__enter__()
out = run(); sync()  # warm-up: kernels, caches
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = run(); sync(); times.append(time.perf_counter() - t)
peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
if policy is not None:
    policy.__exit__(None, None, None)
torch.save(out.float().cpu(), {tmp!r})
print(json.dumps({{"seconds": min(times), "peak_bytes": peak}}))
"""


def measure(preset, size, impl, device, threads, repeats, dtype="fp32"):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
        tmp = fh.name
    code = _CHILD.format(
        bench=str(HERE), args=(preset, size, impl, device, threads, repeats, dtype), tmp=tmp
    )
    result = run_child(code)
    result["output"] = tmp
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["mpt-base", "mpt-tiny"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], help="fp32, bf16, fp16 (GPU)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--allocator-control", action="store_true",
                        help="also time the reference under the engine's allocator policy")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--fair-ratio", action="store_true",
                        help="ours vs released, alternating runs in one process per size")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="--fair-ratio times: wall clock, or the process's CPU time (robust "
                             "on a busy machine with --threads 1)")
    parser.add_argument("--allocator", choices=["engine", "off"], default="engine",
                        help="fair ratio: both sides under the engine's CPU allocator policy "
                        "(as deblur() runs) or both without it")
    parser.add_argument("--peak-table", action="store_true",
                        help="achieved GFLOP/s against this machine's measured matmul peak")
    parser.add_argument("--peak-n", type=int, default=2048,
                        help="side of the square matmul that measures the peak")
    parser.add_argument("--default-table", action="store_true",
                        help="with --fair-ratio/--peak-table: also print the default table")
    args = parser.parse_args()

    head = machine_line(args.device, args.threads)
    texts = []
    if args.fair_ratio:
        texts.append(fair_ratio_table(args))
    if args.peak_table:
        texts.append(peak_table(args))
    if texts and not args.default_table:
        _emit(head, texts, args.out)
        return
    rows = [
        "| preset | size | implementation | dtype | time (s) | MPix/s | peak memory (MB) | "
        "max abs diff to reference | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in args.presets:
        for size in args.sizes:
            ref = None
            if not args.no_reference and preset.startswith("mpt"):
                ref = measure(preset, size, "reference", args.device, args.threads, args.repeats)
                rows.append(_row(preset, size, "released algorithm (port)", "fp32", ref, None, ref))
                if args.allocator_control:
                    ctl = measure(preset, size, "reference-allocator", args.device, args.threads,
                                  args.repeats)
                    rows.append(_row(preset, size, "released algorithm + our allocator policy",
                                     "fp32", ctl, ref, ref))
            for dtype in args.dtypes:
                ours = measure(preset, size, "ours", args.device, args.threads, args.repeats, dtype)
                rows.append(_row(preset, size, "napari-mpt-deblur", dtype, ours, ref, ref))
            shown = len(args.dtypes) + (ref is not None) * (1 + args.allocator_control)
            print("\n".join(rows[-shown:]), flush=True)
    _emit(head, [*texts, "\n".join(rows)], args.out)


def _emit(head: str, tables: list[str], out: Path | None) -> None:
    """Print the tables under the machine line and, with ``--out``, write the same text."""
    text = head + "\n\n" + "\n\n".join(tables)
    print("\n" + text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


# ----------------------------------------------------------------------------------------------
# Fair ratio: both implementations alternately, in one process, under one allocator setting
# ----------------------------------------------------------------------------------------------


def _mpt(preset: str, device: str) -> torch.nn.Module:
    """``preset`` with seeded random weights in ``compat`` routing (the released function)."""
    import torch

    from napari_mpt_deblur import create_model

    torch.manual_seed(0)
    return create_model(preset, routing="compat").eval().to(device)


def _allocator_context(setting: str, device: str) -> AbstractContextManager:
    """The same allocator setting for both sides: the engine's policy, or glibc's defaults."""
    import contextlib

    from napari_mpt_deblur.engine import retain_freed_memory

    if setting == "engine" and device == "cpu":
        return retain_freed_memory()
    return contextlib.nullcontext()


def allocator_label(setting: str, device: str) -> str:
    """What the allocator setting meant in this run, for the table (the policy is a no-op off
    glibc or when malloc is tuned through the environment, and the GPU has its own allocator)."""
    from napari_mpt_deblur.engine import tuning_available

    if not device.startswith("cpu"):
        return "CUDA caching allocator (both)"
    if setting == "off":
        return "glibc defaults (both)"
    if tuning_available():
        return "engine policy: retain freed memory (both)"
    return "engine policy requested, inactive here: glibc defaults (both)"


def released_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``reference_forward`` with ``x``'s device as the default device.

    Why: the port rebuilds its shift masks with ``torch.zeros`` on every call, without a device,
    so on a GPU they would land on the CPU and the addition to the attention logits would fail
    (checked on the ``meta`` device in tests/test_benchmarks_gpu.py). Under the default-device
    context they are built beside the activations, as on the CPU.
    """
    import torch

    from reference_mpt import reference_forward

    with torch.device(x.device):
        return reference_forward(model, x)


def fair_pair(preset: str, size: int, device: str, threads: int, repeats: int,
              allocator: str, clock: str = "wall") -> dict:
    """Median seconds of ours and of the released algorithm, timed ABAB… in this process.

    Both sides use one model (same weights), one input, ``inference_mode`` and the same allocator
    setting, held across the whole loop; one warm-up run each comes first (kernels, caches,
    per-size masks). Returns the medians, their ratio and the outputs' max abs difference.
    ``clock="cpu"`` times with the process's CPU time instead of the wall clock: with one
    thread on a machine that other jobs share, a forward that waits for the core does not
    count, so the ratio stays the algorithms' (on a GPU only the wall clock means anything).
    """
    import time

    import torch

    torch.set_num_threads(threads)
    model = _mpt(preset, device)
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    sides = {"ours": lambda: model(x), "released": lambda: released_forward(model, x)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    with _allocator_context(allocator, device), torch.inference_mode():
        warm = {name: run() for name, run in sides.items()}
        synchronize(device)
        diff = (warm["ours"].float() - warm["released"].float()).abs().max().item()
        del warm
        now = time.process_time if clock == "cpu" else time.perf_counter
        for _ in range(repeats):
            for name, run in sides.items():
                start = now()
                run()
                synchronize(device)
                times[name].append(now() - start)
    ours, released = median(times["ours"]), median(times["released"])
    return {"preset": preset, "size": size, "ours_s": ours, "released_s": released,
            "ratio": released / ours, "max_abs_diff": diff,
            "allocator": allocator_label(allocator, device), "times": times}


def fair_ratio_table(args: argparse.Namespace) -> str:
    """One fresh process per (preset, size), so that no size inherits another's heap."""
    rows = [
        f"Fair ratio (alternating runs in one process, median of {args.repeats}, "
        f"{'CPU time' if args.clock == 'cpu' else 'wall clock'}, inference_mode, fp32, "
        "same weights):",
        "",
        "| preset | size | ours (s) | released (s) | ratio | max abs diff of outputs | "
        "allocator setting |",
        "|---|---|---|---|---|---|---|",
    ]
    presets = [p for p in args.presets if p.startswith("mpt")]
    for preset in presets:
        for size in args.sizes:
            call = (preset, size, args.device, args.threads, args.repeats, args.allocator,
                    args.clock)
            r = run_child(_IMPORT_SPEED + f"print(json.dumps(speed.fair_pair(*{call!r})))")
            rows.append(
                f"| {preset} | {size}² | {r['ours_s']:.3f} | {r['released_s']:.3f} | "
                f"{r['ratio']:.2f}× | {r['max_abs_diff']:.1e} | {r['allocator']} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


_IMPORT_SPEED = f"import json, sys\nsys.path.insert(0, {str(HERE)!r})\nimport speed\n"


# ----------------------------------------------------------------------------------------------
# Achieved GFLOP/s against the measured matmul peak
# ----------------------------------------------------------------------------------------------


def peaks(n: int, device: str, threads: int) -> dict:
    """fp32 and bf16 matmul peaks (GFLOP/s) of this machine at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    return {dtype: matmul_peak(n, dtype, device) for dtype in ("fp32", "bf16")}


def achieved(preset: str, size: int, device: str, threads: int, repeats: int,
             dtype: str) -> dict:
    """FLOPs of one forward of ``preset`` (default routing, as shipped) at ``size`` and the
    median time of that forward in ``dtype``, under the engine's allocator policy on the CPU
    (as ``deblur`` runs it). FLOPs are counted in fp32: autocast changes precision, not work."""
    import time

    import torch

    from napari_mpt_deblur import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(preset).eval().to(device)
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    flops = forward_flops(model, x, device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def run() -> None:
        if amp is None:
            model(x)
        else:
            with torch.autocast(device.split(":")[0], dtype=amp):
                model(x)

    times = []
    with _allocator_context("engine", device), torch.inference_mode():
        run()
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return {"flops": flops, "seconds": median(times)}


def peak_table(args: argparse.Namespace) -> str:
    """Peak in one process, then each (preset, size, dtype) in its own."""
    call = (args.peak_n, args.device, args.threads)
    peak = run_child(_IMPORT_SPEED + f"print(json.dumps(speed.peaks(*{call!r})))")
    rows = [
        f"Achieved GFLOP/s (forward FLOPs / median of {args.repeats}) against this machine's "
        f"{args.peak_n}² matmul peak, {args.threads} threads: fp32 {peak['fp32']:.1f} GFLOP/s, "
        f"bf16 {peak['bf16']:.1f} GFLOP/s (best of 3):",
        "",
        "| model | size | dtype | GFLOP per forward | s | achieved GFLOP/s | "
        "% of measured fp32 peak | % of bf16 peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset in args.presets:
        for size in args.sizes:
            for dtype in args.dtypes:
                call = (preset, size, args.device, args.threads, args.repeats, dtype)
                r = run_child(_IMPORT_SPEED + f"print(json.dumps(speed.achieved(*{call!r})))")
                rate = r["flops"] / 1e9 / r["seconds"]
                rows.append(
                    f"| {preset} | {size}² | {dtype} | {r['flops'] / 1e9:.1f} | "
                    f"{r['seconds']:.3f} | {rate:.1f} | {100 * rate / peak['fp32']:.1f} % | "
                    f"{100 * rate / peak['bf16']:.1f} % |"
                )
                print(rows[-1], flush=True)
    return "\n".join(rows)


def _row(preset, size, impl, dtype, result, ref, ref_for_diff):
    import torch

    mpix = size * size / 1e6 / result["seconds"]
    diff = "–"
    speedup = "1.0×" if ref is None and impl.startswith("released") else "–"
    if ref_for_diff is not None and result is not ref_for_diff:
        a, b = torch.load(result["output"]), torch.load(ref_for_diff["output"])
        diff = f"{(a - b).abs().max().item():.1e}"
        speedup = f"{ref_for_diff['seconds'] / result['seconds']:.2f}×"
    return (
        f"| {preset} | {size}² | {impl} | {dtype} | {result['seconds']:.2f} | {mpix:.3f} | "
        f"{result['peak_bytes'] / 1e6:.0f} | {diff} | {speedup} |"
    )


if __name__ == "__main__":
    main()

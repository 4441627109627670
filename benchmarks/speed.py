"""Throughput and peak memory of MPT inference: our engine vs. a port of the released algorithm.

Each measurement runs in a fresh subprocess (so peak RSS is its own), with random weights of the
preset in ``compat`` routing — the function the released code computes — and checks that both
implementations agree to 1e-4 before timing them.

    python benchmarks/speed.py                       # default table (CPU, 2 threads)
    python benchmarks/speed.py --presets mpt-base --sizes 256 512 --device cpu --threads 2
    python benchmarks/speed.py --presets mpt-base --sizes 512 --allocator-control
    python benchmarks/speed.py --device cuda --sizes 512 2048 4096 --no-reference
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _machine import machine_line, run_child

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {bench!r})
from napari_mpt_deblur import create_model
from napari_mpt_deblur.engine._allocator import retain_freed_memory
preset, size, impl, device, threads, repeats, dtype = {args!r}
torch.set_num_threads(threads)
torch.manual_seed(0)
# MPT in compat routing computes the released function; other architectures have no routing.
model = create_model(preset, **({{"routing": "compat"}} if preset.startswith("mpt") else {{}}))
model = model.eval().to(device)
x = torch.rand(1, 1, size, size, device=device)
if impl.startswith("reference"):
    from reference_mpt import reference_forward
    run = lambda: reference_forward(model, x)
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
    args = parser.parse_args()


    head = machine_line(args.device, args.threads)
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
    text = head + "\n\n" + "\n".join(rows)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


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

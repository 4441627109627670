"""Where the time of one MPT forward goes: torch.profiler on the CPU, by operator and by part.

    python benchmarks/profile_forward.py --preset mpt-tiny --routing aligned --size 512
    python benchmarks/profile_forward.py --preset mpt-base --routing compat --size 256 --dtype bf16

One warm-up forward, then one profiled forward (random weights and input, ``inference_mode``, the
engine's allocator policy, bf16 via CPU autocast as ``deblur`` runs it). The parts are
``record_function`` ranges wrapped around the block methods for this run only, so the model code
carries no profiling hooks; their times include the operators they call.
"""

from __future__ import annotations

import argparse
import functools
import time

from _machine import machine_line

_PARTS = (
    ("layers", "DualAttention", "isca", "ISCA (channel attention, all of it)"),
    ("layers", "DualAttention", "isca_qkv", "ISCA: q/k/v projection (one GEMM + one dwconv)"),
    ("layers", "DualAttention", "cswa", "CSWA (window attention, all of it)"),
    ("layers", "DualAttention", "_attend", "CSWA: normalise, bias, SDPA"),
    ("layers", "FEFN", "forward", "FEFN (feed-forward)"),
    ("layers", "LayerNorm2d", "forward", "LayerNorm"),
    ("mpt", "Downsample", "forward", "down/upsample convs"),
    ("mpt", "Upsample", "forward", "down/upsample convs"),
)


def _label_parts() -> None:
    from torch.profiler import record_function

    from napari_mpt_deblur.models import layers, mpt

    modules = {"layers": layers, "mpt": mpt}
    for module, cls_name, method, label in _PARTS:
        cls = getattr(modules[module], cls_name)
        inner = getattr(cls, method)

        def labelled(*args, _inner=inner, _label=label, **kwargs):
            with record_function("## " + _label):
                return _inner(*args, **kwargs)

        setattr(cls, method, functools.wraps(inner)(labelled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mpt-tiny")
    parser.add_argument("--routing", default="aligned", choices=["aligned", "compat"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=14, help="operators to list")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.engine import retain_freed_memory

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _label_parts()
    model = create_model(args.preset, routing=args.routing).eval()
    x = torch.rand(1, 1, args.size, args.size)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"
        ):
            return model(x)

    with retain_freed_memory():
        forward()
        start = time.perf_counter()
        forward()
        seconds = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
    events = prof.key_averages()
    ops = [e for e in events if not e.key.startswith("## ")]
    parts = [e for e in events if e.key.startswith("## ")]
    total = sum(e.self_cpu_time_total for e in ops)
    print(machine_line("cpu", args.threads))
    print(f"\n{args.preset} ({args.routing}), {args.size}², {args.dtype}: forward {seconds:.3f} s "
          f"unprofiled, {total / 1e6:.3f} s of operator time profiled\n")
    print("| part (incl. its operators) | ms | % |\n|---|---:|---:|")
    for e in sorted(parts, key=lambda e: -e.cpu_time_total):
        share = 100 * e.cpu_time_total / total
        print(f"| {e.key[3:]} | {e.cpu_time_total / 1e3:.0f} | {share:.1f} |")
    print("\n| operator (self time) | calls | ms | % |\n|---|---:|---:|---:|")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.0f} | "
              f"{100 * e.self_cpu_time_total / total:.1f} |")


if __name__ == "__main__":
    main()

"""Time and peak memory of the engine against image size, and a large image within a budget.

Each row runs ``napari_mpt_deblur.deblur`` on a random uint16 image in a fresh subprocess, so
the peak resident memory (``ru_maxrss``) is that run's own. "baseline" is the resident memory
after the model is loaded and before the image exists (Python, torch, weights); "per MPix" is
(peak - baseline) / megapixels, the number that grows with the image. Whole-image rows force
``tile=0``; the budget rows pass ``max_memory`` and let the engine choose tiles.

    python benchmarks/memory_scaling.py                                   # scaling, mpt-tiny
    python benchmarks/memory_scaling.py --sizes 512 1024 2048 --budget-size 8192 --budget 8G \
        --out docs/results/memory_scaling.md --plot docs/images/memory_scaling.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _machine import machine_line, run_child
from napari_mpt_deblur.engine.predict import parse_memory

_CHILD = r"""
import json, resource, time
import numpy as np
import torch
from napari_mpt_deblur import deblur, load_model
from napari_mpt_deblur.engine.predict import DeblurReport
from napari_mpt_deblur.models.pretrained import canonical_name
model_name, size, tile, budget, device, threads = {args!r}
torch.set_num_threads(threads)
model = load_model(canonical_name(model_name), device=device)
deblur(np.zeros((128, 128), np.uint16), model, device=device, tile=0)  # warm-up: kernels
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rng = np.random.default_rng(0)
image = rng.integers(100, 4000, size=(size, size), dtype=np.uint16)
report = DeblurReport()
t = time.perf_counter()
out = deblur(image, model, device=device, tile=tile, max_memory=budget, report=report)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert out.shape == image.shape and out.dtype == image.dtype
print(json.dumps(dict(seconds=seconds, peak=peak, baseline=baseline, tile=report.tile,
                      n_tiles=report.n_tiles)))
"""


def measure(model: str, size: int, tile: int | None, budget: str | None, device: str,
            threads: int) -> dict:
    return run_child(_CHILD.format(args=(model, size, tile, budget, device, threads)))


def _row(model: str, size: int, mode: str, r: dict) -> str:
    mpix = size * size / 1e6
    mb = 1024**2
    tiles = "whole" if r["n_tiles"] <= 1 else f"{r['n_tiles']} × {r['tile']}²"
    return (
        f"| {model} | {size}² | {mode} | {tiles} | {r['seconds']:.2f} | {mpix / r['seconds']:.3f} "
        f"| {r['peak'] / mb:.0f} | {r['baseline'] / mb:.0f} "
        f"| {(r['peak'] - r['baseline']) / mb / mpix:.0f} |"
    )


def _plot(points: list[tuple[int, dict]], model: str, path: Path, head: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mpix = [s * s / 1e6 for s, _ in points]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_t.plot(mpix, [r["seconds"] for _, r in points], "o-")
    ax_t.set(xlabel="image size (megapixels)", ylabel="time (s)", xscale="log", yscale="log",
             title=f"{model}: time")
    ax_m.plot(mpix, [r["peak"] / 2**30 for _, r in points], "o-", label="peak RSS")
    ax_m.plot(mpix, [r["baseline"] / 2**30 for _, r in points], "--", label="baseline")
    ax_m.set(xlabel="image size (megapixels)", ylabel="memory (GiB)", xscale="log",
             title=f"{model}: peak memory (whole image)")
    ax_m.legend()
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(head, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpt-tiny", help="bundled name or checkpoint")
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512, 1024, 2048],
                        help="whole-image sizes")  # fmt: skip
    parser.add_argument("--budget-size", type=int, default=None,
                        help="also run this size under --budget (e.g. 8192)")  # fmt: skip
    parser.add_argument("--budget", default="8G", help="memory limit for --budget-size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--plot", type=Path, default=None, help="write the scaling plot here")
    args = parser.parse_args()
    head = machine_line(args.device, args.threads)
    rows = [
        "| model | size | mode | tiles | time (s) | MPix/s | peak RSS (MB) | baseline (MB) "
        "| per MPix (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for size in args.sizes:
        r = measure(args.model, size, 0, None, args.device, args.threads)
        points.append((size, r))
        rows.append(_row(args.model, size, "whole image", r))
        print(rows[-1], flush=True)
    if args.budget_size:
        r = measure(args.model, args.budget_size, None, args.budget, args.device, args.threads)
        within = "within" if r["peak"] <= parse_memory(args.budget) else "OVER"
        rows.append(_row(args.model, args.budget_size, f"max_memory {args.budget} ({within})", r))
        print(rows[-1], flush=True)
    text = head + "\n\n" + "\n".join(rows)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot and points:
        _plot(points, args.model, args.plot, head.split(" Command:")[0])


if __name__ == "__main__":
    main()

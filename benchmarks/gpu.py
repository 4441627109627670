"""One prepared GPU benchmark, for the day a CUDA device is lent: run it once, keep what it writes.

    bash benchmarks/gpu.sh                            # into $OUT, else benchmarks/results/
    python benchmarks/gpu.py --out benchmarks/results  # the same, without the wrapper
    python benchmarks/gpu.py --dry-run --out /tmp/x    # same code, tiny sizes, CPU, seconds

Why one script: device time is lent in short, rare slots (minutes), so every measurement the
project still lacks on a GPU is prepared here and runs in one command that keeps to its own time
budget (``--budget-s``, default 400 s from the start of the script): before each row it
estimates the row's cost (scaled by how far the finished rows overran their estimates in total)
and skips the row, with a note, when it would not fit. A row that overruns anyway is cut off by a
watchdog at ``--hard-limit-s`` (default: budget + 60 s, so the command ends inside 8 minutes),
which records it and exits. Results are rewritten after every row, so a run killed from outside
still leaves every finished row on disk. A failing row (e.g. out of memory) is recorded as
failed and the next one runs.

Rows, in the order they run (cheap and most wanted first):

* **precision** — bf16 and fp16 autocast against fp32 on the bundled sample (a real BBBC006 crop
  with simulated defocus, normalised as the engine does): max abs difference and PSNR of the
  output against the fp32 output (data range 1, model units), and the time of each.
  For the shipped model (trained ``mpt-tiny``) and the published ``mpt-base`` (random weights).
* **reference** — the published MPT (``mpt-base``, random weights, ``compat`` routing) in fp32
  against the port of the released algorithm (``reference_mpt.py``): same weights, same input,
  alternating runs in one process (``speed.fair_pair``), medians, outputs compared.
* **training** — optimiser steps per second of ``mpt-tiny`` on random 128² patches, batch 4: a
  minimal step (forward under the training loop's autocast choice, L1 loss, backward, AdamW;
  fp16 adds the loop's GradScaler) — the arithmetic of ``train/loop.py``'s step without its data
  pipeline, so it is an upper bound on a real run's rate.
* **tiled** — ``deblur(..., device="cuda", tile=1024)`` of a 4096² uint16 image (the sample
  mirrored out to size) with the engine's default autocast, after a one-tile warm-up: wall time,
  MPix/s and ``torch.cuda.max_memory_allocated``.

``--dry-run`` runs exactly these rows on the CPU with tiny sizes (``mpt-test`` for the published
model, 128–256 px images, 128 px tiles, 2 steps), so CI can check that the command works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

STARTED = time.perf_counter()  # the budget counts from here: imports and CUDA start-up included
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import machine_line, median, synchronize  # noqa: E402

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one run; the GPU plan and the dry-run plan differ only here."""

    device: str
    published: str  # the architecture compared with the released code
    shipped: str | None  # bundled trained model (None: the default one)
    reference_sizes: tuple[int, ...]
    precision_crop: int  # side of the sample crop for the precision rows
    tiled_size: int
    tile: int
    train_model: str
    train_patch: int
    train_batch: int
    train_steps: int
    train_warmup: int
    repeats: int
    warmup: int  # untimed forwards before the timed ones (the dry run times nothing it reports)
    # Rough seconds per row on the target device, before scaling by observed overruns.
    estimates: dict[str, float]


GPU_PLAN = Plan(
    device="cuda", published="mpt-base", shipped=None, reference_sizes=(512, 2048),
    precision_crop=512, tiled_size=4096, tile=1024, train_model="mpt-tiny", train_patch=128,
    train_batch=4, train_steps=20, train_warmup=3, repeats=5, warmup=1,
    estimates={"precision": 40, "reference-512": 20, "reference-2048": 90, "training": 30,
               "tiled-shipped": 30, "tiled-published": 120},
)

DRY_PLAN = Plan(
    device="cpu", published="mpt-test", shipped=None, reference_sizes=(128, 256),
    precision_crop=128, tiled_size=256, tile=128, train_model="mpt-test", train_patch=128,
    train_batch=1, train_steps=1, train_warmup=1, repeats=1, warmup=0,
    estimates={"precision": 2, "reference-128": 2, "reference-256": 4, "training": 2,
               "tiled-shipped": 3, "tiled-published": 3},
)


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def _peak_mb(device: str) -> float | None:
    """Peak GPU memory since the last reset (None on the CPU, where the dry run has no
    equivalent that is this row's own)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e6
    return None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sample_input(side: int) -> np.ndarray:
    """The bundled sample's central ``side``² crop in model units, as the engine would feed it:
    the accuracy cost of low precision depends on the data, so it is measured on a real image."""
    import numpy as np

    from napari_mpt_deblur import load_sample
    from napari_mpt_deblur.engine.normalize import normalize, percentile_range

    image = load_sample().blurred
    y0, x0 = ((s - side) // 2 for s in image.shape)
    crop = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
    return normalize(crop, *percentile_range(crop))


def _model(name: str | None, device: str, published: bool) -> torch.nn.Module:
    """The shipped trained model (``published=False``) or the published architecture with
    seeded random weights in ``compat`` routing."""
    import torch

    from napari_mpt_deblur import create_model, load_model
    from napari_mpt_deblur.models.pretrained import canonical_name

    if not published:
        return load_model(canonical_name(name), device=device).eval()
    torch.manual_seed(0)
    return create_model(name, routing="compat").eval().to(device)


def precision_rows(plan: Plan) -> list[dict[str, Any]]:
    """bf16 and fp16 against fp32, for the shipped and the published model."""
    import torch

    from napari_mpt_deblur.models.info import model_info

    x = torch.from_numpy(_sample_input(plan.precision_crop))[None, None].to(plan.device)
    rows = []
    for label, name, published in (("shipped", plan.shipped, False),
                                   ("published", plan.published, True)):
        model = _model(name, plan.device, published)
        model_name = (model_info(model).name or name) if not published else name
        ref, fp32_s = _timed_forward(model, x, None, plan)
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            out, seconds = _timed_forward(model, x, dtype, plan)
            err = (out.float() - ref).abs()
            mse = float((err**2).mean())
            # Capped at 100 dB (identical outputs); NaN when the low-precision output overflowed.
            psnr = (float("nan") if not math.isfinite(mse) else 100.0 if mse == 0
                    else min(100.0, -10 * math.log10(mse)))
            rows.append({
                "model": f"{model_name} ({label})", "dtype": dtype_name,
                "image": f"sample {plan.precision_crop}²",
                "max_abs_diff": float(err.max()), "psnr_db": psnr,
                "fp32_s": fp32_s, "dtype_s": seconds, "speedup": fp32_s / seconds,
            })
        del model
    return rows


def _timed_forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                   plan: Plan) -> tuple[torch.Tensor, float]:
    """Output (float32) and median seconds of ``plan.repeats`` forwards after ``plan.warmup``
    untimed ones (kernel selection, per-size caches)."""
    import contextlib

    import torch

    cast = (torch.autocast(plan.device.split(":")[0], dtype=dtype) if dtype is not None
            else contextlib.nullcontext())
    times = []
    with torch.inference_mode(), cast:
        for _ in range(plan.warmup):
            model(x)
        synchronize(plan.device)
        for _ in range(max(1, plan.repeats)):
            start = time.perf_counter()
            out = model(x)
            synchronize(plan.device)
            times.append(time.perf_counter() - start)
    return out.float(), median(times)


def reference_row(plan: Plan, size: int) -> dict[str, Any]:
    """Published MPT (fp32) against the released algorithm, alternating in this process."""
    import torch

    from speed import fair_pair

    _reset_peak(plan.device)
    r = fair_pair(plan.published, size, plan.device, torch.get_num_threads(), plan.repeats,
                  "engine")
    return {
        "model": plan.published, "size": size, "ours_s": r["ours_s"],
        "released_s": r["released_s"], "ratio": r["ratio"], "max_abs_diff": r["max_abs_diff"],
        "mpix_per_s_ours": size * size / 1e6 / r["ours_s"], "allocator": r["allocator"],
        "peak_mb": _peak_mb(plan.device),
    }


def training_row(plan: Plan) -> dict[str, Any]:
    """Optimiser steps per second of the training loops' own step (``train.engine.Trainer``:
    AdamW, autocast and loss scaling as training uses them, and its read-back of the loss every
    step) on random patches, without gradient clipping, as the rows measured before it."""
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.train.config import OptimConfig
    from napari_mpt_deblur.train.engine import Trainer

    device = torch.device(plan.device)
    torch.manual_seed(0)
    model = create_model(plan.train_model).to(device).train()
    # amp "auto" is the training loop's default: bf16/fp16 on CUDA only
    optim = OptimConfig(lr=2e-4, weight_decay=1e-4, warmup_steps=0, grad_clip=0.0, amp="auto")
    total = plan.train_warmup + plan.train_steps
    trainer = Trainer(model, optim, total_steps=total, device=device)
    amp = trainer.amp_dtype
    shape = (plan.train_batch, 1, plan.train_patch, plan.train_patch)
    gen = torch.Generator().manual_seed(0)
    blurred, sharp = (torch.rand(shape, generator=gen).to(device) for _ in range(2))

    def l1(ctx: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.nn.functional.l1_loss(ctx.forward(blurred).float(), sharp), {}

    done = iter(range(total))

    def step() -> None:
        trainer.step(next(done), l1)

    _reset_peak(plan.device)
    for _ in range(plan.train_warmup):  # kernels, cuDNN algorithm choice, optimiser state
        step()
    synchronize(plan.device)
    start = time.perf_counter()
    for _ in range(plan.train_steps):
        step()
    synchronize(plan.device)
    seconds = time.perf_counter() - start
    return {
        "model": plan.train_model, "patch": plan.train_patch, "batch": plan.train_batch,
        "amp": "fp32" if amp is None else str(amp).removeprefix("torch."),
        "steps": plan.train_steps, "steps_per_s": plan.train_steps / seconds,
        "patches_per_s": plan.train_steps * plan.train_batch / seconds,
        "peak_mb": _peak_mb(plan.device),
    }


def _mirrored(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` reflected out to ``side``² (a real-looking large image from the small sample)."""
    import numpy as np

    block = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = [-(-side // s) for s in block.shape]
    return np.ascontiguousarray(np.tile(block, reps)[:side, :side])


def tiled_row(plan: Plan, published: bool) -> dict[str, Any]:
    """``deblur`` of a large uint16 image in fixed tiles, with the engine's default autocast."""
    from napari_mpt_deblur import deblur, load_sample
    from napari_mpt_deblur.engine.predict import DeblurReport

    name = plan.published if published else plan.shipped
    model = _model(name, plan.device, published)
    sample = load_sample().blurred
    warm = _mirrored(sample, plan.tile)
    deblur(warm, model, axes="YX", device=plan.device, tile=plan.tile)  # kernels, caches
    image = _mirrored(sample, plan.tiled_size)
    report = DeblurReport()
    _reset_peak(plan.device)
    synchronize(plan.device)
    start = time.perf_counter()
    deblur(image, model, axes="YX", device=plan.device, tile=plan.tile, report=report)
    synchronize(plan.device)
    seconds = time.perf_counter() - start
    label = "published" if published else "shipped"
    return {
        "model": f"{name if published else report.model} ({label})",
        "image": f"{plan.tiled_size}² uint16",
        "tile": report.tile, "tiles": report.n_tiles, "amp": "engine default (auto)",
        "seconds": seconds, "mpix_per_s": plan.tiled_size**2 / 1e6 / seconds,
        "peak_mb": _peak_mb(plan.device), "retries": list(report.retries),
    }


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

# section -> (title, [(column header, row key, format)])
SECTIONS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "reference": (
        "Published MPT (fp32) vs the released algorithm (same weights, alternating runs)",
        [("model", "model", "{}"), ("size", "size", "{}²"), ("ours (s)", "ours_s", "{:.3f}"),
         ("released (s)", "released_s", "{:.3f}"), ("ratio", "ratio", "{:.2f}×"),
         ("max abs diff", "max_abs_diff", "{:.1e}"), ("MPix/s ours", "mpix_per_s_ours", "{:.2f}"),
         ("peak memory, both (MB)", "peak_mb", "{:.0f}"),
         ("allocator", "allocator", "{}")],
    ),
    "precision": (
        "Reduced precision: accuracy cost against fp32 (bundled sample, model units)",
        [("model", "model", "{}"), ("dtype", "dtype", "{}"), ("image", "image", "{}"),
         ("max abs diff vs fp32", "max_abs_diff", "{:.1e}"), ("PSNR vs fp32 (dB)", "psnr_db",
                                                               "{:.1f}"),
         ("fp32 (s)", "fp32_s", "{:.4f}"), ("dtype (s)", "dtype_s", "{:.4f}"),
         ("speed-up", "speedup", "{:.2f}×")],
    ),
    "tiled": (
        "Tiled throughput through deblur()",
        [("model", "model", "{}"), ("image", "image", "{}"), ("tile", "tile", "{}"),
         ("tiles", "tiles", "{}"), ("amp", "amp", "{}"), ("time (s)", "seconds", "{:.2f}"),
         ("MPix/s", "mpix_per_s", "{:.2f}"), ("peak GPU memory (MB)", "peak_mb", "{:.0f}")],
    ),
    "training": (
        "Training throughput (minimal step on random patches)",
        [("model", "model", "{}"), ("patch", "patch", "{}²"), ("batch", "batch", "{}"),
         ("amp", "amp", "{}"), ("steps timed", "steps", "{}"),
         ("steps/s", "steps_per_s", "{:.2f}"), ("patches/s", "patches_per_s", "{:.1f}"),
         ("peak memory (MB)", "peak_mb", "{:.0f}")],
    ),
}


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def render(head: str, results: list[dict[str, Any]]) -> str:
    """Markdown: the machine line, then one table per section with every planned row (rows not
    run show their status in the note column)."""
    parts = [head]
    for section, (title, columns) in SECTIONS.items():
        lines = [f"### {title}", "",
                 "| " + " | ".join(h for h, _, _ in columns) + " | note |",
                 "|" + "---|" * (len(columns) + 1)]
        for row in (r for r in results if r["section"] == section):
            values = row.get("values", {})
            keys = {**row.get("keys", {}), **values}
            cells = [_cell(keys.get(key), fmt) for _, key, fmt in columns]
            lines.append("| " + " | ".join(cells) + f" | {row.get('note', '')} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def planned_rows(plan: Plan) -> list[tuple[str, str, dict[str, Any], Callable[[], Any]]]:
    """``(id, section, keys, run)`` in running order; ``run`` returns one row's values or a list
    of them (the precision rows share their fp32 runs)."""
    rows: list[tuple[str, str, dict[str, Any], Callable[[], Any]]] = [
        ("precision", "precision", {"model": "shipped + published", "dtype": "bf16, fp16"},
         lambda: precision_rows(plan)),
    ]
    first, *rest = plan.reference_sizes
    rows.append((f"reference-{first}", "reference", {"model": plan.published, "size": first},
                 lambda: reference_row(plan, first)))
    rows.append(("training", "training", {"model": plan.train_model, "patch": plan.train_patch,
                                          "batch": plan.train_batch},
                 lambda: training_row(plan)))
    rows.append(("tiled-shipped", "tiled", {"model": "shipped", "image": f"{plan.tiled_size}²"},
                 lambda: tiled_row(plan, published=False)))
    for size in rest:
        rows.append((f"reference-{size}", "reference", {"model": plan.published, "size": size},
                     lambda size=size: reference_row(plan, size)))
    rows.append(("tiled-published", "tiled",
                 {"model": plan.published, "image": f"{plan.tiled_size}²"},
                 lambda: tiled_row(plan, published=True)))
    return rows


def run(plan: Plan, out_dir: Path, budget_s: float, hard_limit_s: float,
        stem: str) -> list[dict[str, Any]]:
    """Run the planned rows within ``budget_s`` seconds, rewriting the outputs after each."""
    import torch

    head = machine_line(plan.device) + _precision_settings(plan.device)
    rows = planned_rows(plan)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    current: dict[str, Any] = {}
    estimated = taken_total = 0.0  # over finished rows: how far reality exceeds the estimates
    out_dir.mkdir(parents=True, exist_ok=True)

    def cut_off() -> None:
        """Watchdog: a GPU kernel cannot be interrupted, so record the row and leave."""
        with lock:
            done = {r["id"] for r in results}
            for row_id, section, keys, _ in rows:
                if row_id in done:
                    continue
                note = (f"failed: cut off at the hard limit ({hard_limit_s:.0f} s)"
                        if row_id == current.get("id") else "skipped: hard limit reached")
                results.append({"id": row_id, "section": section, "keys": keys,
                                "status": "failed" if "failed" in note else "skipped",
                                "note": note})
            _write(out_dir, stem, head, plan, budget_s, results)
        print(f"hard limit of {hard_limit_s:.0f} s reached; partial results written", flush=True)
        os._exit(3)

    watchdog = threading.Timer(max(0.0, hard_limit_s - (time.perf_counter() - STARTED)), cut_off)
    watchdog.daemon = True
    watchdog.start()
    for row_id, section, keys, fn in rows:
        elapsed = time.perf_counter() - STARTED
        overrun = max(1.0, taken_total / estimated) if estimated else 1.0
        estimate = plan.estimates.get(row_id, 30.0) * overrun
        base = {"id": row_id, "section": section, "keys": keys}
        new: list[dict[str, Any]]
        if elapsed + estimate > budget_s:
            note = (f"skipped: time budget ({estimate:.0f} s estimated, "
                    f"{max(0.0, budget_s - elapsed):.0f} s of {budget_s:.0f} s left)")
            new = [{**base, "status": "skipped", "note": note}]
        else:
            current["id"] = row_id
            t0 = time.perf_counter()
            try:
                values = fn()
            except Exception as exc:  # one failed row (OOM, missing kernel) must not end the run
                new = [{**base, "status": "failed",
                        "note": f"failed: {type(exc).__name__}: {str(exc)[:160]}"}]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                new = [{**base, "keys": {}, "status": "ok", "values": v}
                       for v in (values if isinstance(values, list) else [values])]
            taken = time.perf_counter() - t0
            for r in new:
                r["seconds_taken"] = taken
            estimated += plan.estimates.get(row_id, 30.0)
            taken_total += taken
        with lock:
            results.extend(new)
            _write(out_dir, stem, head, plan, budget_s, results)
        print(f"[{time.perf_counter() - STARTED:6.1f} s] {row_id}: {new[-1]['status']}",
              flush=True)
    watchdog.cancel()
    return results


def _precision_settings(device: str) -> str:
    """TF32 switches decide what "fp32" means on an NVIDIA GPU, so the table states them."""
    import torch

    if not device.startswith("cuda"):
        return ""
    return (f" TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cuDNN {torch.backends.cudnn.allow_tf32}.")


def _write(out_dir: Path, stem: str, head: str, plan: Plan, budget_s: float,
           results: list[dict[str, Any]]) -> None:
    """Markdown and JSON of everything so far (atomically, so a kill leaves whole files)."""
    payload = {
        "machine": head, "plan": dataclasses.asdict(plan), "budget_s": budget_s,
        "elapsed_s": time.perf_counter() - STARTED, "rows": results,
    }
    for suffix, text in ((".md", render(head, results)),
                         (".json", json.dumps(payload, indent=1, default=str) + "\n")):
        path = out_dir / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for gpu_benchmark.md/.json (dry run: gpu_dry_run.*)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds from start after which no row starts that would not "
                        "fit (default 400; dry run 60)")
    parser.add_argument("--hard-limit-s", type=float, default=None,
                        help="watchdog: record and exit at this many seconds (default budget+60)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same rows on the CPU with tiny sizes (for CI)")
    parser.add_argument("--device", default=None, help="default cuda (dry run: cpu)")
    args = parser.parse_args(argv)

    import torch

    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.device:
        plan = dataclasses.replace(plan, device=args.device)
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.dry_run else 400.0)
    hard = args.hard_limit_s if args.hard_limit_s is not None else budget + 60.0
    stem = "gpu_dry_run" if args.dry_run else "gpu_benchmark"
    results = run(plan, args.out, budget, hard, stem)
    print((args.out / f"{stem}.md").read_text())
    return 0 if all(r["status"] != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Training steps per second on this machine: float32 against bf16 autocast, channels-last and
``torch.compile``, for the presets we train on CPUs.

Each variant runs in a fresh process (so compile caches, thread pools and peak memory are its
own): it builds the preset, runs ``--warmup`` optimiser steps (which include compilation), then
times ``--steps`` steps of the same shape as training on random patches, taken by the training
engine's :class:`~napari_mpt_deblur.train.engine.Trainer` itself (AdamW, PSNR loss, gradient
clipping, its autocast and ``torch.compile``), so the table times the step training runs. "bf16"
is the trainer's ``amp: bf16``: on a CPU without native bf16 it trains in float32, and the
row's ``autocast`` says so. The loss after the timed steps, from the same seed in every
variant, shows whether a variant still learns the same thing; the step time is the median.

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --presets mpt-tiny htcsf --threads 1 2 \\
        --variants fp32 bf16 compile compile+bf16
"""

from __future__ import annotations

import argparse
import json
import textwrap

from _machine import machine_line, run_child

VARIANTS = ("fp32", "bf16", "channels_last", "compile", "compile+bf16")

CHILD = textwrap.dedent(
    """
    import json, time, torch
    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.train import OptimConfig, Trainer
    from napari_mpt_deblur.train.losses import pixel_loss

    torch.set_num_threads({threads})
    torch.manual_seed(0)
    variant = {variant!r}
    model = create_model({preset!r}, routing="aligned") if {preset!r}.startswith("mpt") \\
        else create_model({preset!r})
    memory_format = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    # The training step itself: the Trainer every run uses (AdamW, clipping, autocast, compile),
    # at a constant learning rate so that every timed step does the same work.
    optim = OptimConfig(lr=1e-4, min_lr=1e-4, warmup_steps=0, schedule="constant",
                        weight_decay=1e-4, grad_clip=1.0,
                        amp="bf16" if "bf16" in variant else "off",
                        compile=variant.startswith("compile"))
    trainer = Trainer(model, optim, total_steps={warmup} + {steps},
                      device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    sharp = torch.rand({batch}, 1, {patch}, {patch}, generator=gen)
    blurred = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2) + 0.01 * torch.randn(
        sharp.shape, generator=gen)
    blurred = blurred.contiguous(memory_format=memory_format)

    def loss_fn(ctx):
        return pixel_loss(ctx.forward(blurred).float(), sharp, "psnr"), {{}}

    done = 0

    def step():
        global done
        result = trainer.step(done, loss_fn)
        done += 1
        return result.loss

    start = time.perf_counter()
    for _ in range({warmup}):
        step()
    warm = time.perf_counter() - start
    times = []
    for _ in range({steps}):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    times.sort()
    amp = str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else "float32"
    print(json.dumps({{"median_s": times[len(times) // 2], "warmup_s": warm, "loss": loss,
                      "autocast": amp}}))
    """
)


def measure(preset: str, variant: str, threads: int, *, batch: int, patch: int,
            warmup: int, steps: int) -> dict:
    code = CHILD.format(preset=preset, variant=variant, threads=threads, batch=batch,
                        patch=patch, warmup=warmup, steps=steps)
    try:
        return run_child(code)
    except RuntimeError as exc:  # a variant that fails here is a result, not a crash
        return {"error": str(exc).strip().splitlines()[-1][:80]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["mpt-tiny"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--batch", type=int, default=4, help="patches per step (training: 4)")
    parser.add_argument("--patch", type=int, default=128, help="patch side (training: 128)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    print(machine_line("cpu", threads=args.threads[0]) + "\n")
    print(f"batch {args.batch} × {args.patch}², AdamW, PSNR loss; median of {args.steps} steps "
          f"after {args.warmup} warm-up steps (compilation included in warm-up)\n")
    print("| preset | threads | variant | s/step | steps/hour | × fp32 | warm-up s | loss |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for preset in args.presets:
        for threads in args.threads:
            base = None
            for variant in args.variants:
                r = measure(preset, variant, threads, batch=args.batch, patch=args.patch,
                            warmup=args.warmup, steps=args.steps)
                rows.append({"preset": preset, "threads": threads, "variant": variant, **r})
                if "error" in r:
                    print(f"| {preset} | {threads} | {variant} | failed: {r['error']} |"
                          " | | | |")
                    continue
                if variant == "fp32":
                    base = r["median_s"]
                ratio = f"{base / r['median_s']:.2f}" if base else "–"
                print(f"| {preset} | {threads} | {variant} | {r['median_s']:.3f} | "
                      f"{3600 / r['median_s']:.0f} | {ratio} | {r['warmup_s']:.1f} | "
                      f"{r['loss']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    failed = [f"{r['preset']}/{r['variant']}" for r in rows if "error" in r]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""Time the MPT forward of this checkout against a git revision, alternately in one process.

    python benchmarks/compare_revisions.py --base HEAD~1 --preset mpt-tiny --size 1024 --dtype bf16
    python benchmarks/compare_revisions.py --base HEAD~1 --preset mpt-base --routing compat
    python benchmarks/compare_revisions.py --base HEAD~1 --train --dtype bf16   # a training step

Why: on a shared, noisy machine two runs in separate processes differ by more than the levers we
measure (a few per cent), so each lever is timed ABAB... in one process: the ``--base`` revision's
package is extracted with ``git archive`` under another name and imported beside the working
tree's, both models get the same weights (the checkpoint keys must not change) and input, one
warm-up each, then ``--repeats`` alternating forwards under ``inference_mode``, the engine's
allocator policy and, with ``--dtype bf16``, CPU autocast as ``deblur`` runs it. Prints the
medians and the best times, the speed-up (before / after) and the max abs difference of the
two outputs. ``--train`` times a training step instead (``--batch`` patches of ``--size``,
default 4 × 128² as the recipes, forward and backward of an L1 loss, no optimiser, no
``torch.compile``): a lever can speed inference and slow training. With ``--threads 1`` it
also prints the process's CPU time per forward, which a busy machine inflates far less than
the wall time (a descheduled forward does not count).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_line, median

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "napari_mpt_deblur"


def import_revision(revision: str, into: Path, suffix: str):
    """The model registry of the package as it was at ``revision`` (as ``..._<suffix>``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, f"src/{PACKAGE}"],
        check=True, capture_output=True,
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "src" / PACKAGE).rename(into / "src" / f"{PACKAGE}_{suffix}")
    sys.path.insert(0, str(into / "src"))
    # The package's lazy top-level names import by absolute name, i.e. the current checkout;
    # the registry's own imports are relative, so it builds the revision's models.
    return importlib.import_module(f"{PACKAGE}_{suffix}.models._registry")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--after", default=None,
                        help="git revision to time as 'after' (default: the working tree)")
    parser.add_argument("--preset", default="mpt-tiny")
    parser.add_argument("--routing", default="aligned", choices=["aligned", "compat"])
    parser.add_argument("--size", type=int, default=None,
                        help="image side (default: 512; 128 with --train, the recipes' patch)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true",
                        help="time a training step (forward + backward) instead of inference")
    parser.add_argument("--batch", type=int, default=4, help="patches per step with --train")
    args = parser.parse_args()
    if args.size is None:
        args.size = 128 if args.train else 512

    import torch

    import napari_mpt_deblur as current  # create_model, as the revision's registry has it
    from napari_mpt_deblur.engine import retain_freed_memory

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = import_revision(args.base, Path(tmp) / "base", "base")
        if args.after:
            current = import_revision(args.after, Path(tmp) / "after", "after")
        torch.manual_seed(0)
        after = current.create_model(args.preset, routing=args.routing).train(args.train)
        before = base.create_model(args.preset, routing=args.routing).train(args.train)
        before.load_state_dict(after.state_dict(), strict=True)
    n = args.batch if args.train else 1
    x = torch.rand(n, 1, args.size, args.size, generator=torch.Generator().manual_seed(1))
    sides = {"before": before, "after": after}
    times: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}

    def forward(model: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = model(x)
        if args.train:
            model.zero_grad(set_to_none=True)
            (out.float() - x).abs().mean().backward()
            out = out.detach()
        return out

    mode = torch.enable_grad() if args.train else torch.inference_mode()
    with retain_freed_memory(), mode:
        warm = {name: forward(model) for name, model in sides.items()}
        diff = (warm["before"] - warm["after"]).abs().max().item()
        del warm
        for _ in range(args.repeats):
            for name, model in sides.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                forward(model)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    b, a = median(times["before"]), median(times["after"])
    print(machine_line("cpu", args.threads))
    best_b, best_a = min(times["before"]), min(times["after"])
    what = f"training step {n}×{args.size}²" if args.train else f"{args.size}²"
    print(f"{args.preset} ({args.routing}) {what} {args.dtype}: before ({args.base}) "
          f"{b:.3f} s -> after ({args.after or 'working tree'}) {a:.3f} s = {b / a:.3f}x "
          f"(medians; best {best_b:.3f} -> {best_a:.3f} = {best_b / best_a:.3f}x), "
          f"max abs diff {diff:.1e}")
    cb, ca = median(cpu["before"]), median(cpu["after"])
    print(f"  CPU time of the process (medians): {cb:.3f} s -> {ca:.3f} s = {cb / ca:.3f}x")
    for name in sides:
        print(f"  {name:6s} wall: " + " ".join(f"{t:.3f}" for t in times[name])
              + " | cpu: " + " ".join(f"{t:.3f}" for t in cpu[name]))


if __name__ == "__main__":
    main()

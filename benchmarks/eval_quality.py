"""The docs' quality table: PSNR/SSIM per defocus level for the baselines and the models.

Calls the same code as ``mpt-deblur evaluate`` (:func:`napari_mpt_deblur.evaluation.evaluate`)
on all eval images: BBBC006 w1 (Hoechst) and w2 (actin) in focus, through the simulated
microscope of a regime (``--regime``): "20x" (dry NA 0.5, 0.645 µm/px) at 0 (in focus), 2, 4, 8,
16 and 24 µm plus the real BBBC006 pair (32 µm below focus vs in focus), or "oil-1.4" (NA 1.4
oil, 0.1 µm/px) at 0, 0.5, 1 and 2 µm.
Richardson–Lucy iterations are tuned on ``val/`` only and cached in
``benchmarks/results/rl_iterations.json`` so that the table is reproducible.

Run from the repository root::

    PYTHONPATH=src python benchmarks/eval_quality.py --models none      # baselines only
    PYTHONPATH=src python benchmarks/eval_quality.py --models mpt-tiny path/to/ckpt.safetensors \
        --device cuda --write-docs
    PYTHONPATH=src python benchmarks/eval_quality.py --models mpt-tiny mpt-tiny@x8   # + 8 views
    PYTHONPATH=src python benchmarks/eval_quality.py --regime oil-1.4 --write-docs   # high NA

Prints the Markdown table with the machine it ran on. Only ``--write-docs`` writes
``docs/results/quality.md`` (+ ``quality_examples.png``, and every score in
``benchmarks/results/quality.json``; ``quality_oil-1.4.*`` for the oil regime), replacing the
previous version.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

logger = logging.getLogger("eval_quality")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=None, metavar="NAME|PATH",
                        help="bundled model names or checkpoints (NAME@x8: with 8-view "
                        "test-time augmentation; NAME@blind: an optics-conditioned model "
                        "without the true optics); 'none' or nothing for the baselines only "
                        "(default: every bundled model)")  # fmt: skip
    parser.add_argument("--regime", default="20x", choices=["20x", "oil-1.4"],
                        help="simulated microscope (evaluation.EVAL_REGIMES); oil-1.4 writes "
                        "docs/results/quality_oil-1.4.md")  # fmt: skip
    parser.add_argument("--levels", nargs="+", type=float, default=None,
                        help="defocus levels, µm (default: the regime's)")  # fmt: skip
    parser.add_argument("--sets", nargs="+", default=["w1", "w2"], choices=["w1", "w2"])
    parser.add_argument("--no-real-pair", action="store_true", help="skip the real pair")
    parser.add_argument("--max-images", type=int, default=None,
                        help="first N images per set (quick checks; not with --write-docs)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="holds eval/ and val/")
    parser.add_argument("--seed", type=int, default=0, help="camera-noise seed")
    parser.add_argument("--device", default="auto", help="device for the models")
    parser.add_argument("--write-docs", action="store_true",
                        help="write docs/results/quality.md (+ figure, + JSON)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.write_docs and args.max_images is not None:
        parser.error("the docs table uses all eval images; drop --max-images with --write-docs")
    if not args.data.is_dir():
        parser.error(f"data root {str(args.data)!r} does not exist: pass --data, the folder "
                     "holding eval/ and val/")  # fmt: skip
    return args


def machine_info(device: str) -> dict[str, object]:
    """What the numbers (mainly the timings) depend on."""
    info: dict[str, object] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device != "cpu" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = "not installed"
    return info


def header(argv: list[str], info: dict[str, object], regime: str = "20x") -> str:
    command = shlex.join(["PYTHONPATH=src", "python", "benchmarks/eval_quality.py", *argv])
    machine = (f"{info['cpu_count']} CPUs, {info['platform']}, Python {info['python']}, "
               f"torch {info['torch']} ({info.get('torch_threads', '?')} threads)")  # fmt: skip
    if "gpu" in info:
        machine += f", GPU {info['gpu']}"
    return "\n".join([
        "<!-- Generated by benchmarks/eval_quality.py; do not edit by hand. -->",
        "# Deblurring quality" + ("" if regime == "20x" else f" ({regime} regime)"),
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {info['date']}",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    from napari_mpt_deblur.evaluation import (
        eval_config,
        evaluate,
        model_columns,
        save_example_figure,
        to_markdown,
    )
    from napari_mpt_deblur.files import atomic_write

    cfg = eval_config(
        args.regime,
        data_root=args.data,
        sets=tuple(args.sets),
        levels_um=tuple(args.levels) if args.levels else None,
        seed=args.seed,
        max_images=args.max_images,
        real_pair=False if args.no_real_pair else None,
        device=args.device,
    )
    stem = "quality" if args.regime == "20x" else f"quality_{args.regime}"
    models = model_columns(args.models)
    started = time.perf_counter()
    result = evaluate(models, cfg, rl_cache=RESULTS / "rl_iterations.json",
                      progress=lambda d, t: logger.debug("%d/%d", d, t))  # fmt: skip
    logger.info("evaluated in %.0f s", time.perf_counter() - started)
    info = machine_info(args.device)
    text = header(argv, info, args.regime) + "\n" + to_markdown(result, title=None)
    if args.write_docs:
        figure = DOCS / f"{stem}_examples.png"
        save_example_figure(result, figure, overwrite=True)
        text += f"\n![Example crops per defocus level and method]({figure.name})\n"
        atomic_write(DOCS / f"{stem}.md",
                     lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                     overwrite=True)  # fmt: skip
        record = {**result.to_dict(), "machine": info, "command": argv}
        payload = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
        atomic_write(RESULTS / f"{stem}.json",
                     lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"),
                     overwrite=True)  # fmt: skip
        logger.info("wrote %s, %s and %s", DOCS / f"{stem}.md", figure, RESULTS / f"{stem}.json")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

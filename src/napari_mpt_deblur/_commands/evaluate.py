"""``mpt-deblur evaluate``: PSNR/SSIM per defocus level for the baselines and models.

Writes ``OUT/results.md`` (the Markdown table with its protocol notes), ``OUT/results.json``
(every score, the configuration, tuned Richardson–Lucy iterations, model provenance) and
``OUT/examples.png`` (crops per level and method). Existing files are never replaced without
``--overwrite``. See :mod:`napari_mpt_deblur.evaluation` for the protocol.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..evaluation.protocol import EVAL_REGIMES, IMAGE_SETS
from . import DEVICE_HELP

logger = logging.getLogger(__name__)

NAME = "evaluate"
HELP = "PSNR/SSIM per defocus level on the eval images: blurred, Richardson-Lucy and models"

OUTPUT_FILES = ("results.md", "results.json", "examples.png")


#: The data root when neither --data nor $MPT_DEBLUR_DATA is given: the project's layout, with
#: the shared data next to the repository and the command run from the repository root.
DEFAULT_DATA = Path("../shared/data")


def default_data_root() -> Path:
    """``$MPT_DEBLUR_DATA`` if set, else :data:`DEFAULT_DATA` (relative to the current folder)."""
    return Path(os.environ.get("MPT_DEBLUR_DATA", DEFAULT_DATA))


def default_rl_cache(out_dir: Path, cwd: Path | None = None) -> Path:
    """Where the tuned Richardson–Lucy iterations are cached when ``--rl-iterations`` is not given.

    Run from a source checkout (the current folder holds ``pyproject.toml`` and
    ``benchmarks/``), it is the checkout's ``benchmarks/results/rl_iterations.json``, shared with
    ``benchmarks/eval_quality.py`` so the tuning is paid once and the docs' table reproduces;
    anywhere else ``OUT/rl_iterations.json``. Decided from the working folder, like the data
    root, never from where the package is installed.
    """
    repo = Path.cwd() if cwd is None else Path(cwd)
    if (repo / "pyproject.toml").is_file() and (repo / "benchmarks").is_dir():
        return repo / "benchmarks" / "results" / "rl_iterations.json"
    return out_dir / "rl_iterations.json"


REGIMES = tuple(EVAL_REGIMES)  # the --regime choices (old name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mpt-deblur evaluate``."""
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        metavar="NAME|PATH",
        help="bundled model names or checkpoint files to evaluate; NAME@x8 also runs NAME with "
        "8-view test-time augmentation (@x2, @x4 too); an optics-conditioned model gets each "
        "image set's true optics, NAME@blind none; give the option with no value (or "
        "'none') for the baselines only (default: every bundled model)",
    )
    parser.add_argument("--regime", default="20x", choices=REGIMES,
                        help="simulated microscope: 20x (dry NA 0.5, 0.645 µm/px, 0-24 µm, the "
                        "training regime) or oil-1.4 (NA 1.4 oil, 0.1 µm/px, 0-2 µm) "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--levels", nargs="+", type=float, default=None, metavar="UM",
                        help="defocus levels, µm; 0 is in focus (default: the regime's, "
                        "0 2 4 8 16 24 at 20x, 0 0.5 1 2 at oil-1.4)")  # fmt: skip
    parser.add_argument("--sets", nargs="+", default=["w1", "w2"], choices=list(IMAGE_SETS),
                        help="eval image sets: w1 (Hoechst), w2 (actin) (default: both)")
    parser.add_argument("--no-real-pair", action="store_true",
                        help="skip the real BBBC006 defocus pair")  # fmt: skip
    parser.add_argument("-o", "--out", type=Path, default=Path("evaluation"),
                        help="output folder (default: %(default)s)")  # fmt: skip
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="first N images of each set only (quick runs)")  # fmt: skip
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data root holding eval/ and val/ (default: $MPT_DEBLUR_DATA or "
        f"{DEFAULT_DATA}, from the repository root)",
    )
    parser.add_argument(
        "--rl-iterations",
        type=Path,
        default=None,
        metavar="JSON",
        help="cache of the Richardson-Lucy iterations tuned on val/ (default: "
        "benchmarks/results/rl_iterations.json when run from a source checkout's root, else "
        "OUT/rl_iterations.json)",
    )
    parser.add_argument("--crop", type=int, default=None, metavar="PX",
                        help="evaluate central PX x PX crops (default: whole images)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="camera-noise seed (default: 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then write the three output files atomically."""
    import json
    import sys

    from tqdm import tqdm

    from .._io import atomic_write
    from ..evaluation import (
        eval_config,
        evaluate,
        model_columns,
        save_example_figure,
        to_markdown,
    )

    out_dir: Path = args.out
    targets = {name: out_dir / name for name in OUTPUT_FILES}
    if not args.overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} exist; use --overwrite to replace them")
    data = default_data_root() if args.data is None else Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(
            f"data root {str(data)!r} does not exist: pass --data (or set MPT_DEBLUR_DATA) to "
            "the folder holding eval/ and val/"
        )
    cfg = eval_config(
        args.regime,
        data_root=data,
        sets=tuple(args.sets),
        levels_um=tuple(args.levels) if args.levels else None,
        seed=args.seed,
        crop_px=args.crop,
        max_images=args.max_images,
        real_pair=False if args.no_real_pair else None,
        device=args.device,
    )
    cache = default_rl_cache(out_dir) if args.rl_iterations is None else args.rl_iterations
    models = model_columns(args.models)
    logger.info("evaluating %s on %s (Richardson-Lucy cache %s)",
                ", ".join(["baselines", *models]), cfg.eval_dir, cache)  # fmt: skip
    bar = tqdm(desc="evaluate", unit="image", disable=args.no_progress or None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = evaluate(models, cfg, progress=progress, rl_cache=cache)
    finally:
        bar.close()
    markdown = to_markdown(result)
    text = json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(targets["results.json"],
                 lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                 overwrite=args.overwrite)  # fmt: skip
    atomic_write(targets["results.md"],
                 lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"),
                 overwrite=args.overwrite)  # fmt: skip
    save_example_figure(result, targets["examples.png"], overwrite=args.overwrite)
    sys.stdout.write(markdown)
    logger.info("wrote %s (%.0f s)", ", ".join(str(p) for p in targets.values()), result.seconds)
    return 0

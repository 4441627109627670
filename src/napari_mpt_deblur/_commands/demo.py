"""``mpt-deblur demo``: the README's first command (bundled sample + bundled default model)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import DEVICE_HELP

if TYPE_CHECKING:
    from ..models.info import DeblurModel

NAME = "demo"
HELP = "deblur the bundled sample image with the default model; writes TIFFs and a before/after PNG"

# The demo's whole output. A folder holding only these (or none) is the demo's to rewrite.
OUTPUT_NAMES = ("sample_blurred.tif", "sample_deblurred.tif", "before_after.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("mpt-deblur-demo"),
        help="output folder (default: ./mpt-deblur-demo). It belongs to the demo: a rerun "
        "replaces the demo's own files there, and a folder that holds anything else is refused "
        "(see --overwrite)",
    )
    parser.add_argument("--model", default=None,
                        help="pretrained key or checkpoint (default: mpt_tiny.defocus)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an output folder that also holds other files (only the demo's "
        f"{', '.join(OUTPUT_NAMES)} are replaced there; nothing else is touched)",
    )


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that the demo did not write (empty when it does not exist).

    Our own hidden temporary files (``.<stem>.*``, left by a killed run) count as ours: the
    atomic writer cleans them up, and they must not turn a rerun into a refusal.
    """
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    stems = tuple(f".{Path(n).stem}." for n in OUTPUT_NAMES)
    names = (e.name for e in folder.iterdir())
    return sorted(n for n in names if n not in OUTPUT_NAMES and not n.startswith(stems))


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from .._device import get_device
    from .._io import remove_stale_temp_files, write_image
    from .._sample_data import load_sample
    from ..engine.predict import DeblurReport, deblur
    from ..figures import before_after_png
    from ..models.info import model_info
    from ..models.pretrained import canonical_name, list_pretrained
    from ..models.resolve import resolve_model
    from ..simulate.optics import OpticsHints

    log = logging.getLogger(__name__)
    out = args.output
    foreign = foreign_entries(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose another with -o")
    if foreign and not args.overwrite:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out} holds files the demo did not write ({shown}); choose another folder with "
            "-o, or add --overwrite to replace only the demo's own files in it"
        )
    if args.model is None and not list_pretrained():
        raise FileNotFoundError(
            "this installation has no trained weights bundled, so the demo would only show an "
            "untrained network; train one with `mpt-deblur train` or pass --model CHECKPOINT"
        )
    sample = load_sample()
    device = get_device(args.device)
    model: DeblurModel = resolve_model(canonical_name(args.model) if args.model else None,
                                       device)
    report = DeblurReport()
    # The sample's microscope (its simulation record), as a user would type it: an
    # optics-conditioned model uses it, any other ignores it.
    optics = {k: sample.params.get(k) for k in OpticsHints.NAMES}
    result = deblur(sample.blurred, model, axes="YX", device=device, report=report,
                    optics=optics)
    meta = {"axes": "YX", "pixel_size_um": (sample.pixel_size_um,) * 2}
    remove_stale_temp_files(out)
    # The folder was checked above: replacing the demo's own files is always right (atomic
    # writes, so an interrupted rerun leaves the previous complete files).
    blurred_name, deblurred_name, figure_name = OUTPUT_NAMES
    paths = [
        write_image(out / blurred_name, sample.blurred, meta, overwrite=True),
        write_image(out / deblurred_name, result, meta, overwrite=True),
    ]
    panels = {"defocused input": sample.blurred, f"deblurred ({model_info(model).name})": result}
    if sample.sharp is not None:
        panels["in focus (reference)"] = sample.sharp
    paths.append(before_after_png(out / figure_name, panels, overwrite=True))
    if sample.sharp is not None:
        from ..metrics import psnr

        ref = sample.sharp.astype(np.float32)
        log.info(
            "PSNR vs in-focus reference: input %.2f dB, deblurred %.2f dB",
            psnr(sample.blurred, ref),
            psnr(result, ref),
        )
    log.info("deblurred %s in %.1f s on %s", sample.name, report.seconds, report.device)
    for p in paths:
        print(p)
    return 0

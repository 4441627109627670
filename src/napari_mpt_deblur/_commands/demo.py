"""``mpt-deblur demo``: the README's first command (bundled sample + bundled default model)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "deblur the bundled sample image with the default model; writes TIFFs and a before/after PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("mpt-deblur-demo"),
        help="output folder (default: ./mpt-deblur-demo)",
    )
    parser.add_argument("--model", default=None, help="model name or checkpoint (default model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from .._io import write_image
    from .._sample_data import load_sample
    from ..engine.predict import DeblurReport, deblur
    from ..figures import before_after_png
    from ..models.checkpoint import bundled_models, load_model

    log = logging.getLogger(__name__)
    if args.model is None and not bundled_models():
        raise FileNotFoundError(
            "this installation has no trained weights bundled, so the demo would only show an "
            "untrained network; train one with `mpt-deblur train` or pass --model CHECKPOINT"
        )
    sample = load_sample()
    model = load_model(args.model, device=args.device)
    report = DeblurReport()
    result = deblur(sample.blurred, model, axes="YX", device=args.device, report=report)
    out = args.output
    meta = {"axes": "YX", "pixel_size_um": (sample.pixel_size_um,) * 2}
    paths = [
        write_image(out / "sample_blurred.tif", sample.blurred, meta, overwrite=args.overwrite),
        write_image(out / "sample_deblurred.tif", result, meta, overwrite=args.overwrite),
    ]
    panels = {"defocused input": sample.blurred, f"deblurred ({model.info['name']})": result}
    if sample.sharp is not None:
        panels["in focus (reference)"] = sample.sharp
    paths.append(before_after_png(out / "before_after.png", panels, overwrite=args.overwrite))
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

"""``mpt-deblur export-bioimageio``: write a model as a bioimage.io model-zoo package.

The package (``bioimageio.spec`` 0.5) runs in careamics, deepImageJ, ilastik and the bioimage.io
tools; see docs/bioimageio.md for what is inside and why normalisation lives in the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export-bioimageio"
HELP = "write a bundled model or a checkpoint as a bioimage.io model package (.zip)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pretrained key (e.g. htcsf.defocus; see `mpt-deblur "
                        "info`) or checkpoint file (.safetensors)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="package to write (.zip)")
    parser.add_argument(
        "--author",
        action="append",
        dest="authors",
        metavar="NAME",
        help="author of the weights (repeat for several; default: napari-mpt-deblur developers)",
    )
    parser.add_argument(
        "--license",
        default=None,
        help="SPDX licence of the weights (default: the checkpoint's, else Apache-2.0)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="UM",
        help="pixel size in µm the model is meant for (default: the training simulation's)",
    )
    parser.add_argument(
        "--no-torchscript",
        action="store_true",
        help="write only pytorch_state_dict weights (skip the traced torchscript copy)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        import bioimageio.spec  # noqa: F401

        from ..bioimageio import export_bioimageio
    except ImportError:
        print("export-bioimageio needs bioimageio.spec: "
              "pip install 'napari-mpt-deblur[bioimageio]'")
        return 2
    report = export_bioimageio(
        args.model,
        args.output,
        authors=args.authors,
        license=args.license,
        pixel_size_um=args.pixel_size,
        torchscript=not args.no_torchscript,
    )
    print(f"wrote {report.path} ({report.model_name}; weights: {', '.join(report.weight_formats)})")
    for fmt, reason in report.skipped.items():
        print(f"  no {fmt} weights: {reason}")
    if report.batch_size == 1:
        print("  batch size fixed to 1 (the traced torchscript model has it built in)")
    return 0

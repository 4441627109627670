"""``mpt-deblur simulate``: make defocus training pairs for your own optics from in-focus images.

Writes ``OUT/blurred/*.tif`` and ``OUT/sharp/*.tif`` (float32, the simulator's signal units),
``OUT/params/*.json`` (every pair's optics and camera) and ``OUT/simulation.json``.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..simulate import SimulationConfig

logger = logging.getLogger(__name__)

NAME = "simulate"
HELP = "simulate defocused/sharp training pairs from in-focus TIFF/PNG images"


def _value_or_range(text: str) -> tuple[float, float] | float:
    """Parse ``"0.5"`` into 0.5 and ``"0.4:0.6"`` (or ``"0.4,0.6"``) into (0.4, 0.6)."""
    for sep in (":", ","):
        if sep in text:
            parts = text.split(sep)
            break
    else:
        parts = [text]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or LOW:HIGH; got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH with LOW <= HIGH; got {text!r}")
    return values[0], values[1]


def _crop(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW in pixels; got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW in pixels; got {text!r}")
    return values[0], values[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mpt-deblur simulate``."""
    parser.add_argument("inputs", nargs="+", help="in-focus TIFF/PNG files or folders holding them")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder (existing pair files are never overwritten)",
    )
    parser.add_argument(
        "--preset",
        default="bbbc006",
        help="simulation preset: bbbc006 (20x dry, 0.645 µm/px), widefield-dry, oil-1.2, "
        "oil-high-na (NA 1.25-1.45 oil, 0.1 µm/px, 0-3 µm) "
        "(default: %(default)s); the options below override its ranges",
    )
    parser.add_argument("--na", type=_value_or_range, help="numerical aperture: VALUE or LOW:HIGH")
    parser.add_argument(
        "--wavelength-nm", type=_value_or_range, help="emission wavelength, nm: VALUE or LOW:HIGH"
    )
    parser.add_argument("--pixel-size-um", type=float, help="camera pixel in the sample, µm")
    parser.add_argument(
        "--defocus-um",
        type=_value_or_range,
        help="defocus, µm: a signed VALUE fixes it; LOW:HIGH draws magnitudes on both sides of "
        "focus (write negative values as --defocus-um=-8)",
    )
    parser.add_argument(
        "--defocus-scale",
        type=_value_or_range,
        help="effective/nominal defocus factor: VALUE or LOW:HIGH (bbbc006 uses 1.0:1.3; "
        "pass 1 for exact defocus)",
    )
    parser.add_argument(
        "--photons", type=_value_or_range, help="photo-electrons at full scale: VALUE or LOW:HIGH"
    )
    parser.add_argument("--haze", type=float, help="probability of out-of-focus haze layers (0-1)")
    parser.add_argument("--n", type=int, default=100, help="number of pairs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--crop", type=_crop, help="random crop size: SIZE or HxW pixels")
    parser.add_argument(
        "--prefix", default="pair", help="pair file name prefix (default: %(default)s)"
    )
    parser.add_argument(
        "--start-index", type=int, default=0, help="number of the first pair (default: 0)"
    )
    parser.add_argument("--save-psf", action="store_true", help="also write each pair's PSF")


def _as_range(value: tuple[float, float] | float) -> tuple[float, float]:
    return value if isinstance(value, tuple) else (value, value)


def build_config(args: argparse.Namespace) -> SimulationConfig:
    """The simulation config of the command line (preset plus overrides)."""
    from ..simulate import get_simulation_preset

    cfg = get_simulation_preset(args.preset)
    overrides: dict[str, Any] = {}
    if args.na is not None:
        overrides["numerical_aperture_range"] = _as_range(args.na)
    if args.wavelength_nm is not None:
        if isinstance(args.wavelength_nm, tuple):
            overrides.update(wavelength_nm_choices=(), wavelength_nm_range=args.wavelength_nm)
        else:
            overrides["wavelength_nm_choices"] = (args.wavelength_nm,)
    if args.pixel_size_um is not None:
        overrides["pixel_size_um"] = args.pixel_size_um
    if isinstance(args.defocus_um, tuple):
        overrides.update(defocus_um_range=args.defocus_um, defocus_sides="both")
    if args.defocus_scale is not None:
        overrides["defocus_scale_range"] = _as_range(args.defocus_scale)
    if args.photons is not None:
        overrides["photons_per_unit_range"] = _as_range(args.photons)
    if args.haze is not None:
        overrides["haze_probability"] = args.haze
    if overrides:
        cfg = cfg.replace(name=f"{cfg.name}+custom", **overrides)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Write the pairs; returns 0 on success, 1 on a user error (logged)."""
    from ..simulate import write_pairs

    try:
        cfg = build_config(args)
        fixed = args.defocus_um if isinstance(args.defocus_um, float) else None
        step = max(1, args.n // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                logger.info("simulated %d/%d pairs", done, total)

        names = write_pairs(
            args.inputs,
            args.output,
            args.n,
            cfg,
            args.seed,
            args.crop,
            defocus_um=fixed,
            save_psf=args.save_psf,
            prefix=args.prefix,
            start_index=args.start_index,
            progress=progress,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        logger.error("simulate: %s", exc)
        return 1
    logger.info("wrote %d pairs to %s (preset %s)", len(names), args.output, cfg.name)
    return 0

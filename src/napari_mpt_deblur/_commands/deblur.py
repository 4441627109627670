"""``mpt-deblur deblur``: batch deblurring of TIFF/PNG files, folders or globs.

Outputs are written atomically, so after a killed batch every visible output is complete; the
same command with ``--skip-existing`` then resumes it, doing only the files still missing.

The microscope (``--pixel-size-um``, ``--na``, ``--wavelength-nm``, ``--immersion-index``, the
options ``mpt-deblur finetune`` has) defaults, per file, to what the file records
(:func:`~napari_mpt_deblur.optics_metadata.optics_from_metadata`); an optics-conditioned model
gets it, and each file's log line says which optics were known and whether they were used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine import ENSEMBLE_SIZES
from . import DEVICE_HELP, add_optics_arguments, optics_arguments

if TYPE_CHECKING:
    from ..models.info import DeblurModel

NAME = "deblur"
HELP = "deblur image files (TIFF/OME-TIFF/PNG), folders or glob patterns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--model",
        default=None,
        help="pretrained key (see `mpt-deblur info`, e.g. mpt_tiny.defocus) or checkpoint file "
        "(default: the shipped mpt_tiny.defocus)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile size in pixels (default: whole image when it fits in memory)",
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory the job may use, e.g. 8G or 512MiB; picks tiles to fit (default: half "
        "of the free RAM, 80%% of the free GPU memory)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        choices=ENSEMBLE_SIZES,
        metavar="N",
        help="test-time augmentation: average N orientations of each tile (1, 2, 4 or 8; "
        "8 takes 8x the time for about +0.3 dB; default: 1, off)",
    )
    parser.add_argument(
        "--float32",
        action="store_true",
        help="compute in float32 even where bf16 autocast is used by default (CUDA, and CPUs "
        "with AVX-512 BF16 or AMX, about 1.3x faster there, PSNR within 0.05 dB)",
    )
    parser.add_argument("--axes", default=None, help="layout, e.g. YX, ZYX, TZYX, YXC")
    parser.add_argument("--suffix", default="_deblurred", help="added to output file names")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave inputs whose output exists alone (resumes a killed or interrupted batch)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_optics_arguments(parser, default_help="what each file's metadata records; used by "
                         "optics-conditioned models, ignored by the others")


def file_optics(meta: dict, source: Path, given: dict[str, float]) -> dict[str, float]:
    """The optics of one file: the options given, else what its metadata records."""
    from ..optics_metadata import optics_from_metadata

    return {**optics_from_metadata(meta, source_path=source), **given}


def describe_optics(optics: dict[str, float], used: bool, conditioned: bool) -> str:
    """One phrase for the log: the optics known for a file and what the model did with them."""
    units = {"pixel_size_um": ("pixel", "µm"), "numerical_aperture": ("NA", ""),
             "wavelength_nm": ("emission", "nm"), "immersion_index": ("n", "")}
    known = ", ".join(f"{units[k][0]} {v:.4g}{(' ' + units[k][1]) if units[k][1] else ''}"
                      for k, v in optics.items())
    if not conditioned:
        what = "not used: the model is blind to optics"
    elif used:
        what = "used by the model"
    else:
        what = "not used: pixel size and NA are needed; the model ran blind"
    return f"optics {known or 'unknown'} ({what})"


def output_path(src: Path, out_dir: Path, suffix: str) -> Path:
    """Output name for ``src``: same format, ``suffix`` before the extension."""
    name = src.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return out_dir / f"{name[: -len(ext)]}{suffix}{ext}"
    return out_dir / f"{src.stem}{suffix}{src.suffix}"


def run(args: argparse.Namespace) -> int:
    import logging

    from tqdm import tqdm

    from .._device import get_device
    from .._io import expand_inputs, read_image, remove_stale_temp_files, write_image
    from ..engine.predict import DeblurReport, deblur, parse_memory
    from ..models.conditioning import as_optics_hints
    from ..models.info import model_info
    from ..models.pretrained import canonical_name
    from ..models.resolve import resolve_model

    log = logging.getLogger(__name__)
    parse_memory(args.max_memory)  # a bad size is a usage error before any work starts
    given = optics_arguments(args)
    as_optics_hints(given)  # bad optics are a usage error before any work starts
    files = list(expand_inputs(args.inputs))
    if not files:
        raise FileNotFoundError("no input images found (supported: .tif, .tiff, .png, .jpg)")
    out_dir = args.output
    remove_stale_temp_files(out_dir)  # hidden leftovers of a run that was killed mid-write
    targets = [output_path(f, out_dir, args.suffix) for f in files]
    inputs = {f.resolve() for f in files}
    for target in targets:
        if target.resolve() in inputs:
            raise ValueError(f"output {target} would overwrite an input; choose another folder")
        if target.exists() and not (args.overwrite or args.skip_existing):
            raise FileExistsError(
                f"{target} exists; use --overwrite to replace it, or --skip-existing to resume "
                "a batch"
            )
    if args.skip_existing:
        # every visible output is complete (atomic writes), so an existing one is done
        todo = []
        for src, dst in zip(files, targets):
            if dst.exists():
                log.info("%s: %s exists, skipped", src, dst)
            else:
                todo.append((src, dst))
        if not todo:
            log.info("all %d outputs exist; nothing to do", len(files))
            return 0
        files, targets = [src for src, _ in todo], [dst for _, dst in todo]
    device = get_device(args.device)  # resolved once for the whole batch
    model: DeblurModel = resolve_model(canonical_name(args.model) if args.model else None,
                                       device)
    info = model_info(model)
    log.info("model %s on %s%s", info.name, device,
             " (optics-conditioned)" if info.optics_conditioned else "")
    failures = 0
    for src, dst in zip(files, targets):
        try:
            image, meta = read_image(src)
            optics = file_optics(meta, src, given)
            axes = args.axes or meta.get("axes")
            bar = tqdm(desc=src.name, unit="tile", disable=args.no_progress or None, leave=False)

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            report = DeblurReport()
            result = deblur(
                image,
                model,
                axes=axes,
                device=device,
                tile=args.tile,
                max_memory=args.max_memory,
                ensemble=args.ensemble,
                amp=False if args.float32 else "auto",
                progress=progress,
                report=report,
                optics=optics or None,
            )
            bar.close()
            write_image(dst, result, meta, overwrite=args.overwrite)
            log.info("%s -> %s (%.1f s, %s, %d tiles)", src, dst, report.seconds,
                     report.precision, report.n_tiles)
            log.info("%s: %s", src.name,
                     describe_optics(optics, report.optics_used, info.optics_conditioned))
        except (ValueError, TypeError, MemoryError) as exc:
            failures += 1
            log.error("%s: %s", src, exc)
    if failures:
        log.error("%d of %d files failed", failures, len(files))
    return 1 if failures else 0

"""``mpt-deblur detect``: detect nuclei and, given a reference, score the detections.

Writes one CSV of centroids per image in napari's points layout (``index,axis-0,axis-1`` in
pixels, plus ``y_um``, ``x_um``, ``diameter_um`` and ``score``), so the file opens in napari as
a points layer over the image. With ``--reference`` (a CSV of points or a label image per
input) it prints precision, recall and F1 of the one-to-one matching within
``--max-distance-um``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NAME = "detect"
HELP = "detect nuclei (centroid CSV per image) and score them against reference points/labels"

_POINT_COLUMNS = (("axis-0", "axis-1"), ("row", "col"), ("row", "column"), ("y", "x"))


def _threshold(text: str) -> float | str:
    if text.lower() == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'otsu' or a number in [0, 1]; got {text!r}"
        ) from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1]; got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mpt-deblur detect``."""
    parser.add_argument("inputs", nargs="+", help="2-D images (TIFF/PNG), folders or glob patterns")
    parser.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        help="folder for the CSV files (default: next to each image, as <name>_nuclei.csv)",
    )
    parser.add_argument(
        "--method",
        default="log",
        help="log (scale-space blobs, default), watershed (threshold + distance transform), "
        "stardist or cellpose (need the package and locally stored weights)",
    )
    parser.add_argument(
        "--diameter-um", type=float, help="typical nucleus diameter, µm (default 16, BBBC006)"
    )
    parser.add_argument(
        "--pixel-size-um",
        type=float,
        help="pixel size, µm (default: from the file's metadata, else 0.645)",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        help="foreground level on the percentile-normalised image (0-1), or 'otsu' (default)",
    )
    parser.add_argument(
        "--min-distance-um", type=float, help="smallest distance between two nuclei, µm"
    )
    parser.add_argument("--channel", type=int, help="channel index for multi-channel images")
    parser.add_argument("--model-path", help="StarDist model folder or Cellpose model file")
    parser.add_argument(
        "--reference",
        nargs="+",
        help="reference per input, in the same order: CSV of points (pixels; columns "
        "axis-0/axis-1, row/col or y/x) or a label image",
    )
    parser.add_argument(
        "--max-distance-um",
        type=float,
        help="largest centroid distance of a match, µm (default: half the diameter)",
    )
    parser.add_argument(
        "--save-labels", action="store_true", help="also write <name>_nuclei_labels.tif"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> int:
    """Detect on every input; returns 0 on success (errors are raised for ``cli.main``)."""
    from .._io import expand_inputs, read_image
    from ..detect import DetectionConfig, detect_nuclei, match_detections

    inputs = list(expand_inputs(args.inputs))
    if not inputs:
        raise FileNotFoundError(f"no images found in {args.inputs}")
    references = list(args.reference or [])
    if references and len(references) != len(inputs):
        raise ValueError(
            f"--reference needs one file per input image: {len(inputs)} input(s), "
            f"{len(references)} reference(s)"
        )
    missing = [ref for ref in references if not Path(ref).is_file()]
    if missing:
        raise FileNotFoundError(f"no such reference file: {missing[0]}")
    outputs = [_output_path(path, args.output_dir) for path in inputs]
    if not args.overwrite:
        existing = [str(p) for p in outputs if p.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} exists ({len(existing)} output(s) in all); refusing to "
                "overwrite (use --overwrite)"
            )

    totals = [0, 0, 0]
    for index, (path, out_path) in enumerate(zip(inputs, outputs)):
        array, metadata = read_image(path)
        plane = _plane(array, metadata.get("axes"), args.channel, path)
        cfg = DetectionConfig(**_config_values(args, metadata, path))
        result = detect_nuclei(plane, cfg)
        _write_csv(out_path, result, overwrite=args.overwrite)
        line = f"{path.name}: {result.n} nuclei -> {out_path}"
        if args.save_labels and result.labels is not None:
            from .._io import write_image

            labels_path = out_path.with_name(out_path.stem + "_labels.tif")
            meta = {"axes": "YX", "pixel_size_um": (cfg.pixel_size_um, cfg.pixel_size_um)}
            write_image(labels_path, result.labels, meta, overwrite=args.overwrite)
        if references:
            reference = _read_reference(Path(references[index]))
            max_um = args.max_distance_um or cfg.diameter_um / 2
            match = match_detections(result, reference, max_distance=max_um / cfg.pixel_size_um)
            totals = [totals[0] + match.tp, totals[1] + match.fp, totals[2] + match.fn]
            line += (
                f"  | reference {match.n_ref}: precision {match.precision:.3f} recall "
                f"{match.recall:.3f} F1 {match.f1:.3f} (TP {match.tp}, FP {match.fp}, "
                f"FN {match.fn})"
            )
        print(line)
    if references and len(inputs) > 1:
        tp, fp, fn = totals
        precision = 1.0 if tp + fp == 0 else tp / (tp + fp)
        recall = 1.0 if tp + fn == 0 else tp / (tp + fn)
        f1 = 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        print(
            f"all {len(inputs)} images (pooled): precision {precision:.3f} recall {recall:.3f} "
            f"F1 {f1:.3f} (TP {tp}, FP {fp}, FN {fn})"
        )
    return 0


def _output_path(path: Path, output_dir: Path | None) -> Path:
    folder = path.parent if output_dir is None else Path(output_dir)
    return folder / f"{path.stem}_nuclei.csv"


def _plane(array: Any, axes: str | None, channel: int | None, path: Path) -> Any:
    import numpy as np

    data = np.asarray(array)
    if channel is not None:
        if not axes or "C" not in axes:
            raise ValueError(
                f"{path.name}: --channel given but the image has no channel axis "
                f"(axes {axes or 'unknown'}, shape {data.shape})"
            )
        size = data.shape[axes.index("C")]
        if not 0 <= channel < size:
            raise ValueError(f"{path.name}: --channel must be in 0..{size - 1}; got {channel}")
        data = np.take(data, channel, axis=axes.index("C"))
    elif axes and axes.endswith("C") and data.ndim == 3 and data.shape[-1] in (3, 4):
        raise ValueError(
            f"{path.name} is an RGB image; pick the nuclear channel with --channel (e.g. 2 "
            "for blue)"
        )
    data = np.squeeze(data)
    if data.ndim != 2:
        raise ValueError(
            f"{path.name}: detection works on single 2-D planes; got shape {np.shape(array)} "
            f"(axes {axes or 'unknown'}). Use --channel for multi-channel images, or split "
            "z/time planes into separate files"
        )
    return data


def _config_values(args: argparse.Namespace, metadata: dict[str, Any], path: Path) -> dict:
    values: dict[str, Any] = {"method": args.method}
    if args.diameter_um is not None:
        values["diameter_um"] = args.diameter_um
    if args.threshold is not None:
        values["threshold"] = args.threshold
    if args.min_distance_um is not None:
        values["min_distance_um"] = args.min_distance_um
    if args.model_path is not None:
        values["model_path"] = args.model_path
    if args.pixel_size_um is not None:
        values["pixel_size_um"] = args.pixel_size_um
    elif metadata.get("pixel_size_um"):
        size_y, size_x = (float(v) for v in metadata["pixel_size_um"])
        if abs(size_y - size_x) > 0.01 * max(size_y, size_x):
            logger.warning(
                "%s: anisotropic pixels (%.4g x %.4g µm); using their mean",
                path.name,
                size_y,
                size_x,
            )
        values["pixel_size_um"] = (size_y + size_x) / 2
    else:
        logger.warning(
            "%s: no pixel size in the file; assuming 0.645 µm (BBBC006); set --pixel-size-um",
            path.name,
        )
    return values


def _write_csv(path: Path, result: Any, *, overwrite: bool) -> None:
    from .._io import atomic_write

    size = result.config.pixel_size_um
    rows = ["index,axis-0,axis-1,y_um,x_um,diameter_um,score"]
    for i, ((r, c), d, s) in enumerate(zip(result.points, result.diameters_px, result.scores)):
        rows.append(f"{i},{r:.3f},{c:.3f},{r * size:.3f},{c * size:.3f},{d * size:.3f},{s:.5g}")
    text = "\n".join(rows) + "\n"
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite
    )


def _read_reference(path: Path) -> Any:
    """Points (N, 2) from a CSV, or a 2-D label image."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"no such reference file: {path}")
    if path.suffix.lower() == ".csv":
        return _read_points_csv(path)
    from .._io import read_image

    labels, _ = read_image(path)
    labels = np.squeeze(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "uib":
        raise ValueError(
            f"reference {path.name} must be a 2-D integer label image or a CSV of points; got "
            f"shape {labels.shape}, dtype {labels.dtype}"
        )
    return labels


def _read_points_csv(path: Path) -> Any:
    import csv

    import numpy as np

    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        return np.zeros((0, 2))
    header = [cell.strip().lower() for cell in rows[0]]
    columns: tuple[int, int] | None = None
    for names in _POINT_COLUMNS:
        if all(name in header for name in names):
            columns = (header.index(names[0]), header.index(names[1]))
            break
    body = rows[1:]
    if columns is None:
        try:  # no header: two numeric columns
            [float(cell) for cell in rows[0][:2]]
        except ValueError:
            raise ValueError(
                f"reference {path.name}: no point columns found in header {rows[0]}; expected "
                "axis-0/axis-1, row/col or y/x (pixel coordinates)"
            ) from None
        if len(rows[0]) != 2:
            raise ValueError(
                f"reference {path.name}: a CSV without header must have exactly 2 columns "
                f"(row, col); got {len(rows[0])}"
            )
        columns, body = (0, 1), rows
    try:
        points = [[float(row[columns[0]]), float(row[columns[1]])] for row in body]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"reference {path.name}: unreadable point row ({exc})") from None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)

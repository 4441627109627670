"""Does deblurring help nuclei detection? F1 of detections on blurred vs deblurred images.

Two benchmarks, each per defocus level (simulated with the project's microscope simulator):

1. BBBC006 w1 (Hoechst) in-focus eval images (``../shared/data/eval/bbbc006_w1_infocus``).
   Reference = detections on the real in-focus image with the same detector, so the score says
   how much of the in-focus detection result survives defocus (and is restored by a model).
2. The labelled Hoechst time series of the ``ndev-sampledata`` package (10 frames, 0.619
   µm/px). Reference = the provided nucleus labels (centroids). These labels miss many dim and
   mitotic nuclei, so precision is capped well below 1 even in focus; the in-focus column gives
   that ceiling.

Columns: ``in focus`` (detector on the undistorted image; 1.0 by construction for BBBC006),
``sharp (sim)`` (the simulator's noise-free target, a check that the intensity mapping alone
does not change detections), ``blurred`` and one column per ``--models`` entry (the blurred
image deblurred by that model). F1 is pooled over images (TP, FP, FN summed), with matching
by centroid distance <= half the expected nucleus diameter (Hungarian algorithm).

Run from the repository root::

    PYTHONPATH=src python benchmarks/detection_f1.py --models none
    PYTHONPATH=src python benchmarks/detection_f1.py --models mpt-tiny path/to/ckpt.safetensors \
        --device cuda --out docs/benchmarks/detection_f1.md

The eval images are the project's test set: this script only measures, it tunes nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("detection_f1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "eval" / "bbbc006_w1_infocus"
NDEV_FILE = Path("samples") / "scratch-assay-labeled-10T-2Ch.tiff"
NDEV_PIXEL_SIZE_UM = 0.619  # from the file's OME metadata
NDEV_DIAMETER_UM = 7.5  # median equivalent diameter of the provided labels is 7.2-7.4 µm
NDEV_HOECHST_CHANNEL, NDEV_LABEL_CHANNEL = 0, 2  # channels: H3342, oblique, nuclei, cyto

# Fixed optics for every level, so columns differ only by defocus (and seeded camera noise):
# Hoechst emission, the NA at which the real BBBC006 pair is reproduced (data/README.md), no
# intensity jitter, no added background.
SIM_OVERRIDES: dict[str, Any] = {
    "wavelength_nm_choices": [460.0],
    "numerical_aperture_range": [0.5, 0.5],
    "intensity_scale_range": [1.0, 1.0],
    "intensity_gamma_range": [1.0, 1.0],
    "background_range": [0.0, 0.0],
}


@dataclass
class Tally:
    """Pooled match counts of one table cell."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    per_image_f1: list[float] = field(default_factory=list)

    def add(self, match: Any) -> None:
        self.tp += match.tp
        self.fp += match.fp
        self.fn += match.fn
        self.per_image_f1.append(match.f1)

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator

    @property
    def precision(self) -> float:
        return 1.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        "--model",
        dest="models",
        nargs="+",
        action="extend",
        help="models to deblur with (bundled names, checkpoint paths, or 'none' for blurred vs "
        "in-focus only); default: the package's default model",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="in-focus w1 images")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0, 16.0, 24.0],
        help="defocus, µm (0: in focus)",
    )
    parser.add_argument("--method", default="log", help="detector: log or watershed")
    parser.add_argument("--diameter-um", type=float, default=None, help="BBBC006 nucleus size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="device for deblurring")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--no-ndev", action="store_true", help="skip the ndev labelled series")
    parser.add_argument("--no-bbbc", action="store_true", help="skip the BBBC006 images")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# data


def load_bbbc(folder: Path, max_images: int | None) -> list[tuple[str, np.ndarray]]:
    import imageio.v3 as iio

    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    files = files[:max_images] if max_images else files
    return [(p.stem, np.asarray(iio.imread(p))) for p in files]


def load_ndev() -> tuple[np.ndarray, np.ndarray] | None:
    """Hoechst frames and nucleus labels, (T, M, N) each; None when the package is missing."""
    import tifffile

    spec = importlib.util.find_spec("ndev_sampledata")  # located, never imported (needs bioio)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / NDEV_FILE
    if not path.is_file():
        return None
    data = tifffile.imread(path)  # (C, T, Y, X)
    return data[NDEV_HOECHST_CHANNEL], data[NDEV_LABEL_CHANNEL]


def simulation_config(pixel_size_um: float) -> Any:
    from napari_mpt_deblur.simulate import get_simulation_preset

    return get_simulation_preset("bbbc006").replace(pixel_size_um=pixel_size_um, **SIM_OVERRIDES)


def pair_seed(seed: int, dataset: int, image: int, level: float) -> list[int]:
    """Independent, reproducible noise per (dataset, image, level)."""
    return [seed, dataset, image, round(level * 1000)]


# ---------------------------------------------------------------------------------------------
# models


def load_models(names: list[str], device: str) -> dict[str, Any]:
    if [n.lower() for n in names] == ["none"]:
        return {}
    if any(n.lower() == "none" for n in names):
        raise SystemExit("--models none cannot be combined with model names")
    import napari_mpt_deblur
    from napari_mpt_deblur.models.pretrained import canonical_name

    models = {}
    for name in names:
        try:
            model = napari_mpt_deblur.load_model(canonical_name(name), device=device)
        except Exception as exc:  # report any loading failure as a usage error
            raise SystemExit(f"cannot load model {name!r}: {exc}") from exc
        label = Path(name).name if os.sep in name else name  # short column titles for paths
        if label in models:
            label = name
        models[label] = model
    return models


def describe_models(models: dict[str, Any]) -> list[str]:
    from napari_mpt_deblur.models.info import model_info

    lines = []
    for label, model in models.items():
        info = model_info(model)
        sha = (info.sha256 or "")[:12]
        source = info.source or label
        lines.append(f"- model `{label}`: {source}" + (f" (sha256 {sha}…)" if sha else ""))
    return lines or ["- models: none (blurred vs in-focus only)"]


def deblur_with(model: Any, image: np.ndarray, device: str, sim_cfg: Any = None) -> np.ndarray:
    """The model's output; an optics-conditioned model is told the simulated microscope
    (``sim_cfg``: fixed optics, see ``SIM_OVERRIDES``), as a user who knows it would."""
    import napari_mpt_deblur

    optics = None
    if sim_cfg is not None:
        optics = {"pixel_size_um": sim_cfg.pixel_size_um,
                  "numerical_aperture": sim_cfg.numerical_aperture_range[0],
                  "wavelength_nm": sim_cfg.wavelength_nm_choices[0],
                  "immersion_index": sim_cfg.immersion_index}
    return napari_mpt_deblur.deblur(image, model, axes="YX", device=device, optics=optics)


# ---------------------------------------------------------------------------------------------
# benchmark


def run_dataset(
    frames: list[tuple[str, np.ndarray, np.ndarray | None]],
    *,
    dataset: int,
    cfg: Any,
    sim_cfg: Any,
    levels: list[float],
    models: dict[str, Any],
    device: str,
    seed: int,
) -> dict[float, dict[str, Tally]]:
    """Score every column at every level; ``reference`` None means detections in focus."""
    from napari_mpt_deblur.detect import detect_nuclei, match_detections
    from napari_mpt_deblur.simulate import make_pair

    max_distance = cfg.diameter_px / 2
    table: dict[float, dict[str, Tally]] = {
        level: {c: Tally() for c in ["in focus", "sharp (sim)", "blurred", *models]}
        for level in levels
    }
    for index, (name, image, labels) in enumerate(frames):
        in_focus = detect_nuclei(image, cfg)
        reference = in_focus if labels is None else labels
        focus_match = match_detections(in_focus, reference, max_distance)
        for level in levels:
            start = time.perf_counter()
            pair = make_pair(
                image,
                sim_cfg,
                np.random.default_rng(pair_seed(seed, dataset, index, level)),
                defocus_um=level,
                defocus_scale=1.0,
            )
            row = table[level]
            row["in focus"].add(focus_match)
            for column, img in (("sharp (sim)", pair.sharp), ("blurred", pair.blurred)):
                row[column].add(match_detections(detect_nuclei(img, cfg), reference, max_distance))
            for model_name, model in models.items():
                restored = deblur_with(model, pair.blurred, device, sim_cfg)
                row[model_name].add(
                    match_detections(detect_nuclei(restored, cfg), reference, max_distance)
                )
            logger.info(
                "%s defocus %g µm: blurred F1 %.3f (%.1f s)",
                name,
                level,
                row["blurred"].per_image_f1[-1],
                time.perf_counter() - start,
            )
    return table


def format_table(table: dict[float, dict[str, Tally]], n_ref: int) -> str:
    columns = list(next(iter(table.values())))
    head = "| defocus (µm) | " + " | ".join(f"F1 {c}" for c in columns) + " | P / R blurred |"
    rule = "|---:|" + "---:|" * len(columns) + "---:|"
    lines = [head, rule]
    for level, row in table.items():
        cells = " | ".join(f"{row[c].f1:.3f}" for c in columns)
        blurred = row["blurred"]
        lines.append(f"| {level:g} | {cells} | {blurred.precision:.2f} / {blurred.recall:.2f} |")
    lines.append("")
    lines.append(f"Reference objects: {n_ref}.")
    return "\n".join(lines)


def machine_header(args: argparse.Namespace) -> list[str]:
    try:
        import torch

        torch_version = torch.__version__
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version, threads = "not installed", "-"
    import scipy
    import skimage

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# Nuclei detection F1: blurred vs deblurred",
        "",
        f"- date: {now}",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"CPU count {os.cpu_count()}, torch threads {threads}",
        f"- software: python {platform.python_version()}, torch {torch_version}, numpy "
        f"{np.__version__}, scikit-image {skimage.__version__}, scipy {scipy.__version__}",
        f"- command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        f"- detector: {args.method}; matching: Hungarian, centroid distance <= diameter / 2; "
        "F1 pooled over images",
        "- simulation: preset bbbc006 with NA 0.5, emission 460 nm, defocus_scale 1.0 (the "
        f"level is the effective defocus), no intensity jitter; camera noise seeded ({args.seed})",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    from napari_mpt_deblur.detect import DetectionConfig

    if args.out is not None and args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite to replace it")
    if args.models is None:
        from napari_mpt_deblur.models.pretrained import default_model_name

        args.models = [default_model_name()]
    models = load_models(args.models, args.device)

    lines = machine_header(args) + describe_models(models)
    if not args.no_bbbc:
        frames = [(n, img, None) for n, img in load_bbbc(args.data, args.max_images)]
        overrides = {"method": args.method, "pixel_size_um": 0.645}
        if args.diameter_um:
            overrides["diameter_um"] = args.diameter_um
        cfg = DetectionConfig(**overrides)
        start = time.perf_counter()
        table = run_dataset(
            frames,
            dataset=0,
            cfg=cfg,
            sim_cfg=simulation_config(cfg.pixel_size_um),
            levels=args.levels,
            models=models,
            device=args.device,
            seed=args.seed,
        )
        n_ref = table[args.levels[0]]["in focus"].tp + table[args.levels[0]]["in focus"].fn
        lines += [
            "",
            f"## BBBC006 w1 eval images ({len(frames)} images, 0.645 µm/px, "
            f"diameter {cfg.diameter_um:g} µm)",
            "",
            "Reference: detections on the in-focus image (same detector).",
            "",
            format_table(table, n_ref),
            f"Time: {time.perf_counter() - start:.0f} s.",
        ]
    if not args.no_ndev:
        ndev = load_ndev()
        if ndev is None:
            lines += ["", "## ndev-sampledata", "", "Skipped: ndev-sampledata is not installed."]
        else:
            images, labels = ndev
            frames = [(f"t{t}", images[t], labels[t]) for t in range(images.shape[0])]
            cfg = DetectionConfig(
                method=args.method, pixel_size_um=NDEV_PIXEL_SIZE_UM, diameter_um=NDEV_DIAMETER_UM
            )
            start = time.perf_counter()
            table = run_dataset(
                frames,
                dataset=1,
                cfg=cfg,
                sim_cfg=simulation_config(NDEV_PIXEL_SIZE_UM),
                levels=args.levels,
                models=models,
                device=args.device,
                seed=args.seed,
            )
            n_ref = int(sum(len(np.unique(lab)) - 1 for lab in labels))
            lines += [
                "",
                f"## ndev-sampledata labelled Hoechst series ({len(frames)} frames, "
                f"{NDEV_PIXEL_SIZE_UM} µm/px, diameter {NDEV_DIAMETER_UM:g} µm)",
                "",
                "**Caveat:** this series is not test data for the bundled models. Frames 0-4 "
                "(channel 0, with simulated blur) and their nucleus labels (the large-nuclei "
                "images) are among their training images, and frames 5-9 are in the validation "
                "sets that chose their checkpoints (`scripts/prepare_extra_data.py`), so the "
                "model columns of this table are optimistic. The BBBC006 table above uses the "
                "test set only.",
                "",
                "Reference: the provided nucleus labels (incomplete: dim and mitotic nuclei are "
                "often unlabelled, so 'in focus' is the achievable ceiling).",
                "",
                format_table(table, n_ref),
                f"Time: {time.perf_counter() - start:.0f} s.",
            ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out is not None:
        from napari_mpt_deblur.files import atomic_write

        atomic_write(
            args.out,
            lambda tmp: Path(tmp).write_text(report, encoding="utf-8"),
            overwrite=args.overwrite,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

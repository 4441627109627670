"""Does fine-tuning on a lab's own blurry images help on a new microscope? (issue #6 evidence)

The shipped model was trained on simulated BBBC006 widefield defocus (20× dry objective,
NA 0.4-0.6, 0.645 µm pixels, 2-32 µm defocus). This benchmark builds a *domain-shifted* target
set with the ``oil-1.2`` simulation preset (NA 1.2 oil immersion, 0.1 µm pixels, 0.5-4 µm
defocus, a different camera and noise), fine-tunes the model on that domain's **blurry images
only** (no ground truth), and scores held-out pairs of the same domain:

(a) no fine-tuning (the shipped model as is),
(b) re-blur self-supervision only (``mode="reblur_only"``: ``f(G(E)) ≈ E``),
(c) full EFCR (``mode="full"``: re-blur pairs + EFCR relative term + replay of the model's own
    simulated pairs).

The blurred input itself is listed as a reference row. In-focus sources are real images from
``../shared/data/train`` and the ndev planes in ``runs/extra_data`` (never ``eval/``), split
*by file*: images used (blurred) for fine-tuning are never used for the held-out pairs. The
fine-tuning uses the optical hints a user would type into the panel (pixel size, NA, immersion,
wavelength). (b) and (c) run the same number of steps from the same seed; a time budget caps
each, and the steps actually done are reported.

Run from the repository root (about 8 minutes on 2 CPU cores with the defaults)::

    PYTHONPATH=src python benchmarks/finetune_domain_shift.py
    PYTHONPATH=src python benchmarks/finetune_domain_shift.py --model runs/mpt-tiny/best.safetensors
    PYTHONPATH=src python benchmarks/finetune_domain_shift.py --device cuda --steps 1000 \\
        --time-budget 1200 --json benchmarks/results/finetune_domain_shift.json

Prints a Markdown table (with the machine, torch version, date and the command) to stdout.
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

import numpy as np

logger = logging.getLogger("finetune_domain_shift")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_EXTRA = REPO / "runs" / "extra_data"
#: Shifted domains: simulation preset (with overrides), the optics a user would enter in the
#: panel (with the deepest defocus they expect), and the defocus levels of the held-out pairs.
DOMAINS = {
    # NA 1.2 oil at 0.1 µm/px, 0.5-4 µm defocus: another PSF family than the training one.
    "oil-1.2": {"preset": "oil-1.2", "overrides": {},
                "hints": {"pixel_size_um": 0.1, "numerical_aperture": 1.2,
                          "immersion_index": 1.515, "wavelength_nm": 550.0,
                          "max_defocus_um": 4.0},
                "levels": (1.0, 2.0, 3.0)},
    # The training optics (20x NA 0.5 dry, 0.645 µm/px) with a dim, noisy camera: 10-40
    # photons per unit instead of 300-5000, 4-8 e- read noise.
    "dim-camera": {"preset": "bbbc006",
                   "overrides": {"photons_per_unit_range": (10.0, 40.0),
                                 "read_noise_e_range": (4.0, 8.0),
                                 "defocus_um_range": (2.0, 16.0)},
                   "hints": {"pixel_size_um": 0.645, "numerical_aperture": 0.5,
                             "immersion_index": 1.0, "wavelength_nm": 540.0,
                             "max_defocus_um": 16.0},
                   "levels": (4.0, 8.0, 12.0)},
}


def domain_simulation(name: str):
    from napari_mpt_deblur.simulate import get_simulation_preset

    spec = DOMAINS[name]
    sim = get_simulation_preset(spec["preset"])
    return sim.replace(**spec["overrides"]) if spec["overrides"] else sim
#: Held-out sources (everything else found is used, blurred, for fine-tuning).
HELD_OUT = ("ndev_neocortex-3Ch_c1", "ndev_neuron-4Ch_c2", "ndev_neuron-4Ch_c3",
            "ndev_scratch_nuclei_t3", "ndev_scratch_nuclei_t4", "j21_s2_w2", "k14_s1_w2", "d0")
#: Rows: label, the --modes key, and the fine-tuning settings that make the row.
VARIANTS = (
    ("(a) no fine-tuning", "none", None),
    ("(b) re-blur self-supervision only", "reblur_only",
     {"mode": "reblur_only", "trainable": "all"}),
    ("(c) full EFCR (re-blur + EFCR + replay)", "full", {"mode": "full", "trainable": "all"}),
    ("(d) EFCR + replay, no re-blur loss", "efcr", {"mode": "efcr", "trainable": "all"}),
    ("(e) replay at the given optics, all weights", "replay",
     {"mode": "replay", "trainable": "all"}),
    ("(f) replay at the given optics, last third of the network", "replay-late",
     {"mode": "replay", "trainable": "late"}),
    ("(g) replay at the given optics, norms and biases only", "replay-norms",
     {"mode": "replay", "trainable": "norms"}),
    # an optics-conditioned start model only: how it reads the microscope, nothing else
    ("(h) replay at the given optics, optics conditioning only", "replay-optics",
     {"mode": "replay", "trainable": "optics"}),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mpt_tiny.defocus",
                        help="start model: bundled name or checkpoint file (default: mpt-tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps per mode (default: the preset's)")
    parser.add_argument("--time-budget", type=float, default=240.0, metavar="S",
                        help="cap on each fine-tuning run, seconds (0: none)")
    parser.add_argument("--modes", nargs="+",
                        default=["none", "reblur_only", "full", "replay", "replay-late",
                                 "replay-norms"],
                        choices=[key for _, key, _ in VARIANTS],
                        help="which rows to run")
    parser.add_argument("--preset", default=None,
                        help="fine-tuning preset (default: gpu on CUDA, else cpu-laptop)")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's lr")
    parser.add_argument("--replay-optics", default="auto", choices=["auto", "user", "model"],
                        help="optics of replay pairs and of the selection score")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--patch-size", type=int, default=None,
                        help="training patch side, px (default: the preset's)")
    parser.add_argument("--reblur-dof", nargs="+", type=float, default=None, metavar="F",
                        help="re-blur defocus in depths of field (default: the preset's)")
    parser.add_argument("--reblur-kernel", type=int, default=None, metavar="PX",
                        help="largest re-blur kernel side (default: the preset's)")
    parser.add_argument("--domain", default="oil-1.2", choices=sorted(DOMAINS),
                        help="the shifted domain (module DOMAINS)")
    parser.add_argument("--levels", nargs="+", type=float, default=None,
                        help="defocus of the held-out pairs, µm (default: the domain's)")
    parser.add_argument("--crop", type=int, default=256, help="held-out pair size, px")
    parser.add_argument("--max-side", type=int, default=512,
                        help="fine-tuning images are cropped to this side, px")
    parser.add_argument("--max-eval", type=int, default=None,
                        help="use only the first N held-out sources (quick checks)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="holds train/")
    parser.add_argument("--extra", type=Path, default=DEFAULT_EXTRA,
                        help="folder of extra in-focus images (ndev planes)")
    parser.add_argument("--replay", type=Path, default=None,
                        help="in-focus images for replay (default: <data>/train/bbbc006_w2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the domain's data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="fine-tuning seeds (each mode runs once per seed)")
    parser.add_argument("--json", type=Path, default=None, help="also write every score here")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="print one table from the --json files of runs of the same domain "
                        "and settings made in parallel (e.g. one process per variant); runs "
                        "nothing")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.levels is None:
        args.levels = list(DOMAINS[args.domain]["levels"])
    return args


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def collect_sources(data: Path, extra: Path) -> list[tuple[str, np.ndarray]]:
    """In-focus 2-D images from ``data/train`` and ``extra`` (never ``eval/``)."""
    from napari_mpt_deblur.train.data import read_planes

    folders = [data / "train" / "bbbc006_w2", data / "train" / "examplehuman", extra]
    sources = []
    for folder in folders:
        if "eval" in folder.parts:
            raise ValueError(f"{folder} is the test set; it must not be used here")
        if not folder.is_dir():
            logger.warning("%s is missing; skipped", folder)
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".tif", ".tiff", ".png"):
                continue
            plane = np.asarray(read_planes(path)[0], dtype=np.float32)
            sources.append((_stem(path), plane))
    if not sources:
        raise FileNotFoundError(f"no in-focus images in {[str(f) for f in folders]}")
    return sources


def densest_window(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size``² window with the most signal (sparse nuclei images are mostly background)."""
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    step_y, step_x = max(1, h // 4), max(1, w // 4)
    best, box = -np.inf, (0, 0)
    for y in range(0, image.shape[0] - h + 1, step_y):
        for x in range(0, image.shape[1] - w + 1, step_x):
            value = float(np.mean(image[y : y + h, x : x + w]))
            if value > best:
                best, box = value, (y, x)
    return image[box[0] : box[0] + h, box[1] : box[1] + w]


def build_domain(sources, args):
    """Unlabeled blurry images for fine-tuning and held-out (blurred, sharp) pairs."""
    from napari_mpt_deblur.simulate import make_pair

    sim = domain_simulation(args.domain)
    held = [(n, s) for n, s in sources if n in HELD_OUT]
    if args.max_eval is not None:
        held = held[: args.max_eval]
    train = [(n, s) for n, s in sources if n not in HELD_OUT]
    if not held or not train:
        raise ValueError(f"need held-out and fine-tuning sources; found {len(held)} and "
                         f"{len(train)} (held-out names: {', '.join(HELD_OUT)})")
    unlabeled, unlabeled_names = [], []
    for i, (name, src) in enumerate(train):
        crop = densest_window(src, args.max_side)
        rng = np.random.default_rng([args.seed, 1, i])
        source_range = tuple(float(v) for v in np.percentile(src, (0.5, 99.9)))
        pair = make_pair(crop, sim, rng, source_range=source_range)  # random defocus
        unlabeled.append(pair.blurred)
        unlabeled_names.append(f"{name} ({pair.params['defocus_um']:.2f} µm)")
    pairs = []
    for i, (name, src) in enumerate(held):
        crop = densest_window(src, args.crop)
        source_range = tuple(float(v) for v in np.percentile(src, (0.5, 99.9)))
        for level in args.levels:
            rng = np.random.default_rng([args.seed, 2, i, round(level * 100)])
            pair = make_pair(crop, sim, rng, defocus_um=level, source_range=source_range)
            pairs.append({"source": name, "level": level, "blurred": pair.blurred,
                          "sharp": pair.sharp})
    return unlabeled, unlabeled_names, pairs


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
def domain_optics(hints: dict) -> dict:
    """The microscope part of a domain's hints (no defocus range): what ``deblur`` is given."""
    from napari_mpt_deblur.simulate.optics import OpticsHints

    return {k: hints[k] for k in OpticsHints.NAMES if k in hints}


def score(pairs, model, device: str, optics: dict | None = None) -> list[dict[str, float]]:
    """PSNR/SSIM of ``model`` (``None``: the blurred input) on every held-out pair; an
    optics-conditioned model is given ``optics`` (the domain's, as the user typed them)."""
    from napari_mpt_deblur.engine.predict import deblur
    from napari_mpt_deblur.metrics import psnr, ssim

    out = []
    for pair in pairs:
        if model is None:
            restored = pair["blurred"]
        else:
            restored = deblur(pair["blurred"], model, axes="YX", device=device, tile=0,
                              optics=optics)
        out.append({"source": pair["source"], "level": pair["level"],
                    "psnr": psnr(restored, pair["sharp"]), "ssim": ssim(restored, pair["sharp"])})
    return out


def summarise(scores, levels) -> dict[str, tuple[float, float]]:
    table = {}
    for level in levels:
        rows = [s for s in scores if s["level"] == level]
        table[f"{level:g}"] = (float(np.mean([r["psnr"] for r in rows])),
                               float(np.mean([r["ssim"] for r in rows])))
    table["mean"] = (float(np.mean([s["psnr"] for s in scores])),
                     float(np.mean([s["ssim"] for s in scores])))
    return table


#: The scores compared against the truth over all checkpoints: record key, and the words for
#: the table. All are measured here, on the run's optics and matched camera, whichever the run
#: selects with (``FinetuneConfig.selection_score``); "mix" is the mean of "user" and "sim".
SCORES = (
    ("user", "simulated PSNR on the user's images (start model's output re-blurred) at the "
             "given optics"),
    ("sim", "simulated PSNR on the bundled images at the given optics"),
    ("mix", "mean of the two above"),
    ("focus", "simulated PSNR on the sharpest crops of the user's images at the given optics"),
    ("closeness", "PSNR of the output against the start model's output (staying close to the "
                  "start)"),
    ("reblur", "re-blur PSNR on a held-out crop of the user's images (the old selection score)"),
)


class CandidateScores:
    """Every compared score, on the same optics and matched camera as the run's: the two
    selection scores a run can use (bundled images, the user's own images), pairs from the
    sharpest crops of the user's images, and how close the outputs stay to the start model's
    on the own-images pairs (the trap a score made from the start model's output could fall
    into)."""

    def __init__(self, model, unlabeled, hints, device):
        import torch

        from napari_mpt_deblur.engine.normalize import IntensityNormalization
        from napari_mpt_deblur.models.conditioning import assume_optics
        from napari_mpt_deblur.models.info import model_info
        from napari_mpt_deblur.train.optics_domain import (
            SCORE_SEED,
            SimulatedScore,
            bundled_infocus_sources,
            match_camera,
            model_simulation,
            planes_noise_sigma,
            sharpest_crop_sources,
            simulation_for_optics,
            start_output_sources,
        )

        self.device = torch.device(device)
        self.optics = domain_optics(hints)
        norm = IntensityNormalization.from_dict(model_info(model).to_dict().get("normalization"))
        sim = simulation_for_optics(model_simulation(model), **hints)
        sim = match_camera(sim, planes_noise_sigma(unlabeled, norm),
                           sources=bundled_infocus_sources(sim), normalization=norm,
                           seed=SCORE_SEED)
        common = {"seed": SCORE_SEED, "normalization": norm, "patch_size": 128}
        with assume_optics(model, self.optics):  # a conditioned model runs at the user's optics
            starts = start_output_sources(model, unlabeled, sim, device=self.device)
        own = SimulatedScore(sim, sources=starts, key="user", **common)
        self.scores = [
            own,
            SimulatedScore(sim, sources=bundled_infocus_sources(sim), key="sim", **common),
            SimulatedScore(sim, sources=sharpest_crop_sources(unlabeled, sim), key="focus",
                           **common),
        ]
        self.inputs = own.blurred
        with assume_optics(model, self.optics):
            self.start_outputs = self._outputs(model)

    @staticmethod
    def _psnr(a, b) -> float:
        import torch

        return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-12)))

    def _outputs(self, model):
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(self.inputs.to(self.device)).float().cpu()
        finally:
            model.train(was_training)

    def __call__(self, model) -> dict:
        from napari_mpt_deblur.models.conditioning import assume_optics

        out = {}
        with assume_optics(model, self.optics):
            for score in self.scores:
                out.update(score(model, device=self.device))
            out["closeness"] = self._psnr(self._outputs(model), self.start_outputs)
        return out


def checkpoint_scores(checkpoint: dict) -> dict[str, float | None]:
    """Every compared score of one checkpoint record (``None`` where it was not recorded)."""
    values = {"user": checkpoint.get("user_psnr"), "sim": checkpoint.get("sim_psnr",
                                                                          checkpoint["score"]),
              "focus": checkpoint.get("focus_psnr"), "closeness": checkpoint.get("closeness"),
              "reblur": checkpoint.get("reblur_psnr")}
    if values["user"] is not None and values["sim"] is not None:
        values["mix"] = 0.5 * (values["user"] + values["sim"])
    return values


def _thirds(checkpoint: dict, key: str) -> dict | None:
    if key == "mix":
        user, sim = _thirds(checkpoint, "user"), _thirds(checkpoint, "sim")
        return {f"{b}|{c}": 0.5 * (user[b] + sim[c]) for b, c in zip(user, sim)} if (
            user and sim) else None
    # older payloads hold the bundled score's thirds as the run's "score_by_defocus_um"
    return checkpoint.get(f"{key}_psnr_by_defocus_um") or (
        checkpoint.get("score_by_defocus_um") if key == "sim" else None)


def guard_picks(checkpoints: list[dict], key: str, *, min_gain_db: float = 0.05,
                max_level_loss_db: float = 0.1) -> list[dict]:
    """What the guard would have kept in each run had it used score ``key``: the run, the
    kept step and the true change of held-out PSNR against the start."""
    from napari_mpt_deblur.train.guard import guard_accepts

    start = next((c for c in checkpoints if c["step"] == 0), None)
    if start is None or checkpoint_scores(start).get(key) is None:
        return []

    def record(c):
        return {"score": checkpoint_scores(c)[key], "score_by_defocus_um": _thirds(c, key)}

    baseline = record(start)
    runs: dict[str, list[dict]] = {}
    for c in checkpoints:
        if c["step"]:
            runs.setdefault(c.get("run") or f"{c['mode']} seed {c['seed']}", []).append(c)
    picks = []
    for run, items in runs.items():
        best, kept = dict(baseline), start
        for c in sorted(items, key=lambda c: c["step"]):
            candidate = record(c)
            if guard_accepts(candidate, baseline=baseline, best=best, min_gain_db=min_gain_db,
                             max_level_loss_db=max_level_loss_db):
                best, kept = candidate, c
        picks.append({"run": run, "step": kept["step"],
                      "true_change": kept["true_psnr"] - start["true_psnr"]})
    return picks


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get their mean rank)."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _cell(values, digits=2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def to_markdown(rows, checkpoints, levels, info, argv, context) -> str:
    command = shlex.join(["PYTHONPATH=src", "python", "benchmarks/finetune_domain_shift.py",
                          *argv])
    machine = (f"{info['cpu_count']} CPUs, {info['platform']}, Python {info['python']}, "
               f"torch {info['torch']} ({info['torch_threads']} threads)")
    if "gpu" in info:
        machine += f", GPU {info['gpu']}"
    hints = ", ".join(f"{k} {v:g}" for k, v in DOMAINS[context["domain"]]["hints"].items())
    lines = [
        "<!-- Generated by benchmarks/finetune_domain_shift.py -->",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {info['date']}  ",
        f"Start model: `{context['model']}` (simulation: {context['model_simulation']})  ",
        f"Target domain: `{context['domain']}`; optics given as a user would ({hints}); "
        f"fine-tuned on {context['n_unlabeled']} blurry images only, scored on "
        f"{context['n_pairs']} held-out pairs ({context['n_held']} images × {len(levels)} "
        f"defocus levels); seeds {context['seeds']} (mean ± std over seeds)",
        "",
    ]
    head = ["method", *[f"{lv:g} µm PSNR" for lv in levels], "mean PSNR", "mean SSIM",
            "Δ PSNR vs (a)", "steps", "kept start", "selection score start → kept"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    base = next((r for r in rows if r["label"].startswith("(a)")), None)
    for row in rows:
        runs = row["runs"]
        cells = [row["label"]]
        for key in [f"{lv:g}" for lv in levels]:
            cells.append(_cell([r["summary"][key][0] for r in runs]))
        cells.append(_cell([r["summary"]["mean"][0] for r in runs]))
        cells.append(_cell([r["summary"]["mean"][1] for r in runs], 3))
        if base is not None and row is not base and row["label"] != "blurred input":
            ref = base["runs"][0]["summary"]["mean"][0]
            cells.append(_cell([r["summary"]["mean"][0] - ref for r in runs]) + " dB")
        else:
            cells.append("")
        cells.append(_cell([r.get("steps") for r in runs], 0))
        kept = [r["kept_start"] for r in runs if "kept_start" in r]
        cells.append(f"{sum(kept)}/{len(kept)}" if kept else "")
        val = [r["validation"] for r in runs if r.get("validation")]
        cells.append("; ".join(f"{v['baseline']:.2f} → {v['best']:.2f}" for v in val))
        lines.append("| " + " | ".join(cells) + " |")
    if checkpoints:
        truth = [c["true_psnr"] for c in checkpoints]
        lines += [
            "",
            f"Do the validation scores rank the {len(checkpoints)} checkpoints (every validation "
            "of every run above, the start included) like the true held-out PSNR, and what "
            "would the guard (+0.05 dB, at most −0.1 dB on any third) have kept with each? "
            "(the runs above used the selection score named in their settings)",
            "",
            "| score (no ground truth) | Spearman ρ with the true mean PSNR | guard's pick per "
            "run: step, true Δ PSNR |",
            "|---|---:|---|",
        ]
        for key, words in SCORES:
            values = [checkpoint_scores(c).get(key) for c in checkpoints]
            if any(v is None for v in values):
                continue
            picks = guard_picks(checkpoints, key) if key not in ("closeness", "reblur") else []
            kept = "; ".join(f"{p['run']}: {p['step']}, {p['true_change']:+.2f} dB"
                             for p in picks)
            lines.append(f"| {words} | {spearman(values, truth):+.2f} | {kept} |")
    return "\n".join(lines) + "\n"


def start_once(checkpoints: list[dict]) -> list[dict]:
    """The checkpoints with the start model's (step 0, the same in every run) counted once."""
    started = [c for c in checkpoints if c["step"] == 0][:1]
    return started + [c for c in checkpoints if c["step"] != 0] if started else list(checkpoints)


def merge_reports(paths, argv) -> str:
    """One table from several ``--json`` payloads: rows of the same label pool their runs
    (seeds), the shared rows (blurred input, no fine-tuning) are taken once, and the start
    model's checkpoint counts once in the Spearman check."""
    payloads = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    domains = {p["context"]["domain"] for p in payloads}
    if len(domains) != 1:
        raise SystemExit(f"--merge needs runs of one domain; got {sorted(domains)}")
    labels = {key: label for label, key, _ in VARIANTS}
    order = {key: i for i, (_, key, _) in enumerate(VARIANTS)}
    rows: dict[str, dict] = {}
    checkpoints = []
    for payload in payloads:
        for row in payload["rows"]:
            key = "blurred" if row["label"] == "blurred input" else (row["mode"] or "none")
            label = labels.get(key, row["label"])
            target = rows.setdefault(key, {**row, "label": label, "runs": []})
            if key in ("blurred", "none") and target["runs"]:
                continue
            target["runs"].extend(row["runs"])
        for c in payload["checkpoints"]:
            run = f"{c['mode']} seed {c['seed']}"
            if sum(p["context"]["domain"] == payload["context"]["domain"] for p in payloads) > 1:
                run += f" ({Path(paths[payloads.index(payload)]).stem})"
            checkpoints.append({**c, "run": run})
    checkpoints = start_once(checkpoints)
    ordered = [rows[k] for k in sorted(rows, key=lambda k: order.get(k, -1))]
    first = payloads[0]
    context = {**first["context"],
               "seeds": sorted({s for p in payloads for s in p["context"]["seeds"]})}
    levels = [float(k) for k in ordered[0]["runs"][0]["summary"] if k != "mean"]
    return to_markdown(ordered, checkpoints, levels, first["machine"], argv, context)


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        sys.stdout.write(merge_reports(args.merge, argv))
        return 0
    import torch

    from napari_mpt_deblur import get_device
    from napari_mpt_deblur.models.pretrained import canonical_name
    from napari_mpt_deblur.models.resolve import load_model
    from napari_mpt_deblur.train.finetune import finetune_iter, get_finetune_preset
    from napari_mpt_deblur.train.updates import UpdateKind

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(get_device(args.device))
    try:
        args.model = canonical_name(args.model)
        base = load_model(args.model, device=device)
    except FileNotFoundError as exc:
        logger.error("%s\nPass --model PATH to a trained checkpoint (e.g. "
                     "runs/mpt-tiny/best.safetensors).", exc)
        return 2
    simulation = base.info.get("simulation")
    sim_name = (simulation.get("name") or simulation.get("preset")
                if isinstance(simulation, dict) else simulation)
    del base

    sources = collect_sources(args.data, args.extra)
    unlabeled, unlabeled_names, pairs = build_domain(sources, args)
    logger.info("fine-tuning images: %s", ", ".join(unlabeled_names))
    logger.info("held-out pairs: %d (%s)", len(pairs),
                ", ".join(sorted({p["source"] for p in pairs})))
    replay_dir = args.replay or (args.data / "train" / "bbbc006_w2")
    replay = None
    if replay_dir.is_dir():
        from napari_mpt_deblur.train.data import find_images

        # held-out images stay out of every part of the fine-tuning, replay included
        replay = [p for p in find_images([replay_dir]) if _stem(p) not in HELD_OUT]
    preset = args.preset or ("gpu" if device.startswith("cuda") else "cpu-laptop")

    start = load_model(args.model, device=device)
    optics = domain_optics(DOMAINS[args.domain]["hints"])
    candidates = CandidateScores(start, unlabeled, DOMAINS[args.domain]["hints"], device)
    del start

    blurred = summarise(score(pairs, None, device), args.levels)
    rows = [{"label": "blurred input", "mode": None, "runs": [{"summary": blurred}]}]
    checkpoints: list[dict] = []
    start_truth = None
    for label, key, variant in VARIANTS:
        if key not in args.modes:
            continue
        mode = key if variant is not None else None
        row: dict = {"label": label, "mode": mode, "runs": []}
        for seed in ([None] if variant is None else args.seeds):
            model = load_model(args.model, device=device)
            run: dict = {"seed": seed}
            if variant is not None:
                steps = args.steps or get_finetune_preset(preset).steps
                changes = {**variant, "steps": steps, "device": device, "seed": seed,
                           "time_budget_s": args.time_budget or None, "preview_every": 0,
                           "state_every": 0, "val_every": max(1, steps // 4),
                           "replay_optics": args.replay_optics,
                           **DOMAINS[args.domain]["hints"]}
                if args.lr is not None:
                    changes["lr"] = args.lr
                if args.batch_size is not None:
                    changes["batch_size"] = args.batch_size
                if args.patch_size is not None:
                    changes["patch_size"] = args.patch_size
                if args.reblur_dof is not None:
                    changes["reblur_defocus_dof"] = tuple(args.reblur_dof)
                if args.reblur_kernel is not None:
                    changes["reblur_kernel_size"] = args.reblur_kernel
                settings = get_finetune_preset(preset, **changes)
                started = time.perf_counter()
                result = None
                for update in finetune_iter(model, unlabeled, settings=settings,
                                            replay_images=replay):
                    if update.kind is UpdateKind.VALIDATION:
                        # the truth for this checkpoint (the run's current weights)
                        if update.step == 0 and start_truth is not None:
                            table = start_truth
                        else:
                            table = summarise(score(pairs, model, device, optics), args.levels)
                        if update.step == 0:
                            start_truth = table
                        value = update.value
                        checkpoints.append({
                            "mode": mode, "seed": seed, "step": update.step,
                            "score": value["score"],
                            "score_name": value.get("score_name"),
                            "score_by_defocus_um": value.get("score_by_defocus_um"),
                            **candidates(model),
                            "reblur_psnr": value["reblur_psnr"],
                            "true_psnr": table["mean"][0],
                            "true_psnr_by_level": {k: v[0] for k, v in table.items()
                                                   if k != "mean"}})
                    elif update.kind is UpdateKind.DONE:
                        result = update.value["result"]
                assert result is not None
                run["seconds"] = time.perf_counter() - started
                run["steps"] = max((h["step"] for h in result.history if h["kind"] == "loss"),
                                   default=0)
                run["stopped"] = result.stopped
                run["kept_start"] = result.kept_start
                run["validation"] = {"baseline": result.baseline["score"],
                                     "best": result.best["score"],
                                     "best_step": result.best.get("step", 0),
                                     "verdict": result.verdict}
                run["settings"] = settings.to_dict()
                model = result.model
                logger.info("%s seed %s: %d steps in %.0f s (%s); %s", label, seed, run["steps"],
                            run["seconds"], result.stopped, result.verdict)
            scores = score(pairs, model, device, optics)
            run["summary"] = summarise(scores, args.levels)
            run["scores"] = scores
            logger.info("%s: mean PSNR %.2f dB, SSIM %.3f", label, *run["summary"]["mean"])
            row["runs"].append(run)
            del model
        rows.append(row)
    unique = start_once(checkpoints)

    context = {"model": args.model, "model_simulation": sim_name or "unknown",
               "domain": args.domain, "seeds": args.seeds,
               "n_unlabeled": len(unlabeled), "n_pairs": len(pairs),
               "n_held": len({p["source"] for p in pairs})}
    info = machine_info(device)
    sys.stdout.write(to_markdown(rows, unique, args.levels, info, argv, context))
    if args.json is not None:
        from napari_mpt_deblur.files import atomic_write

        payload = {"machine": info, "argv": argv, "context": context,
                   "unlabeled": unlabeled_names, "rows": rows, "checkpoints": unique}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(
            json.dumps(payload, indent=1, default=str), encoding="utf-8"), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

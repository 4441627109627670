"""Where a model's error is, by spatial frequency: its output's error against the input's.

For each validation set and defocus level asked for, the power of ``output - sharp`` and of
``input - sharp`` is summed in rings of spatial frequency (cycles per pixel) over the set's
pairs (the pairs of ``scripts/select_checkpoint.py``, validation data only). A ratio below 1
means the model removes error in that band; above 1, it adds error there. Written to find
out why the default harms some in-focus images (docs/results/selection_stage17.md): is it
intensity (low bands) or invented detail and amplified noise (high bands)?

``--photons`` repeats the pairs at other camera photon budgets (photo-electrons at full scale;
the protocol's is 1500): the harm of a model that erases fine texture grows as the noise falls.
The last column gives the output's power over the target's per band: below 1, the model
removes detail (or the target's own noise) that the input still had.

    python scripts/error_bands.py --sets smooth nuclei --levels 0 -- mpt-tiny
    python scripts/error_bands.py --sets smooth nuclei --photons 300 1500 5000 -- mpt-tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import select_checkpoint as select  # the validation pairs and the loader

from napari_mpt_deblur import deblur
from napari_mpt_deblur.metrics import psnr

#: ring edges in cycles per pixel (0.5 is Nyquist along an axis; the corners reach 0.71)
BAND_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)


def band_power(error: np.ndarray, edges: tuple[float, ...] = BAND_EDGES) -> np.ndarray:
    """Power of ``error`` in each ring of spatial frequency (Parseval: sums to size × Σ e²)."""
    power = np.abs(np.fft.fft2(error)) ** 2
    fy = np.fft.fftfreq(error.shape[0])[:, None]
    fx = np.fft.fftfreq(error.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    return np.array([power[(radius >= lo) & (radius < hi)].sum()
                     for lo, hi in itertools.pairwise(edges)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="bundled name, checkpoint or training state")
    parser.add_argument("--sets", nargs="+", default=["smooth", "nuclei"],
                        choices=list(select.VAL_SETS), metavar="SET")
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0])
    parser.add_argument("--regime", default="20x", choices=sorted(select.TARGET_LEVELS))
    parser.add_argument("--photons", nargs="+", type=float, default=None,
                        help="camera photon budgets to repeat the pairs at (default: the "
                             "protocol's)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="first N images of each set (quick checks)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = select.eval_config(args.regime)
    photons = args.photons or [base.camera.photons_per_unit]
    sets = select.available_sets(args.sets, required=args.sets)
    model = select._load(args.model)
    rows = []
    for budget in photons:
        cfg = base.replace(camera=dataclasses.replace(base.camera, photons_per_unit=budget))
        rows += _band_rows(model, cfg, sets, args.levels, args.max_images, budget)
    bands = [f"{lo:g}–{hi:g}" for lo, hi in itertools.pairwise(BAND_EDGES)]
    print("Bands, cycles/px: " + ", ".join(bands))
    print()
    print("| set, level, photons | PSNR gain (dB) | input error share by band "
          "| output error / input error | output power / target power |")
    print("|---|---:|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _band_rows(model, cfg, sets, levels, max_images, budget) -> list[tuple[str, ...]]:
    """One table row per (set, level) at one photon budget."""
    totals: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    gains: dict[tuple[str, float], list[float]] = {}
    seen: dict[tuple[str, float], int] = {}
    for name, level, blurred, sharp in select.validation_pairs(cfg, sets):
        key = (name, level)
        if level not in levels or (max_images and seen.get(key, 0) >= max_images):
            continue
        seen[key] = seen.get(key, 0) + 1
        blurred = blurred.astype(np.float32)
        output = deblur(blurred, model, axes="YX", device="cpu",
                        optics=select._optics(cfg, name))
        acc = totals.setdefault(key, dict.fromkeys(("inp", "out", "pout", "ptgt"), 0.0))
        acc["inp"] = acc["inp"] + band_power(blurred - sharp)
        acc["out"] = acc["out"] + band_power(output - sharp)
        acc["pout"] = acc["pout"] + band_power(output - output.mean())
        acc["ptgt"] = acc["ptgt"] + band_power(sharp - sharp.mean())
        gains.setdefault(key, []).append(psnr(output, sharp) - psnr(blurred, sharp))
    fmt = lambda values: ", ".join(f"{v:.3g}" for v in values)  # noqa: E731
    return [
        (f"{name} {level:g} µm, {budget:g}", f"{np.mean(gains[(name, level)]):+.2f}",
         fmt(acc["inp"] / acc["inp"].sum()), fmt(acc["out"] / acc["inp"]),
         fmt(acc["pout"] / acc["ptgt"]))
        for (name, level), acc in totals.items()
    ]

if __name__ == "__main__":
    main()

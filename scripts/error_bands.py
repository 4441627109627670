"""Where a model's error is, by spatial frequency: its output's error against the input's.

For each validation set and defocus level asked for, the power of ``output - sharp`` and of
``input - sharp`` is summed in rings of spatial frequency (cycles per pixel) over the set's
pairs (the pairs of ``scripts/select_checkpoint.py``, validation data only). A ratio below 1
means the model removes error in that band; above 1, it adds error there. Written to find
out why the default harms some in-focus images (docs/results/selection_stage17.md): is it
intensity (low bands) or invented detail and amplified noise (high bands)?

    python scripts/error_bands.py --sets smooth nuclei --levels 0 -- mpt-tiny
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import select_checkpoint as select  # the validation pairs and the loader

from napari_mpt_deblur import deblur

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
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = select.eval_config(args.regime)
    sets = select.available_sets(args.sets, required=args.sets)
    model = select._load(args.model)
    totals: dict[tuple[str, float], list[np.ndarray]] = {}
    for name, level, blurred, sharp in select.validation_pairs(cfg, sets):
        if level not in args.levels:
            continue
        blurred = blurred.astype(np.float32)
        output = deblur(blurred, model, axes="YX", device="cpu",
                        optics=select._optics(cfg, name))
        acc = totals.setdefault((name, level), [np.zeros(len(BAND_EDGES) - 1)] * 2)
        acc[0] = acc[0] + band_power(blurred - sharp)
        acc[1] = acc[1] + band_power(output - sharp)
    bands = [f"{lo:g}–{hi:g}" for lo, hi in itertools.pairwise(BAND_EDGES)]
    print("| set, level | input error share by band (cycles/px: " + ", ".join(bands)
          + ") | output error / input error, by band |")
    print("|---|---|---|")
    for (name, level), (inp, out) in totals.items():
        share = ", ".join(f"{v:.3f}" for v in inp / inp.sum())
        ratio = ", ".join(f"{v:.2f}" for v in out / inp)
        print(f"| {name} {level:g} µm | {share} | {ratio} |")


if __name__ == "__main__":
    main()

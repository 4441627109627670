"""Choose the checkpoint to ship: PSNR on ``../shared/data/val`` at fixed defocus levels.

Model selection only ever looks at ``val/`` (never ``eval/``). Each candidate deblurs the
validation images simulated at 4, 8, 16 and 24 µm (NA 0.5, 620 nm, fixed camera noise, fixed
seeds); the candidate with the best mean PSNR over levels wins.

    python scripts/select_checkpoint.py runs/*/best.safetensors runs/mpt-tiny-stage2/state.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_mpt_deblur import deblur, load_model
from napari_mpt_deblur.metrics import psnr
from napari_mpt_deblur.simulate import make_pair

VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "val" / "bbbc006_w2"
LEVELS = (4.0, 8.0, 16.0, 24.0)


def _load(path: Path):
    if path.suffix == ".pt":  # a training state: its model weights, config from the best file
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = load_model(path.with_name("best.safetensors"), device="cpu")
        model.load_state_dict(state["model"])
        model.info["name"] = f"{path.parent.name}/state@{state['step']}"
        return model
    model = load_model(path, device="cpu")
    model.info["name"] = f"{path.parent.name}/{path.stem}"
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = [tifffile.imread(p) for p in sorted(VAL.glob("*.tif"))]
    pairs = []
    for i, img in enumerate(images):
        lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.9]))
        for level in LEVELS:
            p = make_pair(
                img,
                "bbbc006",
                np.random.default_rng(1000 + i),
                defocus_um=level,
                defocus_scale=1.0,
                source_range=(lo, hi),
            )
            pairs.append((level, p.blurred, p.sharp))
    rows = {"blurred input": {lv: [] for lv in LEVELS}}
    for level, blurred, sharp in pairs:
        rows["blurred input"][level].append(psnr(blurred, sharp))
    for path in args.candidates:
        model = _load(path)
        scores = {lv: [] for lv in LEVELS}
        for level, blurred, sharp in pairs:
            scores[level].append(psnr(deblur(blurred, model, device="cpu"), sharp))
        rows[model.info["name"]] = scores
    print("| candidate | " + " | ".join(f"{lv:g} µm" for lv in LEVELS) + " | mean |")
    print("|---|" + "---|" * (len(LEVELS) + 1))
    for name, scores in rows.items():
        means = [float(np.mean(scores[lv])) for lv in LEVELS]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {np.mean(means):.2f} |")


if __name__ == "__main__":
    main()

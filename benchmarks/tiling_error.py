"""How far tiled inference departs from whole-image inference, and whether seams show.

MPT's channel attention (ISCA) is global, so a tile sees different statistics than the whole
image and the two results differ; blending overlapping tiles with smooth ramps hides the borders.
For each tile size and overlap this prints the difference to whole-image inference (in % of the
reference's range), the PSNR of each against the in-focus reference, and a seam score: the mean
jump across tile borders divided by the mean jump elsewhere (1.0 = no visible seam).

    python benchmarks/tiling_error.py [--model mpt-tiny] [--out docs/results/tiling.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch

from napari_mpt_deblur import deblur, load_model, load_sample
from napari_mpt_deblur.engine.tiling import pad_to_multiple, tile_grid
from napari_mpt_deblur.metrics import psnr
from napari_mpt_deblur.models.pretrained import canonical_name


def seam_score(image: np.ndarray, tile: int, overlap: int, multiple: int) -> float:
    """Mean |jump| across the centres of tile overlaps / mean |jump| elsewhere (columns+rows)."""
    padded, (top, left) = pad_to_multiple(image, multiple)
    tiles = tile_grid(*padded.shape, tile, overlap)
    xs = sorted({t.x0 + overlap // 2 - left for t in tiles if t.x0 > 0})
    ys = sorted({t.y0 + overlap // 2 - top for t in tiles if t.y0 > 0})
    img = image.astype(np.float64)
    dx, dy = np.abs(np.diff(img, axis=1)), np.abs(np.diff(img, axis=0))
    at = [dx[:, x - 1] for x in xs if 0 < x < img.shape[1]]
    at += [dy[y - 1] for y in ys if 0 < y < img.shape[0]]
    if not at:
        return float("nan")
    return float(np.mean(np.concatenate(at)) / np.mean(np.concatenate([dx.ravel(), dy.ravel()])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpt-tiny")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = load_model(canonical_name(args.model), device="cpu")
    sample = load_sample()
    blurred, sharp = sample.blurred, sample.sharp.astype(np.float32)
    t = time.perf_counter()
    whole = deblur(blurred, model, tile=0, device="cpu").astype(np.float32)
    t_whole = time.perf_counter() - t
    span = float(sharp.max() - sharp.min())
    lines = [
        f"Model `{args.model}`, bundled sample ({blurred.shape[0]}×{blurred.shape[1]}, 8 µm "
        f"defocus); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {datetime.date.today()}. Command: "
        f"`python benchmarks/tiling_error.py --model {args.model}`.",
        "",
        "| tiles | overlap | tiles run | mean / max diff to whole (% range) "
        "| PSNR vs in-focus (dB) | seam score | time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| whole image | – | 1 | 0 / 0 | {psnr(whole, sharp):.2f} | – | {t_whole:.1f} |",
    ]
    for tile, overlap in [(128, 0), (128, 32), (128, 64), (256, 0), (256, 64), (256, 128)]:
        t = time.perf_counter()
        from napari_mpt_deblur.engine.predict import DeblurReport

        rep = DeblurReport()
        out = deblur(blurred, model, tile=tile, overlap=overlap, device="cpu", report=rep)
        out = out.astype(np.float32)
        dt = time.perf_counter() - t
        diff = np.abs(out - whole) / span * 100
        lines.append(
            f"| {tile}×{tile} | {overlap} | {rep.n_tiles} | {diff.mean():.2f} / {diff.max():.1f} | "
            f"{psnr(out, sharp):.2f} | {seam_score(out, tile, overlap, 128):.2f} | {dt:.1f} |"
        )
    lines.append("")
    lines.append(
        f"Seam score of the whole-image result on the same grid (128, 32): "
        f"{seam_score(whole, 128, 32, 128):.2f}."
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

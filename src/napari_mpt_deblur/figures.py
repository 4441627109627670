"""Before/after figures for the demo, the docs and the evaluation harness."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._io import atomic_write

__all__ = ["before_after_png", "to_uint8"]


def to_uint8(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Display scaling: percentiles 0.5-99.8 (or the given range) to 0-255."""
    img = np.asarray(image, dtype=np.float32)
    if lo is None or hi is None:
        lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.8]))
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip((img - lo) * scale, 0, 255).astype(np.uint8)


def before_after_png(
    path: str | os.PathLike,
    panels: dict[str, np.ndarray],
    *,
    shared_contrast_with: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write panels side by side with titles (matplotlib when installed, else plain tiles).

    Every panel uses the contrast of ``shared_contrast_with`` (default: the last panel, e.g. the
    in-focus reference) so brightness differences stay visible.
    """
    names = list(panels)
    key = shared_contrast_with or names[-1]
    lo, hi = (float(v) for v in np.percentile(np.asarray(panels[key], np.float32), [0.5, 99.8]))
    tiles = [to_uint8(panels[n], lo, hi) for n in names]
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        gap = np.full((tiles[0].shape[0], 8), 255, np.uint8)
        row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
        import imageio.v3 as iio

        return atomic_write(
            path, lambda tmp: iio.imwrite(tmp, row, extension=".png"), overwrite=overwrite
        )

    h, w = tiles[0].shape[:2]
    fig, axes = plt.subplots(1, len(tiles), figsize=(4 * len(tiles), 4 * h / w + 0.4), dpi=100)
    for ax, name, tile in zip(np.atleast_1d(axes), names, tiles):
        ax.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    fig.tight_layout()

    def writer(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    try:
        return atomic_write(path, writer, overwrite=overwrite)
    finally:
        plt.close(fig)

"""The example figure: crops of every method side by side, per image set and defocus level.

Numbers in a table do not show *how* a method fails (ringing, invented texture, lost contrast);
the crops do. :func:`~napari_mpt_deblur.evaluation.evaluate` picks the windows
(``_best_window``) and keeps the crops in ``EvalResult.examples``; :func:`save_example_figure`
draws them. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .results import EvalResult

__all__ = ["save_example_figure"]


def _best_window(image: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size`` window with the most foreground (highest mean), for the example figure.

    Sparse images (nuclei) are mostly background; the densest window shows the most cells.
    """
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    step_y, step_x = max(1, h // 4), max(1, w // 4)
    best, box = -1.0, (0, 0)
    for y in range(0, image.shape[0] - h + 1, step_y):
        for x in range(0, image.shape[1] - w + 1, step_x):
            value = float(np.mean(image[y : y + h, x : x + w]))
            if value > best:
                best, box = value, (y, x)
    return slice(box[0], box[0] + h), slice(box[1], box[1] + w)


def save_example_figure(
    result: EvalResult,
    path: str | os.PathLike,
    *,
    rows: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a grid of example crops: rows are image × level (and the real pair).

    Columns are the methods, with the in-focus reference last. Every crop of a row uses the
    display contrast of that row's in-focus crop, so that a method that changes brightness or
    contrast shows it.

    Parameters
    ----------
    result : EvalResult
        From :func:`evaluate` in this session (crops are not stored in ``results.json``).
    path : path
        PNG file, written atomically.
    rows : sequence of str, optional
        Row labels (keys of ``result.examples``) to show; default all.
    overwrite : bool
        Replace an existing file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .._io import atomic_write
    from ..figures import to_uint8

    labels = list(result.examples) if rows is None else list(rows)
    missing = [r for r in labels if r not in result.examples]
    if missing:
        raise ValueError(f"rows {missing} are not in result.examples ({list(result.examples)})")
    if not labels:
        raise ValueError("result has no example crops (evaluate() keeps them; results.json not)")
    columns = [m for m in result.methods if any(m in result.examples[r] for r in labels)]
    columns.append("in focus")
    size = 2.4
    fig, axes = plt.subplots(len(labels), len(columns), squeeze=False, dpi=100,
                             figsize=(size * len(columns), size * len(labels) + 0.3))  # fmt: skip
    for i, label in enumerate(labels):
        panels = result.examples[label]
        lo, hi = (float(v) for v in np.percentile(panels["in focus"], [0.5, 99.8]))
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if column in panels:
                ax.imshow(to_uint8(panels[column], lo, hi), cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")  # fmt: skip
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite=overwrite)
    finally:
        plt.close(fig)

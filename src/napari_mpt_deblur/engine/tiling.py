"""Tile grids and blending windows for images larger than memory allows.

Tiles overlap and are blended with a separable raised-cosine ramp across the overlap, so the
weights are smooth and sum to a positive value everywhere: no step appears at tile borders even
though MPT's channel attention (ISCA) sees only its own tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "blend_window", "pad_to_multiple", "tile_grid"]


@dataclass(frozen=True)
class Tile:
    """A tile's slice in the padded image (rows ``y0:y1``, columns ``x0:x1``)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering ``height x width``; the last tile of a row ends at the edge."""
    if tile <= 0:
        raise ValueError(f"tile must be positive; got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}); got {overlap}")
    th, tw = min(tile, height), min(tile, width)
    return [
        Tile(y, y + th, x, x + tw)
        for y in _starts(height, th, overlap)
        for x in _starts(width, tw, overlap)
    ]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    weights = np.ones(length, dtype=np.float32)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        # Raised cosine from ~0 to 1; never exactly zero so every pixel has positive weight.
        t = (np.arange(ramp_len, dtype=np.float32) + 0.5) / ramp_len
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        if not at_start:
            weights[:ramp_len] = ramp
        if not at_end:
            weights[-ramp_len:] = ramp[::-1]
    return weights


def blend_window(tile: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    """Blending weights of ``tile``; tiles touching the image border are not tapered there."""
    wy = _ramp(tile.y1 - tile.y0, overlap, tile.y0 == 0, tile.y1 == height)
    wx = _ramp(tile.x1 - tile.x0, overlap, tile.x0 == 0, tile.x1 == width)
    return wy[:, None] * wx[None, :]


def pad_to_multiple(
    plane: np.ndarray, multiple: int, min_size: int = 0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes up to a multiple (and at least ``min_size``).

    Padding is split between both sides so borders see mirrored context on each side. Returns
    the padded array and the ``(top, left)`` offsets to crop the result back.
    """
    h, w = plane.shape[-2:]
    th = max(int(np.ceil(h / multiple)) * multiple, min_size)
    tw = max(int(np.ceil(w / multiple)) * multiple, min_size)
    top, left = (th - h) // 2, (tw - w) // 2
    pad = [(0, 0)] * (plane.ndim - 2) + [(top, th - h - top), (left, tw - w - left)]
    if th == h and tw == w:
        return plane, (0, 0)
    return np.pad(plane, pad, mode="symmetric" if min(h, w) < 2 else "reflect"), (top, left)

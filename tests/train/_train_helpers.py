"""Helpers for the training tests: a tiny stand-in network and synthetic in-focus images.

A uniquely named module (not ``conftest``) so that test files can import it unambiguously.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TinyConfig:
    """Config of :class:`TinyNet` (mimics the models' ``config`` attribute)."""

    width: int = 8
    in_channels: int = 1
    out_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


# The fine-tuning tests' high-NA optics, as a user types them into the panel.
OIL = dict(pixel_size_um=0.1, numerical_aperture=1.2, wavelength_nm=550.0,
           immersion_index=1.515)


class Identity(nn.Module):
    """Returns its input (times one trainable scale): a model that neither helps nor harms."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.info: dict = {}

    def forward(self, x):
        return self.scale * x


class TinyNet(nn.Module):
    """Residual two-layer CNN: fast enough for many optimiser steps in a test."""

    size_multiple = 8

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.config = TinyConfig(width=width)
        self.info: dict = {"arch": "tiny-test"}
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.conv1(x))
        h = torch.nn.functional.gelu(self.conv2(h))
        return x + self.conv3(h)


def cells(rng: np.random.Generator, shape=(160, 176), n=30) -> np.ndarray:
    """Synthetic in-focus 'cells': sharp bright discs and thin lines on a dim background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100.0)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(2, 7)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.uniform(500, 2500)
    for _ in range(n // 3):
        y0 = int(rng.integers(0, shape[0]))
        img[y0, :] += rng.uniform(300, 900)
    return np.clip(img, 0, 4095).astype(np.uint16)


def blurry_user_images(seed: int, *, sigma_px: float, noise: float, n: int = 2,
                       shape=(160, 160)) -> list[np.ndarray]:
    """``n`` defocus-like, noisy uint16 'user' images (what fine-tuning adapts to)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sharp = cells(rng, shape).astype(np.float32)
        blurred = gaussian_filter(sharp, sigma_px) + rng.normal(0, noise, sharp.shape)
        out.append(np.clip(blurred, 0, 65535).astype(np.uint16))
    return out

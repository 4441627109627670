"""The bundled sample: a real in-focus BBBC006 crop and its simulated 8 µm defocus.

Provenance and licence: ``data/README.md``; made by ``scripts/make_sample_data.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["Sample", "load_sample", "make_sample_data"]


@dataclass(frozen=True)
class Sample:
    """A defocused image with its in-focus reference."""

    name: str
    blurred: np.ndarray
    sharp: np.ndarray | None
    pixel_size_um: float
    params: dict[str, Any]


def load_sample() -> Sample:
    """Read the bundled sample (no network, no ``shared/`` folder needed)."""
    import tifffile

    folder = resources.files("napari_mpt_deblur") / "data"
    with resources.as_file(folder / "sample_defocused.tif") as p:
        blurred = tifffile.imread(p)
    with resources.as_file(folder / "sample_infocus.tif") as p:
        sharp = tifffile.imread(p)
    params = json.loads((folder / "sample_params.json").read_text())
    return Sample(
        "BBBC006 U2OS actin, 8 µm defocus (simulated)",
        blurred,
        sharp,
        float(params.get("pixel_size_um", 0.645)),
        params,
    )


def make_sample_data() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample-data contribution: the defocused image and its in-focus reference."""
    sample = load_sample()
    scale = (sample.pixel_size_um, sample.pixel_size_um)
    common = {"scale": scale, "units": ("µm", "µm"), "colormap": "gray"}
    provenance = {
        "source": "BBBC006v1 (Broad Bioimage Benchmark Collection), well m15 site 1, w2 actin",
        "simulation": sample.params,
    }
    return [
        (
            sample.sharp,
            {**common, "name": "in focus (reference)", "visible": False, "metadata": provenance},
            "image",
        ),
        (sample.blurred, {**common, "name": "defocused sample", "metadata": provenance}, "image"),
    ]

"""The bundled samples: real in-focus images and their simulated 8 µm defocus.

* ``defocused_actin``: a BBBC006 actin crop (one channel).
* ``defocused_nuclei_actin``: DNA (Hoechst) and actin of one CellProfiler "ExampleHuman" field,
  so that the detection preview has a real nuclear channel to count, next to a channel whose
  "nuclei" would be texture.

Provenance and licences: ``data/README.md``; made by ``scripts/make_sample_data.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "Channel",
    "Sample",
    "load_nuclei_actin_sample",
    "load_sample",
    "make_nuclei_actin_sample",
    "make_sample_data",
]

EXAMPLE_HUMAN_SOURCE = (
    "CellProfiler \"ExampleHuman\" HT29 cells (David Root, CC0), one field: "
    "d0 DNA (Hoechst), d2 actin (phalloidin)"
)


@dataclass(frozen=True)
class Sample:
    """A defocused image with its in-focus reference."""

    name: str
    blurred: np.ndarray
    sharp: np.ndarray | None
    pixel_size_um: float
    params: dict[str, Any]


def _read_bundled(stem: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(defocused, in focus, parameters)`` of a bundled sample, from the package itself (no
    network, no ``shared/`` folder needed)."""
    import tifffile

    folder = resources.files("napari_mpt_deblur") / "data"
    with resources.as_file(folder / f"{stem}_defocused.tif") as p:
        blurred = tifffile.imread(p)
    with resources.as_file(folder / f"{stem}_infocus.tif") as p:
        sharp = tifffile.imread(p)
    return blurred, sharp, json.loads((folder / f"{stem}_params.json").read_text())


def load_sample() -> Sample:
    """Read the bundled actin sample."""
    blurred, sharp, params = _read_bundled("sample")
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


@dataclass(frozen=True)
class Channel:
    """One channel of a multi-channel sample: defocused image, in-focus reference, how made."""

    name: str
    stain: str
    blurred: np.ndarray
    sharp: np.ndarray
    params: dict[str, Any]


def load_nuclei_actin_sample() -> tuple[Channel, Channel]:
    """Read the bundled two-channel sample: (DNA/Hoechst, actin) of the same field."""
    blurred, sharp, params = _read_bundled("sample_nuclei_actin")
    (dna_key, dna), (actin_key, actin) = params.items()  # channel order of the files
    return (
        Channel("nuclei", dna_key, blurred[0], sharp[0], dna),
        Channel("actin", actin_key, blurred[1], sharp[1], actin),
    )


def make_nuclei_actin_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample-data contribution: nuclei and actin of one field, defocused by 8 µm.

    Both defocused channels are shown overlaid (additive, cyan nuclei, magenta actin); their
    in-focus references are added hidden. The nuclei layer comes last, so it is the active
    layer, and its name says "nuclei" and "Hoechst", so the detection preview picks it; the
    actin layer's name says "actin", so counting "nuclei" there draws the preview's warning.
    The simulation parameters sit under ``metadata["simulation"]`` for the fine-tune panel.
    """
    nuclei, actin = load_nuclei_actin_sample()
    layers = []
    for channel, colormap, suffix, visible in (
        (nuclei, "cyan", "in focus (reference)", False),
        (actin, "magenta", "in focus (reference)", False),
        (actin, "magenta", "(defocused)", True),
        (nuclei, "cyan", "(defocused)", True),
    ):
        size = float(channel.params.get("pixel_size_um", 0.645))
        label = "nuclei (Hoechst)" if channel is nuclei else "actin (phalloidin)"
        metadata = {
            "source": f"{EXAMPLE_HUMAN_SOURCE}; this layer: {channel.params.get('source')}",
            "stain": channel.stain,
            "simulation": channel.params,
        }
        kwargs = {
            "name": f"{label} {suffix}",
            "scale": (size, size),
            "units": ("µm", "µm"),
            "colormap": colormap,
            "blending": "additive",
            "visible": visible,
            "metadata": metadata,
        }
        data = channel.blurred if visible else channel.sharp
        layers.append((data, kwargs, "image"))
    return layers

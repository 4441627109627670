"""Make the bundled sample: a 512x512 crop of a real in-focus BBBC006 image, defocused by the
project's simulator (8 µm, NA 0.5, 620 nm, 0.645 µm/px, 12-bit camera noise, seed 2024).

Source: ../shared/data/val/bbbc006_w2/m15_s1_w2.tif (BBBC006v1, Ljosa et al. 2012, Broad
Bioimage Benchmark Collection; subset from GitHub l-haus/mae-microscopy-embeddings, MIT). It is a
validation image: no shipped model is trained on it.

    python scripts/make_sample_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from napari_mpt_deblur.simulate import make_pair

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared/data/val/bbbc006_w2/m15_s1_w2.tif"
OUT = ROOT / "src/napari_mpt_deblur/data"
PARAMS = {
    "numerical_aperture": 0.5,
    "wavelength_nm": 620.0,
    "immersion_index": 1.0,
    "sample_index": 1.0,
    "pixel_size_um": 0.645,
    "defocus_nominal_um": 8.0,
    "defocus_scale": 1.0,
    "defocus_um": 8.0,
    "photons_per_unit": 1500.0,
    "read_noise_e": 4.0,
    "offset_adu": 110.0,
    "gain_adu_per_e": 1.0,
    "bit_depth": 12,
    "full_scale_fraction": 0.7,
}


def main() -> None:
    image = tifffile.imread(SOURCE)
    crop = image[4:516, 92:604]
    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.9]))
    pair = make_pair(
        crop,
        "bbbc006",
        np.random.default_rng(2024),
        defocus_um=8.0,
        defocus_scale=1.0,
        source_range=(lo, hi),
    )
    # Back to 12-bit camera-like counts with one affine for both images.
    to_counts = lambda x: np.clip(np.rint(x * 3000.0 + 110.0), 0, 4095).astype(np.uint16)  # noqa: E731
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"axes": "YX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645}
    tifffile.imwrite(
        OUT / "sample_defocused.tif",
        to_counts(pair.blurred),
        ome=True,
        metadata=meta,
        compression="zlib",
    )
    tifffile.imwrite(
        OUT / "sample_infocus.tif",
        to_counts(pair.sharp),
        ome=True,
        metadata=meta,
        compression="zlib",
    )
    (OUT / "sample_params.json").write_text(json.dumps(pair.params, indent=1, default=float))
    print("wrote", OUT)


if __name__ == "__main__":
    main()

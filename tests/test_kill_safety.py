"""No data loss when a run is killed: SIGKILL the real command-line program, then look at disk.

A SIGKILL cannot be caught, so whatever is on disk afterwards is what a crash, an out-of-memory
kill or a power cut would leave. The guarantees checked here:

* ``deblur``: every visible file in the output folder is a complete, readable image of the right
  shape (outputs appear by atomic rename); a write cut short leaves only a hidden
  ``.<name>.<random>.part<ext>`` temporary file, which the next run removes once it is stale
  (:func:`napari_mpt_deblur._io.remove_stale_temp_files`).
* ``train`` (``fit``) and fine-tuning: the resumable state and the checkpoints on disk are always
  complete, and a killed run continues from the last saved step with ``--resume``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_mpt_deblur import cli, deblur, load_model
from napari_mpt_deblur._io import expand_inputs, read_image, remove_stale_temp_files

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")

SRC = Path(__file__).resolve().parents[1] / "src"
START_TIMEOUT_S = 240.0  # a cold start imports torch; the shared CI machine can be slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(), cwd=log.parent)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout_s: float = START_TIMEOUT_S):
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (code {proc.returncode}) before it could be "
                            f"killed mid-way:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"nothing happened within {timeout_s:.0f} s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def _age(paths, seconds: float = 3600.0) -> None:
    """Make files look as old as a leftover from a run long ago."""
    past = time.time() - seconds
    for p in paths:
        os.utime(p, (past, past))


def _state_step(path: Path) -> int:
    if not path.is_file():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth uint16 'cells' image (for inputs whose content does not matter)."""
    from scipy.ndimage import gaussian_filter

    spikes = (rng.random(shape) < 0.01).astype(np.float64)
    img = gaussian_filter(spikes, 3.0)
    img = 100 + 3000 * img / img.max() + rng.normal(0, 5, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


# -------------------------------------------------------------------------------- deblur
@pytest.mark.slow
def test_sigkill_during_a_batch_leaves_only_complete_outputs(tmp_path, tiny_checkpoint, rng):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shapes = {"a_first": (160, 176), "b": (1024, 1024), "c": (1024, 1024), "d": (1000, 1030)}
    images = {}
    for name, shape in shapes.items():
        images[name] = _blobs(rng, shape)
        tifffile.imwrite(inputs / f"{name}.tif", images[name])
    out = tmp_path / "out"
    log = tmp_path / "deblur.log"
    proc = _start(["-m", "napari_mpt_deblur", "deblur", str(inputs), "-o", str(out), "--model",
                   str(tiny_checkpoint), "--device", "cpu", "--no-progress"], log)
    first = out / "a_first_deblurred.tif"

    def first_done_and_next_started() -> bool:
        if not first.exists():
            return False
        time.sleep(0.3)  # into the 1024 x 1024 images
        return True

    _kill_when(proc, first_done_and_next_started, log)

    visible = _visible(out)
    expected = {f"{n}_deblurred.tif" for n in shapes}
    assert {p.name for p in visible} <= expected
    assert first in visible and len(visible) < len(shapes), "the kill was not mid-run"
    for path in visible:
        result, _ = read_image(path)  # complete and readable
        source = images[path.name.removesuffix("_deblurred.tif")]
        assert result.shape == source.shape and result.dtype == source.dtype
    # The complete file holds the full result, not just a readable header.
    expect = deblur(images["a_first"], load_model(tiny_checkpoint, device="cpu"), device="cpu")
    np.testing.assert_allclose(read_image(first)[0].astype(np.int64), expect, atol=1)
    # Anything else is a hidden temporary file of ours, removed once stale.
    leftovers = _hidden(out)
    _age(leftovers)
    assert sorted(remove_stale_temp_files(out)) == leftovers
    assert _hidden(out) == []


_SLOW_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    import tifffile
    from napari_mpt_deblur import cli

    marker = pathlib.Path(sys.argv[1])
    real_imwrite = tifffile.imwrite

    def imwrite_then_hang(path, data, *args, **kwargs):
        real_imwrite(path, data, *args, **kwargs)
        if "b_deblurred" in str(path):  # cut the write of the second output short
            tmp = pathlib.Path(path)
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            marker.touch()
            time.sleep(600)

    tifffile.imwrite = imwrite_then_hang
    raise SystemExit(cli.main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_a_hidden_temp_file_that_the_next_run_removes(
        tmp_path, tiny_checkpoint, rng, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(inputs / f"{name}.tif", _blobs(rng, (96, 112)))
    out = tmp_path / "out"
    script = tmp_path / "slow_writer.py"
    script.write_text(_SLOW_WRITER)
    marker = tmp_path / "writing"
    args = ["deblur", str(inputs), "-o", str(out), "--model", str(tiny_checkpoint),
            "--device", "cpu", "--no-progress"]
    log = tmp_path / "deblur.log"
    proc = _start([str(script), str(marker), *args], log)
    _kill_when(proc, marker.exists, log)

    assert [p.name for p in _visible(out)] == ["a_deblurred.tif"]  # b was never renamed
    assert read_image(out / "a_deblurred.tif")[0].shape == (96, 112)
    (partial,) = _hidden(out)
    assert partial.name.startswith(".b_deblurred.") and ".part" in partial.name
    with pytest.raises(ValueError, match="not a readable TIFF"):
        read_image(partial)  # why it must never be visible as an output

    # A fresh temp file may belong to a run still writing: it is left alone ...
    assert remove_stale_temp_files(out) == [] and partial.exists()
    # ... and once stale, the next run removes it and completes every output.
    _age([partial])
    with caplog.at_level(logging.INFO):
        assert cli.main([*args, "--overwrite"]) == 0
    assert "interrupted earlier run" in caplog.text
    assert _hidden(out) == []
    assert [p.name for p in _visible(out)] == ["a_deblurred.tif", "b_deblurred.tif",
                                               "c_deblurred.tif"]
    for path in _visible(out):
        assert read_image(path)[0].shape == (96, 112)


def test_only_our_stale_temp_files_are_removed(tmp_path):
    keep = [
        tmp_path / "cells.tif",  # a user's file
        tmp_path / ".cells.tif",  # hidden, but not a temp name of ours
        tmp_path / ".cells.abc.part.tif",  # random part too short: not mkstemp's
        tmp_path / ".notes.abcdefgh.tmp",  # .tmp of another program
        tmp_path / "cells.abcdefgh.part.tif",  # not hidden
    ]
    ours = [
        tmp_path / ".cells_deblurred.ome.k3x_9q2a.part.tif",  # write_image / atomic_write
        tmp_path / ".best.safetensors.a1b2c3d4.tmp",  # save_checkpoint
        tmp_path / ".state.pt.zz99yy88.tmp",  # training state
    ]
    for p in keep + ours:
        p.write_bytes(b"x")
    (tmp_path / ".dir.abcdefgh.part.tif").mkdir()  # never a folder
    fresh = tmp_path / ".other_run.qwertyui.part.tif"  # being written by someone right now
    fresh.write_bytes(b"x")
    _age([*keep, *ours, tmp_path / ".dir.abcdefgh.part.tif"])

    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in [*keep, fresh])
    assert not any(p.exists() for p in ours)
    assert remove_stale_temp_files(tmp_path / "missing") == []
    assert remove_stale_temp_files(tmp_path, min_age_s=0) == [fresh]


def test_folder_inputs_skip_hidden_partial_files(tmp_path, rng):
    tifffile.imwrite(tmp_path / "cells.tif", _blobs(rng, (32, 32)))
    (tmp_path / ".cells_deblurred.abcdefgh.part.tif").write_bytes(b"II*\x00partial")
    (tmp_path / "._cells.tif").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    assert [p.name for p in expand_inputs([tmp_path])] == ["cells.tif"]


# ----------------------------------------------------------------------- training / tuning
@pytest.fixture
def train_data(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    for sub, count in (("train", 2), ("val", 1)):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            tifffile.imwrite(root / sub / f"img{i}.tif", _blobs(rng, (160, 176)))
    return root


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_state(tmp_path, train_data):
    from napari_mpt_deblur.train.config import TrainConfig
    from napari_mpt_deblur.train.loop import fit

    run = tmp_path / "run"
    cfg = {"model": "mpt-test", "data_root": str(train_data), "train_dirs": ["train"],
           "val_dirs": ["val"], "patch_size": 128, "batch_size": 1, "steps": 1000,
           "val_every": 2, "ckpt_every": 1, "num_val_patches": 1, "warmup_steps": 0,
           "device": "cpu", "out_dir": str(run)}
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "train.log"
    proc = _start(["-m", "napari_mpt_deblur", "train", "--config", str(config),
                   "--no-progress"], log)
    state_path = run / "state.pt"
    _kill_when(proc, lambda: _state_step(state_path) >= 3, log)

    state = torch.load(state_path, map_location="cpu", weights_only=True)  # complete
    saved = int(state["step"])
    assert 3 <= saved < 1000 and state["kind"] == "fit"
    best = load_model(run / "best.safetensors", device="cpu")  # complete checkpoint
    # Each step writes its best checkpoint just before its state, so a kill in between can
    # leave the best file one step ahead of the state (ckpt_every=1); never further.
    assert best.info["training"]["step"] <= saved + 1
    leftovers = _hidden(run)
    _age(leftovers)
    assert sorted(remove_stale_temp_files(run)) == leftovers  # only our temp files

    steps = []
    history = fit(TrainConfig.from_file(config).replace(steps=saved + 1), resume=True,
                  progress=lambda step, total, info: steps.append(step))
    assert steps == [saved + 1]  # continued, did not start over
    assert history.stopped == "completed" and history.step == saved + 1
    assert history.train[0]["step"] == 1  # the history from before the kill was kept
    assert _state_step(state_path) == saved + 1


_FINETUNE = textwrap.dedent(
    """
    import sys
    from napari_mpt_deblur._io import expand_inputs
    from napari_mpt_deblur.models.resolve import load_model
    from napari_mpt_deblur.train.finetune import finetune, get_finetune_preset

    checkpoint, images, out = sys.argv[1:4]
    # The CLI's settings for these options, but with a resumable state after every step.
    settings = get_finetune_preset("cpu-laptop", steps=1000, batch_size=1, patch_size=128,
                                   device="cpu", pixel_size_um=0.5, state_every=1,
                                   val_every=1, preview_every=0)
    model = load_model(checkpoint, device="cpu")
    finetune(model, list(expand_inputs([images])), settings=settings, out_path=out)
    """
)


@pytest.mark.slow
def test_killed_finetune_resumes_from_its_last_state(tmp_path, tiny_checkpoint, caplog):
    from napari_mpt_deblur.models.checkpoint import read_header

    rng = np.random.default_rng(9)
    images = tmp_path / "mine"
    images.mkdir()
    for i in range(2):
        tifffile.imwrite(images / f"b{i}.tif", _blobs(rng, (192, 200)))
    out = tmp_path / "ft.safetensors"
    state_path = tmp_path / "ft.state.pt"
    script = tmp_path / "finetune_job.py"
    script.write_text(_FINETUNE)
    log = tmp_path / "finetune.log"
    proc = _start([str(script), str(tiny_checkpoint), str(images), str(out)], log)
    _kill_when(proc, lambda: _state_step(state_path) >= 2, log)

    saved = _state_step(state_path)
    assert 2 <= saved < 1000
    assert load_model(out, device="cpu").info["finetune"]["steps_done"] >= 2  # complete file
    leftovers = _hidden(tmp_path)
    _age(leftovers)
    assert sorted(remove_stale_temp_files(tmp_path)) == leftovers

    args = ["finetune", str(images), "--model", str(tiny_checkpoint), "-o", str(out),
            "--steps", str(saved + 1), "--batch-size", "1", "--patch-size", "128",
            "--device", "cpu", "--pixel-size-um", "0.5", "--no-progress"]
    assert cli.main(args) == 1  # the existing output is never silently replaced
    with caplog.at_level(logging.INFO):
        assert cli.main([*args, "--resume"]) == 0
    assert f"resumed fine-tuning at step {saved} " in caplog.text
    assert read_header(out)["finetune"]["steps_done"] == saved + 1
    assert _state_step(state_path) == saved + 1

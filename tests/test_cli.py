"""The mpt-deblur command line: real files in, real files out, nothing overwritten."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_mpt_deblur import cli
from napari_mpt_deblur._io import read_image, write_image


@pytest.fixture
def tiff_520x696(tmp_path, rng):
    folder = tmp_path / "in"
    image = (rng.random((520, 696)) * 3000 + 110).astype(np.uint16)
    path = write_image(
        folder / "cells.ome.tif", image, {"axes": "YX", "pixel_size_um": (0.645, 0.645)}
    )
    return path, image


def test_deblur_round_trip_keeps_shape_dtype_and_pixel_size(
    tiff_520x696, tiny_checkpoint, tmp_path
):
    src, image = tiff_520x696
    out_dir = tmp_path / "out"
    before = src.read_bytes()
    code = cli.main(
        [
            "deblur",
            str(src.parent),
            "-o",
            str(out_dir),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    result, meta = read_image(out_dir / "cells_deblurred.ome.tif")
    assert result.shape == image.shape and result.dtype == np.uint16
    assert meta["pixel_size_um"] == pytest.approx((0.645, 0.645))
    assert meta["axes"] == "YX"
    assert src.read_bytes() == before
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers

    # A second run refuses to overwrite; --overwrite replaces.
    again = [
        "deblur",
        str(src),
        "-o",
        str(out_dir),
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli.main(again) == 1
    assert cli.main([*again, "--overwrite"]) == 0


def test_output_may_never_replace_an_input(tiff_520x696, tiny_checkpoint):
    src, _ = tiff_520x696
    before = src.read_bytes()
    code = cli.main(
        [
            "deblur",
            str(src),
            "-o",
            str(src.parent),
            "--suffix",
            "",
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--overwrite",
        ]
    )
    assert code == 1 and src.read_bytes() == before


def test_bad_files_fail_clearly_and_others_still_run(tmp_path, tiny_checkpoint, rng, caplog):
    folder = tmp_path / "in"
    write_image(folder / "good.tif", (rng.random((64, 64)) * 100).astype(np.uint8))
    tifffile.imwrite(folder / "nan.tif", np.full((64, 64), np.nan, np.float32))
    code = cli.main(
        [
            "deblur",
            str(folder),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 1
    assert (tmp_path / "out" / "good_deblurred.tif").exists()
    assert not (tmp_path / "out" / "nan_deblurred.tif").exists()
    assert "NaN" in caplog.text


def test_missing_inputs_and_models_are_errors(tmp_path):
    assert cli.main(["deblur", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o")]) == 1
    folder = tmp_path / "in"
    write_image(folder / "a.tif", np.zeros((32, 32), np.uint8))
    assert (
        cli.main(["deblur", str(folder), "-o", str(tmp_path / "o"), "--model", "nonexistent"]) == 1
    )


def test_info_lists_devices_and_models(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "cpu" in text and "mpt_tiny.defocus" in text
    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.pretrained import list_pretrained

    for entry in list_pretrained():  # each bundled model says what it is for, and its old name
        description = (read_header(entry.path) or {}).get("description")
        assert f"  {entry.key} " in text and f" {entry.label} " in text
        assert not description or description in text


def test_info_lists_the_default_model_first_and_explains_each_line(capsys):
    import json

    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.pretrained import DEFAULT_PRETRAINED, list_pretrained

    bundled, default = {e.key: e.path for e in list_pretrained()}, DEFAULT_PRETRAINED
    assert default in bundled
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any("(-)" in ln for ln in lines)  # no unexplained placeholder
    title = next(i for i, ln in enumerate(lines) if ln.startswith("bundled trained models"))
    assert "pretrained key" in lines[title] and "picker" in lines[title]  # the columns named
    block = lines[title + 1 :]
    block = block[: next(i for i, ln in enumerate(block) if not ln.startswith("  "))]
    model_lines = [ln for ln in block if ln[2] != " "]  # descriptions are indented further
    assert [ln.split()[0] for ln in model_lines] == [default, *(n for n in bundled if n != default)]
    assert model_lines[0].startswith(f"  {default} (default) ")
    assert sum("(default)" in ln for ln in lines) == 1
    for line in model_lines:  # "mpt, aligned routing": the routing is named as such
        header = read_header(bundled[line.split()[0]]) or {}
        if header.get("routing"):
            assert f" {header['arch']}, {header['routing']} routing " in line

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_model"] == default
    assert next(iter(info["bundled_models"])) == default
    assert info["bundled_models"][default]["label"] == "mpt-tiny"


def test_info_shows_the_architecture_alone_when_a_model_has_no_routing():
    from napari_mpt_deblur._commands.info import _architecture

    assert _architecture({"arch": "htcsf", "routing": None}) == "htcsf"
    assert _architecture({"arch": "mpt", "routing": "aligned"}) == "mpt, aligned routing"
    assert _architecture({}) == "unknown architecture"


def _options_without_help(parser, path=("mpt-deblur",)):
    import argparse

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, (*path, name))
        elif action.option_strings and "-h" not in action.option_strings:
            if action.help is argparse.SUPPRESS or not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings)}")
    return missing


def test_every_option_of_every_subcommand_has_a_help_text():
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"demo", "finetune", "deblur", "train"} <= set(subcommands)  # the walk sees them
    assert _options_without_help(parser) == []


def test_the_help_walk_finds_a_missing_help_text():
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--good", help="documented")
    sub = parser.add_subparsers(dest="command").add_parser("run")
    sub.add_argument("--bare")
    assert _options_without_help(parser, ("x",)) == ["x run --bare"]


def _options_with_choices(parser, path=()):
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_options_with_choices(sub, (*path, name)))
        elif action.option_strings and action.choices is not None:
            found[(*path, action.option_strings[0])] = tuple(action.choices)
    return found


def test_the_cli_offers_exactly_the_choices_the_library_checks():
    """Every option with fixed choices takes them from the module that checks them, so a new
    fine-tuning mode or regime cannot be missing from (or stale in) the command line."""
    from napari_mpt_deblur import evaluation
    from napari_mpt_deblur.engine import predict
    from napari_mpt_deblur.train import config, finetune, trainable

    library = {
        ("deblur", "--ensemble"): predict.ENSEMBLE_SIZES,
        ("evaluate", "--regime"): tuple(evaluation.EVAL_REGIMES),
        ("evaluate", "--sets"): tuple(evaluation.IMAGE_SETS),
        ("finetune", "--mode"): finetune.FINETUNE_MODES,
        ("finetune", "--replay-optics"): finetune.REPLAY_OPTICS,
        ("finetune", "--selection-score"): finetune.SELECTION_SCORES,
        ("finetune", "--trainable"): trainable.TRAINABLE_CHOICES,
    }
    assert _options_with_choices(cli.build_parser()) == library
    # one definition each: the old homes hand out the torch-free module's tuples
    assert finetune.SELECTION_SCORES is config.SELECTION_SCORES
    assert finetune.REPLAY_OPTICS is config.REPLAY_OPTICS
    assert trainable.TRAINABLE_CHOICES is finetune.TRAINABLE_CHOICES is config.TRAINABLE_CHOICES
    from napari_mpt_deblur._commands.evaluate import REGIMES
    from napari_mpt_deblur._commands.finetune import _MODES

    assert REGIMES == library[("evaluate", "--regime")] and _MODES is finetune.FINETUNE_MODES
    # and the library accepts every choice the command line offers, and refuses others
    for mode in finetune.FINETUNE_MODES:
        assert finetune.FinetuneConfig(mode=mode).mode == mode
    for score in finetune.SELECTION_SCORES:
        assert finetune.FinetuneConfig(selection_score=score).selection_score == score
    with pytest.raises(ValueError, match="selection_score must be one of"):
        finetune.FinetuneConfig(selection_score="own_images")


def test_demo_without_weights_stops_with_a_message(monkeypatch, tmp_path, caplog):
    from napari_mpt_deblur.models import pretrained

    monkeypatch.setattr(pretrained, "list_pretrained", lambda **k: [])
    assert cli.main(["demo", "-o", str(tmp_path / "demo")]) == 1
    assert "no trained weights" in caplog.text
    assert not (tmp_path / "demo").exists()


def test_demo_with_a_checkpoint_writes_results(tmp_path, tiny_checkpoint):
    out = tmp_path / "demo"
    assert (
        cli.main(["demo", "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu"]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["before_after.png", "sample_blurred.tif", "sample_deblurred.tif"]


def test_demo_runs_twice_in_a_row_and_replaces_its_own_files(tmp_path, tiny_checkpoint, capsys):
    import os

    from napari_mpt_deblur._commands.demo import OUTPUT_NAMES

    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert cli.main(args) == 0
    first, _ = read_image(out / "sample_deblurred.tif")
    for name in OUTPUT_NAMES:  # backdate, so a rewrite is visible in the modification time
        os.utime(out / name, (1_000_000_000, 1_000_000_000))
    capsys.readouterr()
    assert cli.main(args) == 0  # the second run in the same folder succeeds
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == sorted(OUTPUT_NAMES)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # no temp leftovers
    for name in OUTPUT_NAMES:
        assert (out / name).stat().st_mtime > 1_000_000_000  # each file was rewritten
    second, _ = read_image(out / "sample_deblurred.tif")
    np.testing.assert_array_equal(first, second)  # same input, same model: same result


def test_demo_never_touches_a_folder_with_files_it_did_not_write(tmp_path, tiny_checkpoint,
                                                                 caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my data", encoding="utf-8")
    (out / "sample_blurred.tif").write_bytes(b"not the demo's")
    args = ["demo", "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert cli.main(args) == 1
    assert "did not write (notes.txt)" in caplog.text and "--overwrite" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sample_blurred.tif"]
    assert (out / "sample_blurred.tif").read_bytes() == b"not the demo's"
    # --overwrite: the demo's three names are replaced, everything else stays
    assert cli.main([*args, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "my data"
    assert sorted(p.name for p in out.iterdir()) == [
        "before_after.png", "notes.txt", "sample_blurred.tif", "sample_deblurred.tif"
    ]
    image, _ = read_image(out / "sample_blurred.tif")
    assert image.ndim == 2
    # an output path that is a file is refused, and left alone
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    assert cli.main(["demo", "-o", str(afile), "--model", str(tiny_checkpoint)]) == 1
    assert afile.read_text(encoding="utf-8") == "x"


def test_console_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "napari_mpt_deblur", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "mpt-deblur" in proc.stdout


def test_skip_existing_resumes_a_killed_batch(tmp_path, tiny_checkpoint, rng, caplog, capsys):
    import logging

    folder, out = tmp_path / "in", tmp_path / "out"
    for name in "abc":
        write_image(folder / f"{name}.tif", (rng.random((64, 80)) * 3000).astype(np.uint16))
    batch = ["deblur", str(folder), "-o", str(out), "--model", str(tiny_checkpoint),
             "--device", "cpu", "--no-progress"]
    assert cli.main(batch) == 0
    expected = read_image(out / "c_deblurred.tif")[0]
    # What a batch killed while on "c" leaves: complete outputs for a and b (writes are
    # atomic), none for c, and perhaps a hidden temporary file (young: left alone).
    (out / "c_deblurred.tif").unlink()
    partial = out / ".c_deblurred.k3x9q2ab.part.tif"
    partial.write_bytes(b"half a tiff")
    done = {n: (out / n).stat() for n in ("a_deblurred.tif", "b_deblurred.tif")}
    caplog.set_level(logging.INFO, logger="napari_mpt_deblur")

    assert cli.main([*batch, "--skip-existing"]) == 0

    for name, before in done.items():  # not rewritten: a new file would have a new inode
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    np.testing.assert_array_equal(read_image(out / "c_deblurred.tif")[0], expected)
    assert partial.exists()  # may belong to a run still writing; removed once stale
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and "a.tif" in skipped[0] and "b.tif" in skipped[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if "skipped" in r.getMessage())

    caplog.clear()
    assert cli.main([*batch, "--skip-existing"]) == 0  # all done: nothing to do
    assert "nothing to do" in caplog.text
    assert cli.main(batch) == 1 and "--skip-existing" in caplog.text  # the refusal suggests it

    with pytest.raises(SystemExit) as usage:
        cli.main([*batch, "--skip-existing", "--overwrite"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_max_memory_is_checked_before_work_and_used_for_tiles(tiff_520x696, tiny_checkpoint,
                                                             tmp_path, caplog):
    src, image = tiff_520x696
    out = tmp_path / "out"
    args = ["deblur", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]
    assert cli.main([*args, "--max-memory", "lots"]) == 1
    assert "memory limit 'lots'" in caplog.text and not out.exists()
    with caplog.at_level("INFO"):
        assert cli.main([*args, "--max-memory", "100MiB", "--no-progress"]) == 0
    result, _ = read_image(out / "cells_deblurred.ome.tif")
    assert result.shape == image.shape and result.dtype == image.dtype
    tiles = int(caplog.text.rsplit(" tiles)", 1)[0].rsplit(", ", 1)[1])
    assert tiles > 1


def test_ensemble_option_is_used_and_checked(tiff_520x696, tiny_checkpoint, tmp_path, caplog,
                                             capsys):
    from napari_mpt_deblur.engine.predict import ENSEMBLE_SIZES

    src, image = tiff_520x696
    args = ["deblur", str(src), "--model", str(tiny_checkpoint), "--no-progress"]
    parser = cli.build_parser()
    assert parser.parse_args([*args, "-o", str(tmp_path)]).ensemble == 1  # off unless asked
    for views in ENSEMBLE_SIZES:  # the CLI accepts every size the engine accepts
        assert parser.parse_args([*args, "-o", str(tmp_path), "--ensemble", str(views)]
                                 ).ensemble == views  # fmt: skip
    with pytest.raises(SystemExit):  # argparse refuses a size that is not 1, 2, 4 or 8
        cli.main([*args, "-o", str(tmp_path / "bad"), "--ensemble", "3"])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli.main([*args, "-o", str(tmp_path / "one")]) == 0
    assert cli.main([*args, "-o", str(tmp_path / "two"), "--ensemble", "2"]) == 0
    one, _ = read_image(tmp_path / "one" / "cells_deblurred.ome.tif")
    two, _ = read_image(tmp_path / "two" / "cells_deblurred.ome.tif")
    assert two.shape == image.shape and two.dtype == image.dtype
    assert not np.array_equal(one, two)  # the mirrored view changed the untrained model's output


def test_deblur_float32_flag_reaches_the_engine(tiff_520x696, tiny_checkpoint, tmp_path,
                                                spy_deblur):
    calls = spy_deblur()
    src, _ = tiff_520x696
    base = ["deblur", str(src), "--model", str(tiny_checkpoint), "--device", "cpu",
            "--no-progress"]
    assert cli.main([*base, "-o", str(tmp_path / "a")]) == 0
    assert cli.main([*base, "-o", str(tmp_path / "b"), "--float32"]) == 0
    assert [c.get("amp") for c in calls] == ["auto", False]


def test_first_ctrl_c_stops_cleanly_and_the_second_aborts(caplog):
    """`train` and `finetune` take Ctrl-C the same way: stop after the step, then abort."""
    import logging
    import signal

    from napari_mpt_deblur._commands import stop_on_interrupt

    before = signal.getsignal(signal.SIGINT)
    log = logging.getLogger("napari_mpt_deblur._commands.test")
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        with stop_on_interrupt(log, ", keeping the best weights") as cancel:
            assert not cancel.is_set()
            signal.raise_signal(signal.SIGINT)
            assert cancel.is_set()  # the run goes on to the end of its step
            assert ("interrupt: stopping after this step, keeping the best weights (press "
                    "Ctrl-C again to abort)") in caplog.text
            signal.raise_signal(signal.SIGINT)
            pytest.fail("a second Ctrl-C must abort")
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


# ------------------------------------------------------------------------------ optics options


@pytest.fixture
def conditioned_checkpoint(tmp_path):
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_model("mpt-test", routing="aligned", optics_conditioning=True)
    return save_checkpoint(tmp_path / "conditioned.safetensors", net,
                           metadata={"name": "conditioned-test"})


def test_deblur_optics_default_to_the_file_and_options_override_them(
    tiff_520x696, conditioned_checkpoint, tmp_path, spy_deblur, caplog
):
    calls = spy_deblur()
    src, _ = tiff_520x696
    base = ["deblur", str(src), "--model", str(conditioned_checkpoint), "--device", "cpu",
            "--no-progress", "--tile", "256"]
    with caplog.at_level("INFO", logger="napari_mpt_deblur._commands.deblur"):
        assert cli.main([*base, "-o", str(tmp_path / "a"), "--na", "0.5"]) == 0
    optics, report = calls[-1]["optics"], calls[-1]["report"]
    assert optics == {"pixel_size_um": pytest.approx(0.645), "numerical_aperture": 0.5}
    assert report.optics_used
    assert "pixel 0.645 µm, NA 0.5 (used by the model)" in caplog.text
    assert "(optics-conditioned)" in caplog.text

    assert cli.main([*base, "-o", str(tmp_path / "b"), "--pixel-size", "0.1", "--na", "1.4",
                     "--wavelength", "600", "--immersion", "1.515"]) == 0
    optics, report = calls[-1]["optics"], calls[-1]["report"]
    assert optics == {"pixel_size_um": 0.1, "numerical_aperture": 1.4, "wavelength_nm": 600.0,
                      "immersion_index": 1.515}
    assert report.optics_used

    caplog.clear()
    with caplog.at_level("INFO", logger="napari_mpt_deblur._commands.deblur"):
        assert cli.main([*base, "-o", str(tmp_path / "c")]) == 0  # the file knows no NA
    optics, report = calls[-1]["optics"], calls[-1]["report"]
    assert optics == {"pixel_size_um": pytest.approx(0.645)} and not report.optics_used
    assert "the model ran blind" in caplog.text


def test_deblur_optics_are_ignored_by_a_blind_model_and_bad_ones_refused(
    tiff_520x696, tiny_checkpoint, tmp_path, spy_deblur, caplog
):
    calls = spy_deblur()
    src, _ = tiff_520x696
    base = ["deblur", str(src), "--model", str(tiny_checkpoint), "--device", "cpu",
            "--no-progress"]
    with caplog.at_level("INFO", logger="napari_mpt_deblur._commands.deblur"):
        assert cli.main([*base, "-o", str(tmp_path / "a"), "--na", "0.5"]) == 0
    assert not calls[-1]["report"].optics_used
    assert "not used: the model is blind to optics" in caplog.text
    count = len(calls)
    assert cli.main([*base, "-o", str(tmp_path / "b"), "--na", "-1"]) == 1
    assert len(calls) == count and not (tmp_path / "b").exists()  # refused before any work


@pytest.mark.parametrize("command", ["deblur", "finetune"])
def test_deblur_and_finetune_share_one_definition_of_the_optics_options(command):
    parser = cli.build_parser()
    base = [command, "in.tif", "-o", "out"]
    spellings = [
        ["--pixel-size-um", "0.1", "--na", "1.4", "--wavelength-nm", "600",
         "--immersion-index", "1.515"],
        ["--pixel-size", "0.1", "--numerical-aperture", "1.4", "--wavelength", "600",
         "--immersion", "1.515"],
    ]
    for options in spellings:
        args = parser.parse_args([*base, *options])
        assert (args.pixel_size_um, args.numerical_aperture, args.wavelength_nm,
                args.immersion_index) == (0.1, 1.4, 600.0, 1.515)
    with pytest.warns(DeprecationWarning, match="--refractive-index is deprecated"):
        assert parser.parse_args([*base, "--refractive-index", "1.33"]).immersion_index == 1.33


def test_demo_gives_a_conditioned_model_the_samples_optics(conditioned_checkpoint, tmp_path,
                                                         spy_deblur):
    from napari_mpt_deblur._sample_data import load_sample

    calls = spy_deblur()
    assert cli.main(["demo", "-o", str(tmp_path / "demo"), "--model",
                     str(conditioned_checkpoint), "--device", "cpu"]) == 0
    optics, report = calls[-1]["optics"], calls[-1]["report"]
    params = load_sample().params
    assert optics["numerical_aperture"] == params["numerical_aperture"]
    assert optics["pixel_size_um"] == params["pixel_size_um"] and report.optics_used

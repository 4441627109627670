"""The maintainer scripts that load and ship models go through the model contract.

``scripts/select_checkpoint.py`` names the columns it scores and ``scripts/export_weights.py``
writes the file that becomes a bundled model; both used to assign ``model.info`` by hand, and
each built a network from a training state (``state-NNNNN.pt``) itself, which
``resolve_model`` now does for both: their output must stay what their own loaders gave.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from napari_mpt_deblur.models.checkpoint import file_sha256, read_header, save_checkpoint
from napari_mpt_deblur.models.info import ModelInfo, attach_info, model_info


@pytest.fixture
def run_model():
    """An untrained mpt-test whose info says what a training run's output says."""
    import torch

    from napari_mpt_deblur import create_model

    torch.manual_seed(0)
    model = create_model("mpt-test", routing="aligned").eval()
    attach_info(model, name="run", lineage=("configs/recipes/smoke.yaml",),
                description="a run's own words")
    return model


def _state(path: Path, model, step: int) -> Path:
    import torch

    from napari_mpt_deblur.train import TrainConfig

    cfg = TrainConfig(model="mpt-test", routing="aligned", steps=10)
    history = {"validation": [{"step": step, "psnr": 12.5}]}
    torch.save({"config": json.dumps(cfg.to_dict()), "model": model.state_dict(), "step": step,
                "history": json.dumps(history)}, path)
    return path


def test_select_checkpoint_names_columns_through_the_contract(load_script, tmp_path, run_model):
    select = load_script("select_checkpoint")
    ckpt = save_checkpoint(tmp_path / "stage9" / "best.safetensors", run_model)
    model = select._load(str(ckpt))
    assert isinstance(model.info, ModelInfo)
    assert model_info(model).name == "stage9/best"
    assert model_info(model).sha256 == file_sha256(ckpt)  # what was loaded is still recorded

    state = _state(tmp_path / "stage9" / "state-00007.pt", run_model, 7)
    from_state = select._load(str(state))
    assert isinstance(from_state.info, ModelInfo)
    assert model_info(from_state).name == "stage9/state@7"
    for name, tensor in run_model.state_dict().items():
        assert from_state.state_dict()[name].equal(tensor)


@pytest.mark.parametrize("source", ["checkpoint", "state"])
def test_export_weights_ships_only_the_header_it_writes(load_script, tmp_path, run_model,
                                                        monkeypatch, source):
    export = load_script("export_weights")
    monkeypatch.setattr(export, "WEIGHTS", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    run = tmp_path / "run"
    last = save_checkpoint(run / "last.safetensors", run_model,
                           metadata={"training": {"steps": 10}})
    given = last if source == "checkpoint" else _state(run / "state-00005.pt", run_model, 5)
    monkeypatch.setattr(sys, "argv", ["export_weights.py", str(given), "--name", "shipped",
                                      "--description", "for the test"])
    export.main()

    header = read_header(tmp_path / "weights" / "shipped.safetensors")
    assert header["name"] == "shipped" and header["description"] == "for the test"
    assert header["source_checkpoint_sha256"] == file_sha256(given)
    assert header["arch"] == "mpt" and header["normalization"]["method"] == "percentile"
    assert "lineage" not in header  # the run's info does not leak into the shipped file
    assert header["training"]["steps"] == 10
    if source == "state":
        assert header["training"]["step"] == 5 and header["metrics"]["psnr"] == 12.5


def test_export_weights_keeps_the_recipe_of_a_weight_average(load_script, tmp_path, run_model,
                                                             monkeypatch):
    export = load_script("export_weights")
    monkeypatch.setattr(export, "WEIGHTS", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    first = save_checkpoint(tmp_path / "a.safetensors", run_model,
                            metadata={"training": {"steps": 10}})
    second = save_checkpoint(tmp_path / "b.safetensors", run_model)
    soup = tmp_path / "soup.safetensors"
    assert load_script("average_weights").main(
        [str(first), str(second), "--weights", "0.3", "0.7", "-o", str(soup)]) == 0
    monkeypatch.setattr(sys, "argv", ["export_weights.py", str(soup), "--name", "shipped"])
    export.main()
    header = read_header(tmp_path / "weights" / "shipped.safetensors")
    assert [r["weight"] for r in header["averaged_from"]] == [0.3, 0.7]
    assert header["training"]["steps"] == 10  # the first checkpoint's record


@pytest.mark.parametrize("regime", ["20x", "oil-1.4"])
def test_select_checkpoint_gives_each_set_the_optics_its_pairs_were_simulated_with(
    load_script, regime
):
    select = load_script("select_checkpoint")
    cfg = select.eval_config(regime)
    for name in ("actin", "nuclei"):
        optics = select._optics(cfg, name)
        params = select.simulation_params(cfg, select.VAL_SETS[name][1], 2.0)
        for field in ("pixel_size_um", "numerical_aperture", "wavelength_nm", "immersion_index"):
            assert getattr(optics, field) == params[field]
    assert select._optics(cfg, "actin").wavelength_nm != select._optics(cfg, "nuclei").wavelength_nm


# ------------------------------------------------------------------ training states
def _run_folder(tmp_path: Path, model, *, last: bool = True) -> tuple[Path, Path]:
    """A supervised run's folder as ``fit`` leaves it: ``last.safetensors`` (optional) and a
    kept ``state-00005.pt`` written by the trainer's own ``write_state``, whose weights differ
    from last's."""
    import torch

    from napari_mpt_deblur.engine.normalize import IntensityNormalization
    from napari_mpt_deblur.train import OptimConfig, TrainConfig, Trainer
    from napari_mpt_deblur.train.engine import write_state

    run = tmp_path / "stage9"
    cfg = TrainConfig(model="mpt-test", routing="aligned", steps=10)
    if last:
        save_checkpoint(run / "last.safetensors", model, metadata={
            "name": "stage9", "normalization": IntensityNormalization().to_dict(),
            "training": {"config": cfg.to_dict(), "step": 10, "data": "pairs"},
            "simulation": {"name": "bbbc006"}, "metrics": {"psnr": 21.0, "step": 10}})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    trainer = Trainer(model, OptimConfig(), total_steps=10, device=torch.device("cpu"))
    history = {"validation": [{"step": 5, "psnr": 12.5}, {"step": 10, "psnr": 21.0}]}
    state = write_state(run / "state-00005.pt", "fit", 5, trainer,
                        history=json.dumps(history), config=json.dumps(cfg.to_dict()))
    return run, state


def _built_as_before(state_path: Path):
    """What both scripts built from a state before resolve_model read them: the state's
    TrainConfig's model with the state's weights."""
    import torch

    from napari_mpt_deblur.train import TrainConfig
    from napari_mpt_deblur.train.loop import build_model

    state = torch.load(state_path, map_location="cpu", weights_only=True)
    model = build_model(TrainConfig.from_dict(json.loads(state["config"])))
    model.load_state_dict(state["model"])
    return model.eval()


@pytest.mark.parametrize("last", [True, False], ids=["with-last", "state-only"])
def test_resolve_model_reads_a_training_state(tmp_path, run_model, last):
    from napari_mpt_deblur.engine.normalize import IntensityNormalization
    from napari_mpt_deblur.models.resolve import load_model, resolve_model

    _, state = _run_folder(tmp_path, run_model, last=last)
    model = resolve_model(state, "cpu")
    info = model_info(model)
    expected = _built_as_before(state)
    assert info.config == expected.config.to_dict() and info.routing == "aligned"
    for name, tensor in expected.state_dict().items():
        assert model.state_dict()[name].equal(tensor), name
    assert info.name == "stage9/state@5" and info.source == str(state)
    assert info.sha256 == file_sha256(state) and info.arch == "mpt"
    assert info.normalization == IntensityNormalization().to_dict()
    assert info.training["step"] == 5 and info.training["config"]["model"] == "mpt-test"
    assert info.metrics["psnr"] == 12.5 and info.metrics["step"] == 5  # logged at its step
    assert (info.simulation == {"name": "bbbc006"}) is last  # the run's last.safetensors
    assert not model.training
    assert load_model(state, "cpu") is not model  # the uncached road gives the same network
    assert model_info(load_model(state, "cpu")).name == info.name


def test_resolve_model_refuses_what_a_training_state_cannot_give(tmp_path, run_model):
    import torch

    from napari_mpt_deblur.models.checkpoint import CheckpointError
    from napari_mpt_deblur.models.resolve import resolve_model

    _, state = _run_folder(tmp_path, run_model)
    with pytest.raises(ValueError, match="trained with routing 'aligned'"):
        resolve_model(state, "cpu", routing="compat", cache=False)
    with pytest.raises(ValueError, match="own config"):
        resolve_model(state, "cpu", config={"dim": 8}, cache=False)
    # the routing it was trained with is no contradiction (train --init passes its config's)
    same = resolve_model(state, "cpu", routing="aligned", cache=False)
    assert model_info(same).routing == "aligned"
    assert all(a.equal(b) for a, b in zip(same.state_dict().values(),
                                          _built_as_before(state).state_dict().values()))
    finetune_state = tmp_path / "ft" / "state.pt"
    finetune_state.parent.mkdir()
    torch.save({"kind": "finetune", "step": 3, "model": run_model.state_dict(),
                "settings": "{}"}, finetune_state)
    with pytest.raises(CheckpointError, match="'finetune' state"):
        resolve_model(finetune_state, "cpu", cache=False)


def test_select_checkpoint_scores_a_state_as_before(load_script, tmp_path, run_model):
    """Same network, name, normalisation and so the same scores as its own loader gave."""
    import numpy as np

    from napari_mpt_deblur import deblur

    select = load_script("select_checkpoint")
    _, state = _run_folder(tmp_path, run_model)
    model = select._load(str(state))
    assert model_info(model).name == "stage9/state@5"
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 1000
    before = deblur(image, _built_as_before(state), axes="YX", device="cpu")
    assert np.array_equal(deblur(image, model, axes="YX", device="cpu"), before)


def test_export_weights_ships_a_state_as_before(load_script, tmp_path, run_model, monkeypatch):
    """The shipped file: the state's weights, last's header with the state's step and the
    validation logged at it, the state file's SHA-256 (what its own loader wrote)."""
    from safetensors.torch import load_file

    export = load_script("export_weights")
    monkeypatch.setattr(export, "WEIGHTS", tmp_path / "weights")
    run, state = _run_folder(tmp_path, run_model)
    last = read_header(run / "last.safetensors")
    monkeypatch.setattr(sys, "argv", ["export_weights.py", str(state), "--name", "shipped",
                                      "--description", "for the test"])
    export.main()
    shipped = tmp_path / "weights" / "shipped.safetensors"
    header = read_header(shipped)
    assert header["training"] == {**last["training"], "step": 5}
    assert header["metrics"] == {**last["metrics"], "psnr": 12.5, "step": 5}
    assert header["simulation"] == last["simulation"]
    assert header["source_checkpoint_sha256"] == file_sha256(state)
    assert header["normalization"] == last["normalization"] and header["arch"] == "mpt"
    assert header["config"] == last["config"]
    expected = _built_as_before(state).state_dict()
    tensors = load_file(shipped)
    assert set(tensors) == set(expected)
    assert all(tensors[k].equal(v) for k, v in expected.items())

    (run / "last.safetensors").unlink()  # the header's source is required, as before
    monkeypatch.setattr(sys, "argv", ["export_weights.py", str(state), "--name", "other"])
    with pytest.raises(SystemExit, match=r"last\.safetensors is missing"):
        export.main()


def test_error_bands_splits_an_error_by_spatial_frequency(load_script):
    import numpy as np

    bands = load_script("error_bands")
    rng = np.random.default_rng(0)
    smooth = np.outer(np.sin(2 * np.pi * np.arange(128) / 128), np.ones(128))  # 1/128 cycles/px
    power = bands.band_power(smooth)
    assert power.argmax() == 0 and power[1:].sum() < 1e-9 * power[0]
    noise = rng.normal(size=(128, 128))  # white: power in proportion to each ring's area
    power = bands.band_power(noise)
    assert np.isclose(power.sum(), noise.size * (noise**2).sum(), rtol=1e-6)  # Parseval
    assert power[5] > power[1]


def test_error_bands_rows_report_gain_and_the_detail_a_model_erases(load_script, monkeypatch):
    """At each photon budget a row gives the PSNR gain, the error ratio by band and the output's
    power over the target's: an identity model gains 0 and keeps every band, a smoothing one
    loses PSNR on a sharp input and keeps far less power in the high bands."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    bands = load_script("error_bands")
    rng = np.random.default_rng(1)
    sharp = gaussian_filter(rng.random((64, 64)), 0.7).astype(np.float32)
    blurred = (sharp + rng.normal(0, 0.002, sharp.shape)).astype(np.float32)
    pairs = [("smooth", 0.0, blurred, sharp), ("smooth", 8.0, blurred, sharp)]
    monkeypatch.setattr(bands.select, "validation_pairs", lambda cfg, sets: pairs)
    monkeypatch.setattr(bands.select, "_optics", lambda cfg, name: None)
    cfg = bands.select.eval_config("20x")

    monkeypatch.setattr(bands, "deblur", lambda image, model, **kw: image.copy())
    (row,) = bands._band_rows(None, cfg, ["smooth"], [0.0], None, 1500.0)
    assert row[0] == "smooth 0 µm, 1500" and float(row[1]) == 0.0
    assert all(float(v) == 1.0 for v in row[3].split(", "))

    monkeypatch.setattr(bands, "deblur", lambda image, model, **kw: gaussian_filter(image, 1.5))
    (row,) = bands._band_rows(None, cfg, ["smooth"], [0.0], None, 1500.0)
    assert float(row[1]) < -1.0
    kept = [float(v) for v in row[4].split(", ")]
    assert kept[-2] < 0.1 < kept[1]  # high bands erased, low bands kept


# --- select_checkpoint.py --merge: saved runs read back, merged and transposed -------------

def _run_file(select, path: Path, rows: dict, targets=(4.0, 8.0)) -> Path:
    """A saved scoring run: the progress lines, then the table the script prints."""
    lines = [f"scored {name}" for name in rows if name != select.BASELINE]
    path.write_text("\n".join([*lines, *select.score_table(rows, targets)]) + "\n",
                    encoding="utf-8")
    return path


def _cells(psnr: dict) -> dict:
    """``{"actin 8": 30.0}`` as ``{("actin", 8.0): 30.0}``."""
    return {(k.split()[0], float(k.split()[1])): v for k, v in psnr.items()}


INPUT = _cells({"actin 0": 40.0, "actin 8": 30.0, "nuclei 0": 45.0, "nuclei 8": 33.0})
EXTRA_INPUT = _cells({"dense 0": 44.0, "dense 8": 28.0})


def test_merge_reads_back_what_a_run_prints(load_script, tmp_path):
    """Progress lines and summary columns are skipped; cells come back at the printed 0.01 dB."""
    select = load_script("select_checkpoint")
    model = {k: v + 1.234 for k, v in INPUT.items()}
    path = _run_file(select, tmp_path / "a.md", {select.BASELINE: INPUT, "m": model})
    scores = select.read_scores(path.read_text(encoding="utf-8").splitlines(), str(path))
    assert list(scores) == [select.BASELINE, "m"]
    assert scores[select.BASELINE] == INPUT
    assert scores["m"] == {k: round(v, 2) for k, v in model.items()}
    with pytest.raises(ValueError, match=r"b\.md:1: unknown column 'speed'"):
        select.read_scores(["| candidate | speed |"], "b.md")


def test_merge_transposes_runs_into_cells_by_candidates_with_gains(load_script, tmp_path):
    select = load_script("select_checkpoint")
    a = _run_file(select, tmp_path / "a.md",
                  {select.BASELINE: INPUT, "a": {k: v + 2.44 for k, v in INPUT.items()}})
    both = {**INPUT, **EXTRA_INPUT}
    b = _run_file(select, tmp_path / "b.txt",
                  {select.BASELINE: both, "b": {k: v - 0.5 for k, v in both.items()}})
    lines = select.merge_files([a, b], regime="20x")
    assert lines[0] == "| set, level | blurred input | a | b |"
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[2:8]]
    assert rows == ["actin 0 µm", "actin 8 µm", "nuclei 0 µm", "nuclei 8 µm", "dense 0 µm",
                    "dense 8 µm"]  # order of first appearance
    assert lines[2] == "| actin 0 µm | 40.00 | 42.44 (+2.44) | 39.50 (-0.50) |"
    assert lines[6] == "| dense 0 µm | 44.00 | n/a | 43.50 (-0.50) |"  # a never scored dense


def test_merge_summarises_only_the_cells_every_candidate_has(load_script, tmp_path):
    """b is terrible on dense, which a was not scored on: no summary may count dense."""
    select = load_script("select_checkpoint")
    a_scores = {**{k: v + 1.0 for k, v in INPUT.items()}, ("nuclei", 0.0): 44.8}
    a = _run_file(select, tmp_path / "a.md", {select.BASELINE: INPUT, "a": a_scores})
    both = {**INPUT, **EXTRA_INPUT}
    b_scores = {**{k: v + 3.0 for k, v in INPUT.items()}, **{k: v - 9 for k, v in
                                                            EXTRA_INPUT.items()}}
    b = _run_file(select, tmp_path / "b.md", {select.BASELINE: both, "b": b_scores})
    lines = select.merge_files([a, b], regime="20x")
    summary = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:]
               for line in lines[8:13]}
    assert summary["worst gain"] == ["+0.00", "-0.20", "+3.00"]
    assert summary["in-focus worst gain"] == ["+0.00", "-0.20", "+3.00"]
    assert summary["mean 4-8 µm"] == ["31.50", "32.50 (+1.00)", "34.50 (+3.00)"]
    assert summary["mean"] == ["37.00", "37.70 (+0.70)", "40.00 (+3.00)"]
    assert summary["cells below the input by more than 0.1 dB"] == ["0 of 4", "1 of 4",
                                                                    "0 of 4"]
    assert lines[-1].startswith("Summary rows over the 4 of 6 (set, level) cells")
    # without a, dense counts for b
    lines = select.merge_files([a, b], regime="20x", only=["b"])
    assert "| worst gain | +0.00 | -9.00 |" in lines
    assert "| cells below the input by more than 0.1 dB | 0 of 6 | 2 of 6 |" in lines


def test_a_run_and_its_merge_print_the_same_summary(load_script, tmp_path):
    """Both tables take their summary from one function: a loss of exactly 0.10 dB (two
    rounded scores) prints as -0.10 in both and is not counted as harm."""
    select = load_script("select_checkpoint")
    model = {**{k: v + 0.6 for k, v in INPUT.items()}, ("actin", 0.0): 39.9,
             ("nuclei", 0.0): 45.1}
    rows = {select.BASELINE: INPUT, "m": model}
    own = select.score_table(rows, (4.0, 8.0))[-1].rstrip(" |").split(" | ")[-4:]
    merged = select.merge_files([_run_file(select, tmp_path / "a.md", rows)], regime="20x")
    summary = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1]
               for line in merged[6:11]}
    assert own == ["-0.10", "-0.10", "32.10", "37.30"]
    assert [summary["worst gain"], summary["in-focus worst gain"]] == own[:2]
    assert summary["mean 4-8 µm"] == "32.10 (+0.60)" and summary["mean"] == "37.30 (+0.30)"
    assert summary["cells below the input by more than 0.1 dB"] == "0 of 4"
    assert "| mean at 0 µm | 42.50 | 42.50 (+0.00) |" in merged
    assert "| mean at 8 µm | 31.50 | 32.10 (+0.60) |" in merged


def test_merge_detects_the_regime_from_the_levels(load_script, tmp_path):
    select = load_script("select_checkpoint")
    oil = _cells({"actin 0": 40.0, "actin 0.5": 33.0, "actin 2": 25.0})
    path = _run_file(select, tmp_path / "oil.md", {select.BASELINE: oil, "m": oil},
                     targets=(1.0, 2.0))
    assert "| mean 1-2 µm | 25.00 | 25.00 (+0.00) |" in select.merge_files([path])
    regimes = {"20x": (0, 2, 4, 8, 16, 24), "oil-1.4": (0, 0.5, 1, 2)}
    assert select.detect_regime([0.0, 8.0], regimes) == "20x"
    with pytest.raises(ValueError, match=r"fit 2 regimes.*give --regime"):
        select.detect_regime([0.0, 2.0], regimes)  # both protocols have 0 and 2 µm
    with pytest.raises(ValueError, match="fit 0 regimes"):
        select.detect_regime([0.5, 8.0], regimes)  # two regimes' tables mixed


def test_merge_fills_a_candidate_across_runs_and_refuses_a_conflict(load_script, tmp_path):
    select = load_script("select_checkpoint")
    a = _run_file(select, tmp_path / "a.md", {select.BASELINE: INPUT, "m": INPUT})
    both = {**INPUT, **EXTRA_INPUT}
    b = _run_file(select, tmp_path / "b.md",
                  {select.BASELINE: both, "m": {**INPUT, **{k: 50.0 for k in EXTRA_INPUT}}})
    lines = select.merge_files([a, b], regime="20x")
    assert "| dense 0 µm | 44.00 | 50.00 (+6.00) |" in lines  # filled from b
    assert lines[-1].startswith("Summary rows over the 6 of 6")
    c = _run_file(select, tmp_path / "c.md",
                  {select.BASELINE: INPUT, "m": {**INPUT, ("actin", 8.0): 31.0}})
    with pytest.raises(ValueError, match=r"candidate 'm' at actin 8 µm is 30\.00 in "
                       r".*a\.md but 31\.00 in .*c\.md"):
        select.merge_files([a, b, c], regime="20x")


def test_merge_refuses_runs_whose_blurred_inputs_differ(load_script, tmp_path):
    select = load_script("select_checkpoint")
    a = _run_file(select, tmp_path / "a.md", {select.BASELINE: INPUT, "a": INPUT})
    close = {**INPUT, ("nuclei", 8.0): 33.004}  # printed as 33.00: the same run
    b = _run_file(select, tmp_path / "b.md", {select.BASELINE: close, "b": close})
    assert "| nuclei 8 µm | 33.00 | 33.00 (+0.00) | 33.00 (+0.00) |" in select.merge_files(
        [a, b], regime="20x")
    other = {**INPUT, ("nuclei", 8.0): 33.02}
    c = _run_file(select, tmp_path / "c.md", {select.BASELINE: other, "c": other})
    with pytest.raises(ValueError, match=r"the blurred input at nuclei 8 µm is 33\.00 in "
                       r".*a\.md but 33\.02 in .*c\.md"):
        select.merge_files([a, c], regime="20x")


def test_merge_renames_and_keeps_only_the_named_candidates(load_script, tmp_path):
    select = load_script("select_checkpoint")
    rows = {select.BASELINE: INPUT, "run/state@1500": INPUT, "x": INPUT, "y": INPUT}
    path = _run_file(select, tmp_path / "a.md", rows)
    rename = dict([select.parse_rename("run/state@1500=mpt-tiny (default)")])
    header = select.merge_files([path], regime="20x", rename=rename)[0]
    assert header == "| set, level | blurred input | mpt-tiny (default) | x | y |"
    for only in (["y", "run/state@1500"], ["y", "mpt-tiny (default)"]):  # old or new name
        header = select.merge_files([path], regime="20x", rename=rename, only=only)[0]
        assert header == "| set, level | blurred input | mpt-tiny (default) | y |"
    with pytest.raises(ValueError, match="--only: no candidate named 'z'"):
        select.merge_files([path], regime="20x", only=["z"])
    with pytest.raises(ValueError, match="--rename: no candidate named 'w'"):
        select.merge_files([path], regime="20x", rename={"w": "v"})
    with pytest.raises(ValueError, match="two columns would be labelled 'y'"):
        select.merge_files([path], regime="20x", rename={"x": "y"})
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        select.parse_rename("no-equals-sign")


def test_merge_command_loads_no_model_and_simulates_nothing(load_script, tmp_path,
                                                             monkeypatch, capsys):
    select = load_script("select_checkpoint")
    path = _run_file(select, tmp_path / "a.md", {select.BASELINE: INPUT, "m": INPUT})

    def forbidden(*args, **kwargs):
        raise AssertionError("--merge must not load or simulate")

    for name in ("load_model", "_load", "validation_pairs", "make_pair", "deblur"):
        monkeypatch.setattr(select, name, forbidden)
    monkeypatch.setattr(sys, "argv", ["select_checkpoint.py", "--merge", str(path),
                                      "--rename", "m=model"])
    select.main()
    assert capsys.readouterr().out.startswith("| set, level | blurred input | model |")
    for argv in (["mpt-tiny", "--merge", str(path)], ["mpt-tiny", "--only", "m"], []):
        monkeypatch.setattr(sys, "argv", ["select_checkpoint.py", *argv])
        with pytest.raises(SystemExit):
            select.main()
    monkeypatch.setattr(sys, "argv", ["select_checkpoint.py", "--merge", str(tmp_path / "no")])
    with pytest.raises(SystemExit, match=r"--merge: .*No such file"):
        select.main()

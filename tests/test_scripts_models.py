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
    with pytest.raises(ValueError, match="own config"):
        resolve_model(state, "cpu", routing="compat", cache=False)
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

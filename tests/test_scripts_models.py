"""The maintainer scripts that load and ship models go through the model contract.

``scripts/select_checkpoint.py`` names the columns it scores and ``scripts/export_weights.py``
writes the file that becomes a bundled model; both used to assign ``model.info`` by hand.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from napari_mpt_deblur.models.checkpoint import file_sha256, read_header, save_checkpoint
from napari_mpt_deblur.models.info import ModelInfo, attach_info, model_info

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_select_checkpoint_names_columns_through_the_contract(tmp_path, run_model):
    select = _script("select_checkpoint")
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
def test_export_weights_ships_only_the_header_it_writes(tmp_path, run_model, monkeypatch,
                                                        source):
    export = _script("export_weights")
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
def test_select_checkpoint_gives_each_set_the_optics_its_pairs_were_simulated_with(regime):
    select = _script("select_checkpoint")
    cfg = select.eval_config(regime)
    for name in ("actin", "nuclei"):
        optics = select._optics(cfg, name)
        params = select.simulation_params(cfg, select.VAL_SETS[name][1], 2.0)
        for field in ("pixel_size_um", "numerical_aperture", "wavelength_nm", "immersion_index"):
            assert getattr(optics, field) == params[field]
    assert select._optics(cfg, "actin").wavelength_nm != select._optics(cfg, "nuclei").wavelength_nm

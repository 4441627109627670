"""The model contract: DeblurModel, ModelInfo, and headers written by earlier versions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_mpt_deblur.models._registry import create_model
from napari_mpt_deblur.models.checkpoint import HEADER_KEY, read_header, save_checkpoint
from napari_mpt_deblur.models.info import (
    DeblurModel,
    IntensityNormalization,
    ModelInfo,
    attach_info,
    in_channels,
    model_info,
    size_multiple,
)
from napari_mpt_deblur.models.resolve import clear_model_cache, load_model


@pytest.mark.parametrize("preset", ["mpt-test", "htcsf-test"])
def test_the_architectures_satisfy_the_contract_from_construction(preset):
    net = create_model(preset)
    assert isinstance(net, DeblurModel)
    assert isinstance(net.info, ModelInfo) and net.info.arch == preset.split("-")[0]
    assert net.info.config == net.config.to_dict()
    assert net.info.normalization == IntensityNormalization().to_dict()
    assert size_multiple(net) == net.size_multiple and in_channels(net) == 1


def test_a_foreign_module_gets_the_engines_defaults_and_a_minimal_info():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    assert not isinstance(net, DeblurModel)  # no info, no size_multiple
    assert size_multiple(net) == 128 and in_channels(net) == 1
    info = model_info(net)
    assert info.name == "Conv2d" and info.normalization["method"] == "percentile"
    assert not hasattr(net, "info")  # reading never attaches
    attach_info(net, name="mine")
    assert isinstance(net.info, ModelInfo) and net.info.name == "mine"


def test_model_info_reads_like_the_old_dict():
    info = ModelInfo(name="x", arch="mpt", routing="aligned", extra={"license": "MIT"})
    assert info["name"] == "x" and info.get("license") == "MIT" and info.get("nope") is None
    assert dict(info)["arch"] == "mpt" and "normalization" in info
    assert "source" not in info  # load-time fields appear once the weights came from a file
    loaded = info.replace(source="/a.safetensors", sha256="0" * 64)
    assert loaded["authors_checkpoint"] is False and loaded["sha256"] == "0" * 64
    info["name"] = "y"  # scripts written for the old dict set keys: fields ...
    info["note"] = "kept"  # ... or extra keys
    assert info.name == "y" and info.extra["note"] == "kept" and info["note"] == "kept"
    del info["note"]
    assert "note" not in info


def test_the_info_round_trips_through_the_safetensors_header(tmp_path):
    net = create_model("mpt-test")
    attach_info(net, name="run-7", description="for tests", lineage=("recipes/a.yaml",),
                training={"steps": 3}, simulation={"preset": "bbbc006"}, metrics={"psnr": 30.0},
                finetune={"mode": "efcr"}, key="mpt_tiny.defocus",
                normalization={"method": "minmax", "low_percentile": 0.0,
                               "high_percentile": 100.0})
    path = save_checkpoint(tmp_path / "run.safetensors", net)
    header = read_header(path)
    assert "key" not in header  # saved weights are not the shipped ones they started from ...
    assert header["lineage"] == ["recipes/a.yaml", "mpt_tiny.defocus"]  # ... but came from them
    loaded = load_model(path, device="cpu").info
    assert loaded.lineage == ("recipes/a.yaml", "mpt_tiny.defocus")
    for field in ("name", "description", "training", "simulation", "metrics",
                  "finetune", "normalization", "arch", "config", "routing"):
        assert getattr(loaded, field) == getattr(net.info, field), field
    assert loaded.source == str(path) and len(loaded.sha256) == 64 and loaded.key is None
    assert ModelInfo.from_header(header).to_header() == {
        k: v for k, v in ModelInfo.from_header(header).to_dict().items()
        if k not in ("source", "sha256", "authors_checkpoint")}


def _legacy_checkpoint(folder: Path) -> Path:
    """A checkpoint exactly as package version 0.1.0 wrote them (no key, no lineage)."""
    net = create_model("mpt-test")
    header = {
        "format_version": 1, "package_version": "0.1.0", "arch": "mpt",
        "config": net.config.to_dict(), "routing": "compat", "in_channels": 1,
        "out_channels": 1, "normalization": {"method": "percentile", "low_percentile": 1.0,
                                             "high_percentile": 99.0},
        "name": "old-run", "training": {"config": {"model": "mpt-test"}, "step": 10},
        "description": "trained long ago", "license": "Apache-2.0",
        "source_checkpoint_sha256": "ab" * 32,
    }
    path = folder / "old.safetensors"
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def test_a_legacy_checkpoint_loads_with_its_header_kept(tmp_path):
    clear_model_cache()
    path = _legacy_checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = load_model(path, device="cpu")
    info = net.info
    assert isinstance(info, ModelInfo) and info.name == "old-run" and info.key is None
    assert info.routing == "compat" and info.description == "trained long ago"
    assert info.normalization["low_percentile"] == 1.0  # the engine will use the file's own
    assert info.extra["license"] == "Apache-2.0" and info["package_version"] == "0.1.0"
    resaved = read_header(save_checkpoint(tmp_path / "again.safetensors", net))
    assert resaved["normalization"] == info.normalization and resaved["name"] == "old-run"


def test_the_widget_path_resolves_the_device_once(tiny_checkpoint, rng, monkeypatch):
    from napari_mpt_deblur import _device
    from napari_mpt_deblur._widgets._worker import DeblurRequest, run_blocking
    from napari_mpt_deblur.models.catalog import ModelCatalog

    clear_model_cache()
    calls = []
    original = _device.get_device
    monkeypatch.setattr(_device, "get_device", lambda *a, **k: calls.append(a) or original(*a, **k))
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_checkpoint(tiny_checkpoint, name="tiny")
    image = rng.random((64, 64)).astype("float32")
    outcome = run_blocking(DeblurRequest(image=image, axes="YX", model="tiny", device="auto"),
                           catalog=catalog)
    assert outcome.report["device"] == "cpu" and calls == [("auto",)]
    clear_model_cache()


# ------------------------------------------------------------------ the contract as the type
SRC = Path(__file__).resolve().parents[2] / "src" / "napari_mpt_deblur"


@pytest.mark.parametrize("module, function, parameter", [
    ("napari_mpt_deblur.engine.predict", "deblur", "model"),
    ("napari_mpt_deblur.engine.predict", "estimate_tile", "model"),
    ("napari_mpt_deblur.engine.lazy", "deblur_dask", "model"),
    ("napari_mpt_deblur.models.catalog", "ModelCatalog.add_model", "model"),
    ("napari_mpt_deblur.models.catalog", "CatalogEntry", "model"),
    ("napari_mpt_deblur.evaluation.scoring", "evaluate", "models"),
    ("napari_mpt_deblur.evaluation.columns", "Ensembled", "model"),
    ("napari_mpt_deblur.bioimageio.export", "export_bioimageio", "model"),
    ("napari_mpt_deblur._widgets._finetune_job", "FinetuneOutcome", "model"),
])
def test_parameters_that_take_a_network_are_typed_with_the_contract(module, function,
                                                                    parameter):
    """The engine, catalog, evaluation, bioimage.io export and the widgets' jobs say in their
    signatures what they need from a network: :class:`DeblurModel`, not ``nn.Module``/``Any``
    (the CLI's commands annotate the network they resolve: checked by the source scan below)."""
    import importlib

    obj = importlib.import_module(module)
    for part in function.split("."):
        obj = getattr(obj, part)
    annotation = obj.__annotations__[parameter]  # a function's parameter or a dataclass field
    assert "DeblurModel" in str(annotation), annotation


@pytest.mark.parametrize("path", ["_commands/deblur.py", "_commands/demo.py",
                                  "_widgets/_worker.py"])
def test_the_cli_and_the_deblur_worker_hold_their_network_as_the_contract(path):
    assert "model: DeblurModel = " in (SRC / path).read_text()


def test_contract_attributes_are_read_only_in_the_contract_module():
    """``getattr(net, ...)``/``getattr(model, ...)`` with a default belongs in ``models/info.py``
    (its accessors give the engine's defaults once); anywhere else it is a second, ad-hoc
    reading of the contract."""
    import re

    pattern = re.compile(r"getattr\((net|model), ")
    found = [f"{path.relative_to(SRC)}:{i}" for path in sorted(SRC.rglob("*.py"))
             if path.name != "info.py" or path.parent.name != "models"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_the_optional_attributes_read_through_the_accessors():
    from napari_mpt_deblur.models.info import (
        DEFAULT_WIDTH,
        attached_info,
        inference_bytes_per_pixel,
        preset_name,
    )

    net = create_model("mpt-test")
    assert preset_name(net) == "mpt-test"
    assert inference_bytes_per_pixel(net, 1000) == net.inference_bytes_per_pixel  # its own hint
    assert attached_info(net) is net.info

    class Config:
        dim = 48

    foreign = torch.nn.Conv2d(1, 1, 3, padding=1)
    assert preset_name(foreign) is None and attached_info(foreign) is None
    assert inference_bytes_per_pixel(foreign, 10) == 10 * DEFAULT_WIDTH
    foreign.config = Config()
    assert inference_bytes_per_pixel(foreign, 10) == 480  # the engine's estimate from the width
    foreign.info = {"name": "old dict"}
    assert attached_info(foreign) == {"name": "old dict"}


def test_a_loaded_network_has_no_preset_and_evaluation_records_one_only_when_built(
        tmp_path):
    from napari_mpt_deblur.evaluation.scoring import _model_info
    from napari_mpt_deblur.models.info import preset_name

    built = create_model("mpt-test")
    path = save_checkpoint(tmp_path / "m.safetensors", built)
    clear_model_cache()
    loaded = load_model(path, "cpu")
    assert preset_name(loaded) is None and "preset" not in _model_info(loaded)
    assert _model_info(built)["preset"] == "mpt-test"


def test_estimate_tile_sizes_a_foreign_network_by_its_width(monkeypatch):
    """The tile the engine picks for a network without its own hint: 300 bytes per pixel for
    each channel of ``config.dim`` (32 without a config), as before the accessor."""
    from napari_mpt_deblur.engine import predict

    per_pixel = predict._BYTES_PER_PIXEL_PER_CHANNEL * 64
    monkeypatch.setattr(predict, "_available_bytes", lambda device: 512 * 512 * per_pixel)

    class Config:
        dim = 64

    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    net.config = Config()
    assert predict.estimate_tile(net, 4096, 4096, torch.device("cuda")) == 512
    del net.config  # width 32: twice the pixels fit, sqrt(2) x the side, in multiples of 128
    assert predict.estimate_tile(net, 4096, 4096, torch.device("cuda")) == 640

"""Every config reads JSON/YAML the same way: unknown keys named, values typed, nothing lossy."""

from __future__ import annotations

import json

import pytest

from napari_mpt_deblur.detect.nuclei import DetectionConfig
from napari_mpt_deblur.evaluation import EvalConfig
from napari_mpt_deblur.models.htcsf import HTCSFConfig
from napari_mpt_deblur.models.mpt import MPTConfig
from napari_mpt_deblur.simulate import CameraConfig, OpticsConfig, SimulationConfig
from napari_mpt_deblur.train import TrainConfig
from napari_mpt_deblur.train.finetune import FinetuneConfig

CONFIGS = [MPTConfig(), HTCSFConfig(), CameraConfig(), OpticsConfig(), SimulationConfig(),
           EvalConfig(), DetectionConfig(), TrainConfig(), FinetuneConfig()]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json_and_names_unknown_keys(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    with pytest.raises(ValueError, match=rf"unknown {type(config).__name__} keys \['typo_key'\]"):
        type(config).from_dict({**data, "typo_key": 1})


def test_yaml_strings_and_lists_become_the_declared_types():
    camera = CameraConfig.from_dict({"bit_depth": "12", "read_noise_e": "1.5"})
    assert camera.bit_depth == 12 and camera.read_noise_e == 1.5
    # PyYAML reads "1e-4" (no dot) as a string; a learning rate must still be a number
    assert TrainConfig.from_dict({"lr": "1e-4"}).lr == 1e-4
    sim = SimulationConfig.from_dict({"defocus_um_range": [2, 16]})
    assert sim.defocus_um_range == (2.0, 16.0)
    assert TrainConfig.from_dict({"time_budget_s": None}).time_budget_s is None


def test_lossy_conversions_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match=r"CameraConfig\.bit_depth: expected an integer"):
        CameraConfig.from_dict({"bit_depth": 12.5})  # int(12.5) would silently give 12
    with pytest.raises(ValueError, match=r"TrainConfig\.steps: expected an integer"):
        TrainConfig.from_dict({"steps": True})
    with pytest.raises(ValueError, match="true or false"):
        HTCSFConfig.from_dict({"input_skip": "no"})  # bool("no") would be True
    with pytest.raises(TypeError, match="must be a mapping"):
        MPTConfig.from_dict(["dim", 16])


def test_architecture_fields_that_are_never_stored_are_refused():
    with pytest.raises(ValueError, match=r"unknown MPTConfig keys \['extra'\]"):
        MPTConfig.from_dict({"extra": {}})  # in-memory only: not part of a checkpoint


@pytest.mark.parametrize("config", [
    MPTConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2),
              pool_rates=((0.5,), (1.0,), (1.0,), (1.0,)), routing="aligned"),
    HTCSFConfig(widths=(8, 16), num_blocks=(0, 3), fusion="add", input_skip=False),
])
def test_nested_tuples_come_back_as_tuples(config):
    restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert all(not isinstance(v, list) for v in vars(restored).values())


def test_replace_names_unknown_fields_like_loading_does():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\].*lr"):
        TrainConfig().replace(learning_rate=0.1)

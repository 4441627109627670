"""Architecture configs survive JSON and reject what would build a different model."""

from __future__ import annotations

import json

import pytest

from napari_mpt_deblur.models.htcsf import HTCSFConfig
from napari_mpt_deblur.models.mpt import MPTConfig


@pytest.mark.parametrize("config", [
    MPTConfig(),
    MPTConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2),
              pool_rates=((0.5,), (1.0,), (1.0,), (1.0,)), routing="aligned"),
    HTCSFConfig(),
    HTCSFConfig(widths=(8, 16), num_blocks=(0, 3), fusion="add", input_skip=False),
])
def test_configs_round_trip_through_json_as_tuples(config):
    data = json.loads(json.dumps(config.to_dict()))
    restored = type(config).from_dict(data)
    assert restored == config
    assert all(not isinstance(v, list) for v in vars(restored).values())


def test_values_from_yaml_are_coerced_to_the_declared_types():
    config = MPTConfig.from_dict({"dim": "16", "ffn_expansion_factor": 2, "heads": [1, 2, 2, 4]})
    assert config.dim == 16 and isinstance(config.ffn_expansion_factor, float)
    assert config.heads == (1, 2, 2, 4)


def test_unknown_fields_and_non_boolean_flags_are_errors():
    with pytest.raises(ValueError, match=r"unknown MPTConfig fields \['dims'\].*'dim'"):
        MPTConfig.from_dict({"dims": 16})
    with pytest.raises(ValueError, match=r"unknown MPTConfig fields.*extra"):
        MPTConfig.from_dict({"extra": {}})  # in-memory only, never stored
    with pytest.raises(ValueError, match="true or false"):
        HTCSFConfig.from_dict({"input_skip": "no"})  # bool("no") would be True

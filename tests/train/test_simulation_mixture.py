"""Training on a simulation mixture: the config, the patches, the validation set, the run's
checkpoints and resume, and configs/states written before mixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import TinyNet

from napari_mpt_deblur.models.checkpoint import read_header
from napari_mpt_deblur.simulate import (
    SimulationMixture,
    get_simulation_preset,
    simulation_from_header,
)
from napari_mpt_deblur.train.config import TrainConfig
from napari_mpt_deblur.train.data import (
    BatchBuilder,
    PairSimulator,
    build_validation_set,
    find_images,
    load_sources,
)
from napari_mpt_deblur.train.loop import fit, reblur_bank_for_simulation, simulation_from_config

ROOT = Path(__file__).resolve().parents[2]
MIX_YAML = """\
simulation:
  bbbc006: 0.7
  oil-high-na: 0.3
"""
MIX_LIST = [
    {"preset": "bbbc006", "weight": 0.7,
     "overrides": {"defocus_um_range": [2.0, 8.0], "near_focus_probability": 0.5}},
    {"preset": "oil-high-na", "weight": 0.3},
]


def _config(root, out, **changes) -> TrainConfig:
    base = dict(
        model="mpt-test", data_root=str(root), train_dirs=["train"], val_dirs=["val"],
        out_dir=str(out), patch_size=32, batch_size=4, steps=4, lr=2e-3, warmup_steps=0,
        val_every=2, ckpt_every=2, log_every=1, num_val_patches=6, efcr_weight=5e-4,
        device="cpu", simulation=MIX_LIST,
    )
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def sources(tiny_data_root):
    return load_sources(find_images([tiny_data_root / "train"]),
                        percentiles=get_simulation_preset("bbbc006").source_percentiles)


# -------------------------------------------------------------------------------- config


def test_mixture_config_round_trips_through_yaml_and_json(tmp_path):
    (tmp_path / "mix.yaml").write_text(MIX_YAML)
    cfg = TrainConfig.from_file(tmp_path / "mix.yaml")
    assert cfg.simulation == (
        {"name": "bbbc006", "preset": "bbbc006", "weight": 0.7, "overrides": {}},
        {"name": "oil-high-na", "preset": "oil-high-na", "weight": 0.3, "overrides": {}})
    import yaml

    (tmp_path / "again.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (tmp_path / "again.json").write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(tmp_path / "again.yaml") == cfg
    assert TrainConfig.from_file(tmp_path / "again.json") == cfg
    assert TrainConfig(simulation=MIX_LIST).replace(steps=3).simulation == \
        TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(simulation=MIX_LIST).to_dict())
                                         )).simulation
    sim = simulation_from_config(cfg)
    assert isinstance(sim, SimulationMixture) and sim.names == ("bbbc006", "oil-high-na")


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("simulation: {bbbc006: 0.7, oil-hi-na: 0.3}\n", "unknown simulation preset 'oil-hi-na'"),
    ("simulation: {bbbc006: 0.7, oil-high-na: 0}\n", "weight of 'oil-high-na' must be finite"),
    ("simulation: {bbbc006: 0.7, oil-high-na: lots}\n", "must be a number"),
    ("simulation: []\n", "has no members"),
    ("simulation:\n  - {preset: bbbc006, overrides: {defocus: [1, 2]}}\n",
     "member 'bbbc006': unknown SimulationConfig keys"),
])
def test_bad_mixtures_fail_when_the_config_is_read(tmp_path, yaml_text, message):
    (tmp_path / "bad.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_file(tmp_path / "bad.yaml")


def test_configs_written_before_mixtures_load_unchanged():
    # every config in the repository, and the JSON of a state saved by an earlier version
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = TrainConfig.from_file(path)
        text = path.read_text(encoding="utf-8")
        if "simulation: bbbc006" in text:
            assert cfg.simulation == "bbbc006"
            assert cfg.to_dict()["simulation"] == "bbbc006"
            assert simulation_from_config(cfg) == get_simulation_preset("bbbc006").replace(
                **cfg.simulation_overrides)
    old_state_config = {**TrainConfig().to_dict(), "simulation": "bbbc006",
                        "simulation_overrides": {"defocus_um_range": [2.0, 16.0]}}
    cfg = TrainConfig.from_dict(old_state_config)
    assert cfg.to_dict() == old_state_config


def test_resume_accepts_either_mixture_form_and_refuses_other_weights():
    from napari_mpt_deblur.train.loop import _check_resume_compatible

    saved = TrainConfig.from_dict(json.loads(json.dumps(
        TrainConfig(simulation={"bbbc006": 0.7, "oil-high-na": 0.3}).to_dict())))
    _check_resume_compatible(saved, TrainConfig(simulation=[
        {"preset": "bbbc006", "weight": 0.7}, {"preset": "oil-high-na", "weight": 0.3}]))
    with pytest.raises(ValueError, match=r"differs from the saved run in \['simulation'\]"):
        _check_resume_compatible(saved, TrainConfig(simulation={"bbbc006": 0.5,
                                                                "oil-high-na": 0.5}))


# -------------------------------------------------------------------------------- data


def test_mixture_patches_are_seeded_and_carry_their_member(sources):
    mix = simulation_from_config(TrainConfig(simulation=MIX_LIST))
    sim = PairSimulator(sources, mix, 32)
    builder = BatchBuilder(seed=3, simulator=sim, n_simulated=4)
    a, b = builder(7), builder(7)
    torch.testing.assert_close(a["blurred"], b["blurred"], rtol=0, atol=0)
    assert not torch.equal(builder(8)["blurred"], a["blurred"])
    rng = np.random.default_rng(0)
    members = [sim.sample(rng)[2]["member"] for _ in range(60)]
    assert set(members) == {"bbbc006", "oil-high-na"}
    _, _, params = sim.sample(rng, member=1)
    assert params["member"] == "oil-high-na" and params["pixel_size_um"] == 0.1
    with pytest.raises(ValueError, match="not a mixture"):
        PairSimulator(sources, get_simulation_preset("bbbc006"), 32).sample(rng, member=1)


def test_validation_set_covers_every_member(sources):
    mix = simulation_from_config(TrainConfig(simulation=MIX_LIST))
    val = build_validation_set(sources, mix, n_patches=10, patch_size=32, seed=1)
    assert val.members == ["bbbc006"] * 7 + ["oil-high-na"] * 3
    assert val.describe()["members"] == {"bbbc006": 7, "oil-high-na": 3}
    for params in val.params:  # stratified over each member's own range
        lo, hi = mix.configs[mix.names.index(params["member"])].defocus_um_range
        assert lo <= abs(params["defocus_nominal_um"]) <= hi
    again = build_validation_set(sources, mix, n_patches=10, patch_size=32, seed=1)
    torch.testing.assert_close(val.blurred, again.blurred, rtol=0, atol=0)
    single = build_validation_set(sources, get_simulation_preset("bbbc006"), n_patches=4,
                                  patch_size=32, seed=1)
    assert single.members is None and "members" not in single.describe()


def test_a_mixture_reblurs_with_its_largest_member():
    mix = simulation_from_config(TrainConfig(simulation=MIX_LIST))
    assert reblur_bank_for_simulation(mix, (1.0,)).defocus_um == \
        reblur_bank_for_simulation(mix.primary, (1.0,)).defocus_um


# -------------------------------------------------------------------------------- runs


def test_fit_on_a_mixture_records_it_and_resumes_bit_for_bit(tiny_data_root, tmp_path):
    torch.manual_seed(0)
    straight = TinyNet()
    history = fit(_config(tiny_data_root, tmp_path / "a"), model=straight)
    last = history.validation[-1]
    assert set(last["by_member"]) == {"bbbc006", "oil-high-na"}
    assert sum(m["n"] for m in last["by_member"].values()) == 6
    assert set(history.baseline["by_member"]) == {"bbbc006", "oil-high-na"}
    header = read_header(history.best_checkpoint)
    mix = simulation_from_config(_config(tiny_data_root, tmp_path))
    assert simulation_from_header(header["simulation"]) == mix
    assert header["simulation"]["preset"] == mix.name
    assert header["training"]["data"]["simulation_preset"] == mix.name
    assert header["training"]["data"]["validation"]["members"] == {"bbbc006": 4,
                                                                    "oil-high-na": 2}
    assert mix.name in header["description"]

    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    torch.manual_seed(0)
    fit(_config(tiny_data_root, tmp_path / "b"), model=TinyNet(), cancel=stop_after_two)
    torch.manual_seed(5)
    resumed = TinyNet()
    fit(_config(tiny_data_root, tmp_path / "b"), model=resumed, resume=True)
    for (name, x), y in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_finetuning_a_mixture_model_replays_its_largest_member(tiny_data_root, tmp_path):
    """Readers of one simulation config (fine-tuning's replay) get the largest member."""
    from napari_mpt_deblur.models.resolve import load_model
    from napari_mpt_deblur.train._finetune_run import _model_simulation
    from napari_mpt_deblur.train.loop import build_model

    torch.manual_seed(0)
    cfg = _config(tiny_data_root, tmp_path / "m", patch_size=128, batch_size=1, steps=1,
                  val_every=1, ckpt_every=1, num_val_patches=2)
    history = fit(cfg, model=build_model(cfg))
    model = load_model(history.best_checkpoint, device="cpu")
    assert _model_simulation(model, None) == simulation_from_config(cfg).primary


def test_model_card_names_the_mixture_or_the_preset():
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_card", ROOT / "scripts" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    mix = simulation_from_config(TrainConfig(simulation={"bbbc006": 0.7, "oil-high-na": 0.3}))
    line = card.simulation_line({"simulation": TrainConfig(simulation={
        "bbbc006": 0.7, "oil-high-na": 0.3}).to_dict()["simulation"]},
        {"simulation": mix.to_dict()})
    assert line.startswith("- Simulation mixture `bbbc006 70 %, oil-high-na 30 %`: ")
    single = card.simulation_line({"simulation": "bbbc006"}, {"simulation": {"preset": "bbbc006"}})
    assert single == '- Simulation preset `bbbc006`: `{"preset": "bbbc006"}`'

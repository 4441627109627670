"""Training an optics-conditioned model: each pair's true optics, the dropout, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mpt_deblur.models.checkpoint import read_header
from napari_mpt_deblur.models.conditioning import BLIND_OPTICS, optics_vector
from napari_mpt_deblur.models.info import optics_conditioned
from napari_mpt_deblur.models.resolve import load_model
from napari_mpt_deblur.simulate import get_simulation_preset, parse_simulation
from napari_mpt_deblur.train.config import TrainConfig
from napari_mpt_deblur.train.data import (
    BatchBuilder,
    PairSimulator,
    find_images,
    load_sources,
    step_rng,
)
from napari_mpt_deblur.train.loop import _pair_optics, build_model, fit

MIXTURE = ({"preset": "bbbc006", "weight": 0.5}, {"preset": "oil-high-na", "weight": 0.5})


@pytest.fixture(scope="module")
def sources(tiny_data_root):
    return load_sources(find_images([tiny_data_root / "train"]),
                        percentiles=get_simulation_preset("bbbc006").source_percentiles)


def test_each_pair_carries_the_optics_it_was_simulated_with(sources):
    mixture = parse_simulation(MIXTURE)
    builder = BatchBuilder(seed=4, simulator=PairSimulator(sources, mixture, 16), n_simulated=6)
    batch = builder(0)
    assert batch["optics"].shape == (6, 3)
    # the same draws again, to read each pair's parameters
    rng_builder = BatchBuilder(seed=4, simulator=PairSimulator(sources, mixture, 16),
                               n_simulated=6)
    rng = step_rng(4, 0, 0)
    expected = []
    for _ in range(6):
        _, _, p = rng_builder.simulator.sample(rng)
        expected.append(optics_vector(p["pixel_size_um"], p["numerical_aperture"],
                                      p["wavelength_nm"], p["immersion_index"]))
    torch.testing.assert_close(batch["optics"], torch.tensor(expected))
    sines = batch["optics"][:, 1]
    assert (sines < 0.7).any() and (sines > 0.8).any()  # both microscopes of the mixture


def test_optics_dropout_is_seeded_per_step_and_has_its_rate():
    batch = {"optics": torch.tensor([optics_vector(0.645, 0.5)] * 1000)}
    cfg = TrainConfig(optics_dropout=0.3, seed=1)
    a, b = _pair_optics(batch, cfg, 7), _pair_optics(batch, cfg, 7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    blind = (a == torch.tensor(BLIND_OPTICS)).all(dim=1)
    assert 0.25 < blind.float().mean() < 0.35
    assert not torch.equal(a, _pair_optics(batch, cfg, 8))
    assert not (_pair_optics(batch, cfg.replace(optics_dropout=0.0), 7) == 0).all(dim=1).any()
    assert (_pair_optics(batch, cfg.replace(optics_dropout=1.0), 7) == 0).all()
    assert torch.equal(batch["optics"][0], torch.tensor(optics_vector(0.645, 0.5)))  # untouched
    with pytest.raises(ValueError, match="optics_dropout"):
        TrainConfig(optics_dropout=1.5)


def _config(root, out, **changes) -> TrainConfig:
    base = dict(
        model="mpt-test", model_overrides={"optics_conditioning": True}, simulation=MIXTURE,
        data_root=str(root), train_dirs=["train"], val_dirs=["val"], out_dir=str(out),
        patch_size=128, batch_size=2, steps=4, lr=2e-3, warmup_steps=0, val_every=2,
        ckpt_every=2, log_every=1, num_val_patches=2, efcr_weight=0.0, device="cpu", seed=3,
    )
    base.update(changes)
    return TrainConfig(**base)


def test_conditioned_model_trains_resumes_and_saves_a_conditioned_checkpoint(
    tiny_data_root, tmp_path
):
    torch.manual_seed(0)
    straight = build_model(_config(tiny_data_root, tmp_path / "a"))
    assert optics_conditioned(straight)
    history = fit(_config(tiny_data_root, tmp_path / "a"), model=straight)
    assert history.stopped == "completed" and all(np.isfinite(history.losses))
    assert straight.optics_film.mlp[-1].weight.abs().sum() > 0  # the FiLM was trained

    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    torch.manual_seed(0)
    start = build_model(_config(tiny_data_root, tmp_path / "b"))
    first = fit(_config(tiny_data_root, tmp_path / "b"), model=start, cancel=stop_after_two)
    assert first.stopped == "cancelled" and first.step == 2
    torch.manual_seed(5)
    resumed = build_model(_config(tiny_data_root, tmp_path / "b"))
    second = fit(_config(tiny_data_root, tmp_path / "b"), model=resumed, resume=True)
    assert second.step == 4 and second.stopped == "completed"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    assert read_header(history.best_checkpoint)["config"]["optics_conditioning"] is True
    loaded = load_model(history.last_checkpoint, device="cpu")
    assert loaded.info.optics_conditioned
    assert read_header(history.best_checkpoint)["training"]["config"]["optics_dropout"] == 0.3


def test_an_unconditioned_start_model_gets_the_conditioning_the_config_asks_for(
    tiny_data_root, tmp_path
):
    torch.manual_seed(0)
    plain = build_model(_config(tiny_data_root, tmp_path / "p", model_overrides={}))
    assert not optics_conditioned(plain)
    history = fit(_config(tiny_data_root, tmp_path / "p", steps=1, val_every=1), model=plain)
    assert load_model(history.last_checkpoint, device="cpu").info.optics_conditioned


def test_validation_of_a_conditioned_model_uses_the_true_optics(tiny_data_root, tmp_path,
                                                                monkeypatch):
    from napari_mpt_deblur.train import loop

    seen = []
    original = loop.predict_batches

    def spy(model, inputs, **kwargs):
        seen.append(kwargs.get("optics"))
        return original(model, inputs, **kwargs)

    monkeypatch.setattr(loop, "predict_batches", spy)
    fit(_config(tiny_data_root, tmp_path / "v", steps=1, val_every=1, num_val_patches=2))
    optics = seen[-1]
    assert optics is not None and optics.shape == (2, 3)
    assert (optics[:, 2] == 1).all()  # known optics, never dropped in validation
    assert optics[0, 1] < 0.6 < optics[1, 1]  # the 20x member, then the oil member

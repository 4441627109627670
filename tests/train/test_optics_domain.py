"""The user's optics as a simulation: replay at those optics, the selection score, the guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_helpers import OIL, Identity, TinyNet, blurry_user_images

from napari_mpt_deblur.simulate import depth_of_field_um, get_simulation_preset
from napari_mpt_deblur.train.finetune import FinetuneConfig, _FinetuneRun, finetune
from napari_mpt_deblur.train.optics_domain import (
    SimulatedScore,
    bundled_infocus_sources,
    match_camera,
    planes_noise_sigma,
    simulation_for_optics,
)


def test_depth_of_field_carries_the_defocus_range_to_other_optics():
    base = get_simulation_preset("bbbc006")
    oil_dof = depth_of_field_um(numerical_aperture=1.2, wavelength_nm=550.0,
                                immersion_index=1.515)
    assert oil_dof == pytest.approx(0.55 * 1.515 / 1.44)
    oil = simulation_for_optics(base, **OIL)
    ratio = oil_dof / depth_of_field_um(
        numerical_aperture=float(np.mean(base.numerical_aperture_range)),
        wavelength_nm=float(np.mean(base.wavelength_nm_choices)))
    assert oil.defocus_um_range == pytest.approx(
        (base.defocus_um_range[0] * ratio, base.defocus_um_range[1] * ratio))
    # 2-32 µm at 20x NA 0.5 becomes roughly the 0.5-8 µm of an NA 1.2 oil objective
    assert 0.3 < oil.defocus_um_range[0] < 0.8 and 5.0 < oil.defocus_um_range[1] < 12.0
    assert oil.numerical_aperture_range == (1.2, 1.2) and oil.pixel_size_um == 0.1
    assert oil.immersion_index == 1.515 and oil.wavelength_nm_choices == (550.0,)
    # camera and content statistics stay the model's
    assert oil.photons_per_unit_range == base.photons_per_unit_range
    capped = simulation_for_optics(base, **OIL, max_defocus_um=2.0)
    assert capped.defocus_um_range[1] == 2.0 and capped.defocus_um_range[0] <= 0.5
    with pytest.raises(ValueError, match="below the immersion index"):
        simulation_for_optics(base, pixel_size_um=0.1, numerical_aperture=1.2)


def test_score_measures_restoration_of_the_in_focus_truth():
    sim = simulation_for_optics(get_simulation_preset("bbbc006"), **OIL, max_defocus_um=2.0)
    sources = bundled_infocus_sources(sim)
    assert [s.name for s in sources] == ["sample_actin", "sample_nuclei", "sample_actin"]
    score = SimulatedScore(sim, n_pairs=6, patch_size=64, sources=sources)
    # nominal levels 0..2 µm, each times the simulator's defocus-scale draw (1-1.3)
    assert score.defocus_um[0] == 0.0 and 2.0 <= score.defocus_um[-1] <= 2.6
    assert score.blurred.shape == (6, 1, 64, 64)
    identity = Identity()
    ident = score(identity, device=torch.device("cpu"))
    # the identity scores exactly the PSNR of the blurred inputs
    from napari_mpt_deblur.train._common import psnr_ssim

    expected = np.mean([psnr_ssim(b[0].numpy(), s[0].numpy())[0]
                        for b, s in zip(score.blurred, score.sharp)])
    assert ident["sim_psnr"] == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        identity.scale.fill_(0.5)  # halving the intensities is clearly worse
    assert score(identity, device=torch.device("cpu"))["sim_psnr"] < ident["sim_psnr"] - 3
    # fixed pairs: the same score twice
    again = SimulatedScore(sim, n_pairs=6, patch_size=64, sources=sources)
    assert torch.equal(again.blurred, score.blurred)
    assert score.describe()["numerical_aperture"] == 1.2


def test_camera_matching_finds_the_photon_count_of_the_users_images():
    from napari_mpt_deblur.simulate import make_pair

    base = get_simulation_preset("bbbc006")
    sources = bundled_infocus_sources(base)
    matched = {}
    for photons in (20.0, 2000.0):
        sim = base.replace(photons_per_unit_range=(photons, photons))
        rng = np.random.default_rng(1)
        planes = [make_pair(s.plane, sim, rng, defocus_um=8.0, source_range=s.value_range).blurred
                  for s in sources]
        sigma = planes_noise_sigma(planes)
        lo, hi = match_camera(base, sigma, sources=sources).photons_per_unit_range
        assert hi == pytest.approx(lo * 2.25)
        centre = (lo * hi) ** 0.5
        matched[photons] = centre
        # the estimate lands within a factor of 4 of the truth (content and draws differ)
        assert photons / 4 < centre < photons * 4
    assert matched[20.0] < matched[2000.0] / 10
    assert planes_noise_sigma([np.full((64, 64), 5.0, np.float32)]) == 0.0


@pytest.fixture(scope="module")
def blurry_images():
    return blurry_user_images(3, sigma_px=2.0, noise=10)


def _settings(**changes) -> FinetuneConfig:
    base = dict(steps=6, batch_size=2, patch_size=64, lr=2e-3, warmup_steps=0, val_crop_size=64,
                val_every=3, preview_every=0, state_every=0, device="cpu", score_pairs=4,
                reblur_defocus_dof=(0.5, 1.0), reblur_kernel_size=31)
    base.update(changes)
    return FinetuneConfig(**base)


def test_replay_and_score_use_the_given_optics(blurry_images):
    settings = _settings(mode="replay", **OIL, max_defocus_um=2.0)
    assert settings.uses_user_optics
    run = _FinetuneRun(TinyNet(), blurry_images, paired=None, settings=settings,
                       replay_images=None, out_path=None, state_path=None, resume=False)
    assert run.replay_simulation.numerical_aperture_range == (1.2, 1.2)
    assert run.replay_simulation.pixel_size_um == 0.1
    assert run.score.simulation.defocus_um_range == (0.0, 2.0)
    assert run.composition["reblur"] == 0 and run.composition["replay"] == 2
    assert run.score_label == "simulated PSNR at your optics"
    # the simulated camera is matched to the images' noise (10 counts on a ~100-1000 signal)
    assert run.noise_sigma > 0
    assert run.replay_simulation.photons_per_unit_range != (300.0, 5000.0)
    model_optics = _settings(mode="replay", **OIL, replay_optics="model")
    assert not model_optics.uses_user_optics
    with pytest.raises(ValueError, match="needs pixel_size_um and numerical_aperture"):
        _settings(replay_optics="user")


def test_guard_keeps_the_starting_weights_when_nothing_beats_them(blurry_images):
    torch.manual_seed(0)
    model = TinyNet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # A learning rate this large wrecks the network at every step.
    result = finetune(model, blurry_images, settings=_settings(
        mode="replay", lr=0.5, grad_clip=0.0, max_defocus_um=2.0, **OIL))
    assert result.kept_start and result.best["step"] == 0
    assert "kept the starting model" in result.verdict
    assert all(torch.equal(v, start[k]) for k, v in result.model.state_dict().items())
    scores = [h["score"] for h in result.history if h["kind"] == "validation" and h["step"]]
    assert scores and max(scores) < result.baseline["score"] + 0.05


def test_guard_lets_a_real_improvement_through(blurry_images):
    model = Identity()
    with torch.no_grad():  # a model that halves its input: replay pairs teach it to stop
        model.scale.fill_(0.5)
    result = finetune(model, blurry_images, settings=_settings(
        mode="replay", lr=5e-2, steps=12, val_every=4, max_defocus_um=2.0, pixel_loss="mse",
        **OIL))
    assert not result.kept_start and result.best["step"] > 0
    assert result.best["score"] >= result.baseline["score"] + 0.05
    assert float(result.model.scale) > 0.6
    assert "fine-tuned weights of step" in result.verdict


def _record(step, score, thirds):
    return {"kind": "validation", "step": step, "score": score,
            "sim_psnr_by_defocus_um": dict(zip(("0.0-1.0", "1.0-2.0", "2.0-3.0"), thirds))}


def test_guard_refuses_a_better_mean_bought_with_a_loss_at_one_level():
    from napari_mpt_deblur.train.guard import guard_accepts, worst_level_change

    start = _record(0, 24.0, (30.0, 24.0, 18.0))
    rules = dict(baseline=start, min_gain_db=0.05, max_level_loss_db=0.1)
    deep_only = _record(50, 24.3, (29.5, 23.9, 19.5))  # mean +0.3, in focus -0.5
    assert worst_level_change(deep_only, start) == ("0.0-1.0", -0.5)
    assert not guard_accepts(deep_only, best=start, **rules)
    everywhere = _record(100, 24.2, (30.05, 24.2, 18.35))
    assert guard_accepts(everywhere, best=start, **rules)
    assert not guard_accepts(_record(150, 24.1, (30.1, 24.1, 18.1)), best=everywhere, **rules)
    slight = _record(200, 24.4, (29.95, 24.5, 18.75))  # -0.05 in focus: within the tolerance
    assert guard_accepts(slight, best=everywhere, **rules)
    # records without thirds (older runs) fall back to the mean alone
    assert guard_accepts({"score": 24.3}, best=start, **{**rules, "baseline": {"score": 24.0}})


def test_guard_decision_says_why_and_the_verdict_reports_that_reason():
    from types import SimpleNamespace

    from napari_mpt_deblur.train.guard import (
        GuardDecision,
        guard_decision,
        refused_for_a_level,
        run_verdict,
    )

    start = _record(0, 24.0, (30.0, 24.0, 18.0))
    rules = dict(baseline=start, best=start, min_gain_db=0.05, max_level_loss_db=0.1)
    assert guard_decision(_record(50, 24.02, (30.0, 24.0, 18.1)), **rules) == GuardDecision(
        False, "no_gain")
    level = guard_decision(_record(60, 24.3, (29.5, 23.9, 19.5)), **rules)
    assert level == GuardDecision(False, "level_loss", ("0.0-1.0", -0.5))
    assert level.to_dict() == {"accepted": False, "reason": "level_loss", "range": "0.0-1.0",
                               "change_db": -0.5}
    # The verdict takes the reason the guard recorded at validation time: here the thirds of
    # the record were dropped afterwards, so they could not be worked out again.
    history = [{"kind": "validation", "step": 60, "score": 24.3, "guard": level.to_dict()},
               {"kind": "validation", "step": 80, "score": 24.1,
                "guard": {"accepted": False, "reason": "level_loss", "range": "1.0-2.0",
                          "change_db": -0.2}},
               {"kind": "validation", "step": 90, "score": 24.6,
                "guard": {"accepted": False, "reason": "no_gain"}}]
    words = dict(baseline=start, best=dict(start), score_name="simulated PSNR",
                 min_gain_db=0.05, max_level_loss_db=0.1)
    assert refused_for_a_level(history, start) == (60, pytest.approx(0.3), "0.0-1.0", -0.5)
    kept, verdict = run_verdict(history, **words)
    assert kept and "best checkpoint (step 60) gained +0.30 dB" in verdict
    assert "lost 0.50 dB at 0.0-1.0 µm defocus" in verdict
    # nothing refused for a level: the plain "no gain" verdict
    assert refused_for_a_level(history[2:], start) is None
    assert "no checkpoint beat it by 0.05 dB" in run_verdict(history[2:], **words)[1]
    # the run's verdict is this one, with its settings and score name
    run = SimpleNamespace(score_label="simulated PSNR", baseline=start, best=dict(start),
                          history=history,
                          settings=FinetuneConfig(min_gain_db=0.05, max_level_loss_db=0.1))
    assert _FinetuneRun.verdict(run) == (kept, verdict)


def test_validation_records_carry_the_score_per_third_of_the_defocus_range(blurry_images):
    run = _FinetuneRun(TinyNet(), blurry_images, paired=None,
                       settings=_settings(mode="replay", **OIL, max_defocus_um=3.0,
                                          score_pairs=6),
                       replay_images=None, out_path=None, state_path=None, resume=False)
    baseline = run.validate(record_history=False)
    thirds = baseline["sim_psnr_by_defocus_um"]
    assert len(thirds) == 3 and next(iter(thirds)).startswith("0.0-")
    assert min(thirds.values()) <= baseline["score"] <= max(thirds.values())
    run.validate()  # the record keeps what the guard said (the first validation: taken)
    assert run.history[-1]["guard"] == {"accepted": True, "reason": ""}
    with pytest.raises(ValueError, match="max_level_loss_db"):
        _settings(max_level_loss_db=-1)


def test_late_blocks_of_a_conditioned_model_leave_its_optics_conditioning_frozen():
    """The FiLM feeds every stage: adapting the "late" blocks must not train it (nor send
    gradients back through the encoder to reach it)."""
    from napari_mpt_deblur.models._registry import create_model
    from napari_mpt_deblur.train.trainable import select_trainable

    plain = create_model("mpt-test", routing="aligned")
    conditioned = create_model("mpt-test", routing="aligned", optics_conditioning=True)
    assert select_trainable(conditioned, "late") == select_trainable(plain, "late")
    trained = {n for n, p in conditioned.named_parameters() if p.requires_grad}
    assert trained == {n for n, p in plain.named_parameters() if p.requires_grad}
    assert not any(n.startswith("optics_film") for n in trained)
    film = select_trainable(conditioned, "optics")
    assert film == sum(p.numel() for p in conditioned.optics_film.parameters())
    assert all(n.startswith("optics_film.") for n, p in conditioned.named_parameters()
               if p.requires_grad)
    with pytest.raises(ValueError, match="not optics-conditioned"):
        select_trainable(plain, "optics")


def test_parameter_efficient_choices_freeze_the_rest(blurry_images):
    from napari_mpt_deblur.models._registry import create_model
    from napari_mpt_deblur.train.trainable import select_trainable

    torch.manual_seed(0)
    model = create_model("mpt-test", routing="aligned")
    total = sum(p.numel() for p in model.parameters())
    late = select_trainable(model, "late")
    assert 0 < late < total / 2
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("decoder_level1", "up2_1", "output", "refinement", "decoder_level2",
                             "up3_2")) for n in trained), sorted(trained)[:5]
    norms = select_trainable(model, "norms")
    assert 0 < norms < late
    assert all(n.endswith(("bias", "weight")) for n, p in model.named_parameters()
               if p.requires_grad)
    assert select_trainable(model, "all") == total
    with pytest.raises(ValueError, match="trainable must be one of"):
        select_trainable(model, "some")

    # a run adapting only the late blocks leaves the others untouched and hands back a model
    # whose parameters all train again
    tiny = TinyNet()
    first = tiny.conv1.weight.detach().clone()
    result = finetune(tiny, blurry_images, settings=_settings(
        mode="replay", trainable="late", min_gain_db=0.0, max_defocus_um=2.0, **OIL))
    assert torch.equal(result.model.conv1.weight, first)
    assert all(p.requires_grad for p in result.model.parameters())

"""The selection score made from the user's own images (issue #27): its pairs come from the
start model's output on the user's blurry images, re-blurred at the user's optics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_helpers import OIL, Identity, TinyNet, blurry_user_images

from napari_mpt_deblur.simulate import get_simulation_preset
from napari_mpt_deblur.train.finetune import FinetuneConfig, _FinetuneRun, finetune
from napari_mpt_deblur.train.optics_domain import (
    SimulatedScore,
    focus_measure,
    sharpest_crop_sources,
    simulation_for_optics,
    start_output_sources,
)


@pytest.fixture(scope="module")
def blurry_images():
    return blurry_user_images(5, sigma_px=2.0, noise=10, n=3)


@pytest.fixture(scope="module")
def oil():
    return simulation_for_optics(get_simulation_preset("bbbc006"), **OIL, max_defocus_um=2.0)


def test_sources_are_the_start_models_output_on_the_users_images(blurry_images, oil):
    # an identity "start model" hands back the user's own pixels: the densest window of each
    sources = start_output_sources(Identity(), blurry_images, oil, names=["a", "b", "c"],
                                   window=96)
    assert [s.name for s in sources] == [f"{n} (start model output)" for n in "abc"]
    for src, plane in zip(sources, blurry_images):
        assert src.plane.shape == (96, 96)
        windows = [plane[y : y + 96, x : x + 96] for y in range(0, 65, 16)
                   for x in range(0, 65, 16)]
        assert any(np.allclose(src.plane, w, rtol=1e-3, atol=0.5) for w in windows)
        # the window with the most signal, not an empty corner
        assert src.plane.mean() >= max(w.mean() for w in windows) - 1e-3
        lo, hi = src.value_range
        assert lo < hi
    # more images than pairs: a spread of them, first and last included
    many = start_output_sources(Identity(), blurry_images * 3, oil, window=64, count=3)
    assert [s.name.split()[0] for s in many] == ["image0", "image4", "image8"]


def test_start_model_is_left_as_it_was(blurry_images, oil):
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start_output_sources(model, blurry_images, oil, window=64)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_score_on_own_images_is_deterministic_and_fixed_at_the_start(blurry_images, oil):
    torch.manual_seed(0)
    model = TinyNet()

    def build():
        sources = start_output_sources(model, blurry_images, oil, window=96)
        return SimulatedScore(oil, sources=sources, n_pairs=4, patch_size=64, seed=3, key="user")

    first, second = build(), build()
    assert torch.equal(first.blurred, second.blurred) and torch.equal(first.sharp, second.sharp)
    scores = first(model, device=torch.device("cpu"))
    assert set(scores) == {"user_psnr", "user_ssim", "user_psnr_by_defocus_um"}
    assert scores == first(model, device=torch.device("cpu"))
    # training the model afterwards moves the score only through its prediction
    sharp = first.sharp.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    assert torch.equal(first.sharp, sharp)
    assert first(model, device=torch.device("cpu"))["user_psnr"] != scores["user_psnr"]


def test_a_damaged_model_scores_below_the_start():
    from napari_mpt_deblur.models.resolve import load_model

    images = blurry_user_images(9, sigma_px=3.0, noise=20, n=2, shape=(256, 256))
    start = load_model("mpt_tiny.defocus", device="cpu")
    sim = get_simulation_preset("bbbc006")
    sources = start_output_sources(start, images, sim, window=256)
    score = SimulatedScore(sim, sources=sources, n_pairs=4, patch_size=128, seed=1, key="user")
    before = score(start, device=torch.device("cpu"))["user_psnr"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in start.modules():  # noise on every convolution's weights
            if isinstance(module, torch.nn.Conv2d):
                w = module.weight  # 0.6 std: a weight-averaged default shrugs off 0.3 (-0.2 dB)
                w.add_(0.6 * w.std() * torch.randn(w.shape, generator=gen))
    damaged = score(start, device=torch.device("cpu"))["user_psnr"]
    assert damaged < before - 1.0


def test_focus_measure_prefers_the_sharper_crop():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    sharp = np.zeros((96, 96), np.float32)
    sharp[rng.integers(0, 96, 60), rng.integers(0, 96, 60)] = 1000.0
    sharp = gaussian_filter(sharp, 1.0)
    blurred = gaussian_filter(sharp, 4.0)
    assert focus_measure(sharp) > 2 * focus_measure(blurred)
    assert focus_measure(np.ones((32, 32))) == 0.0
    # noise alone does not read as detail as much as structure does
    noisy = blurred + rng.normal(0, 0.02 * float(np.ptp(blurred)), blurred.shape)
    assert focus_measure(noisy) < focus_measure(sharp)
    sim = get_simulation_preset("bbbc006")
    picked = sharpest_crop_sources([blurred, sharp], sim, window=64, count=1)
    assert [s.name for s in picked] == ["image1 (sharpest crop)"]


def _settings(**changes) -> FinetuneConfig:
    base = dict(steps=4, batch_size=2, patch_size=64, lr=2e-3, warmup_steps=0, val_crop_size=64,
                val_every=2, preview_every=0, state_every=0, device="cpu", score_pairs=4,
                reblur_defocus_dof=(0.5, 1.0), reblur_kernel_size=31, mode="replay",
                max_defocus_um=2.0, **OIL)
    base.update(changes)
    return FinetuneConfig(**base)


def test_the_run_scores_with_the_selected_score(blurry_images):
    with pytest.raises(ValueError, match="selection_score must be one of"):
        FinetuneConfig(selection_score="mine")
    assert FinetuneConfig().selection_score == "bundled-images"
    torch.manual_seed(0)
    own = finetune(TinyNet(), blurry_images, settings=_settings(selection_score="own-images"))
    torch.manual_seed(0)
    bundled = finetune(TinyNet(), blurry_images,
                       settings=_settings(selection_score="bundled-images"))
    for result, key, other in ((own, "user", "sim"), (bundled, "sim", "user")):
        records = [h for h in result.history if h["kind"] == "validation"]
        assert len(records) == 3
        for record in records:
            assert record["score"] == record[f"{key}_psnr"]
            assert record["score_by_defocus_um"] == record[f"{key}_psnr_by_defocus_um"]
            assert f"{other}_psnr" not in record  # only the selected score is computed
    assert own.baseline["score_name"] == "simulated PSNR on your images at your optics"
    assert bundled.baseline["score_name"] == "simulated PSNR at your optics"
    assert own.baseline["score"] != pytest.approx(bundled.baseline["score"])
    assert "on your images" in own.verdict


def test_the_runs_score_pairs_come_from_the_users_images(blurry_images):
    run = _FinetuneRun(TinyNet(), blurry_images, paired=None,
                       settings=_settings(selection_score="own-images"), replay_images=None,
                       out_path=None, state_path=None, resume=False)
    described = run.score.describe()
    assert described["sources"] == [f"image{i} (start model output)" for i in range(3)]
    assert described["numerical_aperture"] == 1.2
    bundled = _FinetuneRun(TinyNet(), blurry_images, paired=None, settings=_settings(),
                           replay_images=None, out_path=None, state_path=None, resume=False)
    assert bundled.score.describe()["sources"][0] == "sample_actin"
    # the same optics, camera and defocus levels: only the content differs
    assert bundled.score.describe()["defocus_um"] == pytest.approx(described["defocus_um"],
                                                                   abs=0.5)
    assert bundled.score.simulation == run.score.simulation


def test_a_resumed_run_scores_on_the_pairs_of_the_first_start(blurry_images, tmp_path):
    # the panel resumes with the run's fine-tuned model: its pairs must stay the start's
    settings = _settings(selection_score="own-images", steps=2, val_every=1, state_every=1)
    torch.manual_seed(0)
    first = _FinetuneRun(TinyNet(), blurry_images, paired=None, settings=settings,
                         replay_images=None, out_path=tmp_path / "ft.safetensors",
                         state_path=None, resume=False)
    list(first.save())

    def other():
        torch.manual_seed(0)
        model = TinyNet()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        return model

    # new pairs for a new start (the resume below loads the state's weights into its model)
    fresh = _FinetuneRun(other(), blurry_images, paired=None, settings=settings,
                         replay_images=None, out_path=None, state_path=None, resume=False)
    assert not torch.equal(fresh.score.sharp, first.score.sharp)
    resumed = _FinetuneRun(other(), blurry_images, paired=None, settings=settings,
                           replay_images=None, out_path=tmp_path / "ft.safetensors",
                           state_path=None, resume=True)
    assert torch.equal(resumed.score.sharp, first.score.sharp)
    assert torch.equal(resumed.score.blurred, first.score.blurred)

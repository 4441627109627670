"""Tests of the training data pipeline: sources, simulated/real/unlabeled patches, streams."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_mpt_deblur.simulate import get_simulation_preset
from napari_mpt_deblur.train.data import (
    BatchBuilder,
    PairSimulator,
    RealPairs,
    UnlabeledPatches,
    build_validation_set,
    dihedral,
    find_images,
    find_pair_files,
    load_sources,
    make_loader,
    random_crop,
    synthetic_infocus,
)


@pytest.fixture(scope="module")
def sources(tiny_data_root):
    sim = get_simulation_preset("bbbc006")
    return load_sources(find_images([tiny_data_root / "train"]),
                        percentiles=sim.source_percentiles)


def test_find_images_folders_files_globs(tiny_data_root, tmp_path):
    train = tiny_data_root / "train"
    assert [p.name for p in find_images([train])] == ["img0.tif", "img1.tif", "img2.tif"]
    assert len(find_images([train / "img1.tif", train])) == 3  # de-duplicated
    assert len(find_images([str(train / "img[01].tif")])) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match=r"no \.tif"):
        find_images([tmp_path])


def test_load_sources_range_is_offset_aware(sources):
    # Whole-image percentiles: the low end sits at the dim background (camera offset + haze),
    # not at zero, so the simulator maps the background to ~0.
    lo, hi = sources[0].value_range
    assert 90 <= lo <= 120 and hi > 1000


def test_simulated_pairs_are_normalised_and_consistent(sources):
    sim = PairSimulator(sources, get_simulation_preset("bbbc006"), 32)
    rng = np.random.default_rng(0)
    for _ in range(4):
        b, s, params = sim.sample(rng, patch_norm=False)
        assert b.shape == s.shape == (32, 32) and b.dtype == s.dtype == np.float32
        # One affine map for both: background near 0, same mean (unit-sum PSF), sharper target.
        assert abs(float(b.mean() - s.mean())) < 0.1 * max(float(s.max()), 1e-3) + 0.02
        # The engine's convention: the whole blurred plane's high percentile maps to 1, so a
        # blurred patch stays near [0, 1] while the sharp target may exceed 1.
        assert -0.5 < b.min() and b.max() < 1.5
        assert params["norm"] == "plane" and len(params["norm_range"]) == 2


def test_source_weights_steer_which_source_is_drawn(sources):
    sim = PairSimulator(sources, get_simulation_preset("bbbc006"), 16, weights=[0, 1, 0])
    rng = np.random.default_rng(0)
    assert {sim.sample(rng)[2]["source"] for _ in range(6)} == {sources[1].name}
    assert sim.probabilities.tolist() == [0.0, 1.0, 0.0]
    default = PairSimulator(sources, get_simulation_preset("bbbc006"), 16)
    areas = np.array([s.plane.size for s in sources], dtype=float)
    np.testing.assert_allclose(default.probabilities, areas / areas.sum())
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="weights must be 3 values"):
            PairSimulator(sources, get_simulation_preset("bbbc006"), 16, weights=bad)


def test_plane_range_estimate_matches_whole_plane_simulation(sources):
    from napari_mpt_deblur.engine.normalize import percentile_range
    from napari_mpt_deblur.simulate import make_pair, sample_parameters

    sim_cfg = get_simulation_preset("bbbc006")
    sim = PairSimulator(sources, sim_cfg, 32)
    rng = np.random.default_rng(4)
    for defocus in (4.0, 24.0):
        params = sample_parameters(sim_cfg, rng, defocus_um=defocus)
        full = make_pair(sources[0].plane, params, rng, source_range=sources[0].value_range)
        lo, hi = percentile_range(full.blurred)
        est_lo, est_hi = sim.plane_range(0, params)
        assert est_hi - est_lo == pytest.approx(hi - lo, rel=0.15)


def test_simulated_blur_removes_detail(sources):
    quiet = get_simulation_preset("bbbc006").replace(
        photons_per_unit_range=(1e6, 1e6), read_noise_e_range=(0.0, 0.0))
    sim = PairSimulator(sources, quiet, 64)
    rng = np.random.default_rng(1)
    grad = lambda a: np.abs(np.diff(a, axis=0)).mean()  # noqa: E731
    for _ in range(5):
        b, s, _ = sim.sample(rng, defocus_um=20.0, patch_norm=False)
        if s.max() > 0.3:  # the crop holds structure
            assert grad(b) < 0.5 * grad(s)
            assert b.max() < s.max()
            break
    else:
        pytest.fail("no crop with structure in 5 draws")


def test_same_seed_same_batch_any_worker_count(sources):
    sim = PairSimulator(sources, get_simulation_preset("bbbc006"), 16)
    builder = BatchBuilder(seed=3, simulator=sim, n_simulated=2)
    direct = [builder(step) for step in range(4)]
    assert not torch.equal(direct[0]["blurred"], direct[1]["blurred"])
    torch.testing.assert_close(builder(2)["blurred"], direct[2]["blurred"], rtol=0, atol=0)
    streamed = list(make_loader(builder, start=1, stop=4, num_workers=0))
    assert [int(b["step"]) for b in streamed] == [1, 2, 3]
    for got, want in zip(streamed, direct[1:]):
        torch.testing.assert_close(got["sharp"], want["sharp"], rtol=0, atol=0)


@pytest.mark.slow
def test_workers_deliver_batches_in_step_order(sources):
    sim = PairSimulator(sources, get_simulation_preset("bbbc006"), 16)
    builder = BatchBuilder(seed=3, simulator=sim, n_simulated=1)
    streamed = list(make_loader(builder, start=0, stop=5, num_workers=2))
    assert [int(b["step"]) for b in streamed] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(streamed[3]["blurred"], builder(3)["blurred"], rtol=0, atol=0)


def test_validation_set_is_fixed_and_stratified(sources):
    sim_cfg = get_simulation_preset("bbbc006")
    a = build_validation_set(sources, sim_cfg, n_patches=4, patch_size=32, seed=5)
    b = build_validation_set(sources, sim_cfg, n_patches=4, patch_size=32, seed=5)
    torch.testing.assert_close(a.blurred, b.blurred, rtol=0, atol=0)
    defocus = [abs(p["defocus_nominal_um"]) for p in a.params]
    assert defocus == sorted(defocus) and defocus[0] == 2.0 and defocus[-1] == 32.0
    assert a.describe()["n"] == 4


def test_dihedral_and_crops():
    rng = np.random.default_rng(0)
    a = np.arange(16.0).reshape(4, 4)
    b, c = dihedral([a, a * 2], rng)
    np.testing.assert_array_equal(c, 2 * b)
    assert sorted(b.ravel()) == sorted(a.ravel())
    small = np.ones((5, 6))
    crop, _ = random_crop(small, 8, rng)  # mirror-padded up to the patch size
    assert crop.shape == (8, 8)
    plane = np.zeros((64, 64))
    for _ in range(20):
        _, (y, x) = random_crop(plane, 16, rng, avoid=(16, 16, 32, 32))
        assert y + 16 <= 16 or y >= 48 or x + 16 <= 16 or x >= 48


def test_real_pairs_matched_by_name_not_position(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "blur").mkdir()
    (tmp_path / "sharp").mkdir()
    for name in ("b", "a"):
        sharp = rng.uniform(0, 100, (40, 40)).astype(np.float32)
        tifffile.imwrite(tmp_path / "sharp" / f"{name}.tif", sharp)
        tifffile.imwrite(tmp_path / "blur" / f"{name}.tif", sharp + (1000 if name == "a" else 0))
    tifffile.imwrite(tmp_path / "blur" / "orphan.tif", np.zeros((40, 40), np.float32))
    pairs = find_pair_files(tmp_path)
    assert [(b.name, s.name) for b, s in pairs] == [("a.tif", "a.tif"), ("b.tif", "b.tif")]
    real = RealPairs.from_folders([tmp_path], 16)
    b, s = real.sample(rng)
    assert b.shape == s.shape == (16, 16)
    with pytest.raises(FileNotFoundError, match="blur"):
        find_pair_files(tmp_path / "blur")


def test_unlabeled_patches_avoid_holdout_and_normalise():
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 200, (64, 64)).astype(np.float32)
    img[16:48, 16:48] = 10_000  # the held-out box is very bright: any overlap would show
    patches = UnlabeledPatches([img], 16, holdout={0: (16, 16, 32, 32)})
    for _ in range(20):
        assert patches.sample(rng).max() < 2.0


def test_synthetic_infocus_is_sharp_and_seeded():
    a = synthetic_infocus((64, 64), 1)
    np.testing.assert_array_equal(a, synthetic_infocus((64, 64), 1))
    assert a.dtype == np.float32 and a.max() == pytest.approx(1.0)
    assert np.abs(np.diff(a, axis=1)).max() > 0.2  # hard edges

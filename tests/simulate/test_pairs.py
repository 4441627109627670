"""Simulated training pairs: parameter draws, the intensity convention, seeding, writing."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_mpt_deblur.simulate import (
    SIMULATION_PRESETS,
    SimulatedPair,
    SimulationConfig,
    blur,
    defocus_psf,
    get_simulation_preset,
    list_simulation_presets,
    make_pair,
    optics_from_params,
    sample_parameters,
)


def _cells(shape=(96, 96), seed=0) -> np.ndarray:
    """Synthetic uint16 'cells' on an offset background, like a 12-bit widefield image."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    image = np.full(shape, 110.0)
    for cy, cx, r in zip(
        rng.uniform(10, shape[0] - 10, 12),
        rng.uniform(10, shape[1] - 10, 12),
        rng.uniform(3, 7, 12),
    ):
        image += 2500.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))
    return np.clip(image + rng.normal(0, 5, shape), 0, 4095).astype(np.uint16)


def _plain(**overrides) -> SimulationConfig:
    """No intensity jitter, no background: the sharp target is the normalised source."""
    base = dict(
        name="plain",
        intensity_scale_range=(1.0, 1.0),
        intensity_gamma_range=(1.0, 1.0),
        background_range=(0.0, 0.0),
        full_scale_fraction_range=(0.5, 0.5),
    )
    return SIMULATION_PRESETS["bbbc006"].replace(**{**base, **overrides})


def test_presets():
    assert {"bbbc006", "oil-1.2"} <= set(list_simulation_presets())
    bbbc = get_simulation_preset("bbbc006")
    assert bbbc.numerical_aperture_range == (0.4, 0.6)
    assert bbbc.pixel_size_um == 0.645
    assert bbbc.wavelength_nm_choices == (460.0, 620.0)
    assert bbbc.defocus_scale_range == (1.0, 1.3)
    oil = get_simulation_preset("oil-1.2")
    assert oil.numerical_aperture_range == (1.2, 1.2) and oil.pixel_size_um == 0.1
    assert oil.defocus_um_range == (0.5, 4.0) and oil.immersion_index > 1.5
    with pytest.raises(ValueError, match=r"'bbbc006'.*'oil-1\.2'"):
        get_simulation_preset("bbbc007")


def test_config_round_trip_and_validation():
    cfg = get_simulation_preset("bbbc006")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert SimulationConfig.from_dict(data) == cfg
    assert cfg.replace(numerical_aperture_range=[0.3, 0.5]).numerical_aperture_range == (0.3, 0.5)
    with pytest.raises(ValueError, match="unknown SimulationConfig keys"):
        SimulationConfig.from_dict({"na": [0.4, 0.6]})
    with pytest.raises(ValueError, match="numerical_aperture_range"):
        SimulationConfig(numerical_aperture_range=(0.6, 0.4))
    with pytest.raises(ValueError, match="immersion_index"):
        SimulationConfig(numerical_aperture_range=(0.9, 1.2))
    with pytest.raises(ValueError, match="defocus_sides"):
        SimulationConfig(defocus_sides="up")
    with pytest.raises(ValueError, match="bit_depth_choices"):
        SimulationConfig(bit_depth_choices=(24,))


@pytest.mark.parametrize("preset", sorted(SIMULATION_PRESETS))
def test_sample_parameters_within_ranges_quantised_and_serialisable(preset):
    cfg = get_simulation_preset(preset)
    for seed in range(20):
        p = sample_parameters(cfg, seed)
        assert json.loads(json.dumps(p)) == p
        lo, hi = cfg.numerical_aperture_range
        assert lo - 1e-9 <= p["numerical_aperture"] <= hi + 1e-9
        assert p["numerical_aperture"] == pytest.approx(
            round(p["numerical_aperture"] / cfg.na_step) * cfg.na_step
        )
        assert p["defocus_um"] / cfg.defocus_step_um == pytest.approx(
            round(p["defocus_um"] / cfg.defocus_step_um)
        )
        assert cfg.defocus_um_range[0] <= abs(p["defocus_nominal_um"]) <= cfg.defocus_um_range[1]
        assert p["bit_depth"] in cfg.bit_depth_choices
        if cfg.wavelength_nm_choices:
            assert p["wavelength_nm"] in cfg.wavelength_nm_choices
        # Gain puts full scale at the drawn fraction of the ADU range.
        full_scale_adu = p["photons_per_unit"] * p["gain_adu_per_e"]
        assert full_scale_adu == pytest.approx(
            p["full_scale_fraction"] * (2 ** p["bit_depth"] - 1 - p["offset_adu"]), rel=1e-3
        )
        optics_from_params(p)  # valid OpticsConfig


def test_sample_parameters_seeding_and_fixed_defocus():
    cfg = get_simulation_preset("bbbc006")
    assert sample_parameters(cfg, 5) == sample_parameters(cfg, np.random.default_rng(5))
    assert sample_parameters(cfg, 5) != sample_parameters(cfg, 6)
    signs = {np.sign(sample_parameters(cfg, s)["defocus_um"]) for s in range(30)}
    assert signs == {-1.0, 1.0}
    free = sample_parameters(cfg, 9)
    fixed = sample_parameters(cfg, 9, defocus_um=8.0, defocus_scale=1.0)
    assert fixed["defocus_um"] == 8.0 and fixed["defocus_nominal_um"] == 8.0
    # Fixing the defocus leaves every other draw unchanged for the same seed.
    skip = {"defocus_um", "defocus_nominal_um", "defocus_scale"}
    assert {k: v for k, v in free.items() if k not in skip} == {
        k: v for k, v in fixed.items() if k not in skip
    }


def test_a_fixed_seed_gives_the_recorded_parameters_and_pair():
    """Golden values: a fixed seed draws the same microscope and the same images as when these
    numbers were recorded, so moving or reordering the simulator's code cannot change the
    training data unnoticed (every draw is exercised: near focus, haze, camera, jitter)."""
    cfg = get_simulation_preset("bbbc006").replace(haze_probability=1.0,
                                                   near_focus_probability=0.5)
    params = sample_parameters(cfg, 1)
    assert params.pop("gain_adu_per_e") == pytest.approx(0.5353523650651548, rel=1e-12)
    assert params == {
        "preset": "bbbc006", "numerical_aperture": 0.5, "wavelength_nm": 620.0,
        "immersion_index": 1.0, "sample_index": None, "depth_um": 0.0, "pixel_size_um": 0.645,
        "defocus_nominal_um": 0.3213, "defocus_scale": 1.127, "defocus_um": 0.25,
        "photons_per_unit": 3079.28, "read_noise_e": 5.274, "offset_adu": 111.0,
        "bit_depth": 12, "full_scale_fraction": 0.4138, "intensity_scale": 1.0261,
        "intensity_gamma": 1.0172, "background": 0.01649,
        "haze_layers": [
            {"z_um": 9.5, "weight": 0.1402, "rot90": 1, "flip": True, "shift": [0.2623, 0.7504]},
            {"z_um": 9.75, "weight": 0.3942, "rot90": 1, "flip": False,
             "shift": [0.7248, 0.5412]},
        ],
        "content_sigma_px": 0.0,
        "source_percentiles": [0.5, 99.9],
    }  # fmt: skip
    pair = make_pair(_cells((64, 64), seed=3), cfg, 1)
    assert pair.psf.shape == (25, 25)
    np.testing.assert_allclose(
        [pair.blurred.sum(dtype=np.float64), pair.sharp.sum(dtype=np.float64),
         pair.blurred[10, 20], pair.sharp[40, 33], pair.psf.max()],
        [2049.7060037851334, 2049.1361737400293, 0.5677889585494995, 0.3221561014652252,
         0.5778178952433917],
        rtol=1e-5,
    )


def test_near_focus_share_draws_in_focus_pairs_and_keeps_other_draws():
    base = get_simulation_preset("bbbc006").replace(defocus_um_range=(2.0, 16.0))
    near = base.replace(near_focus_probability=0.3, near_focus_um_range=(0.0, 1.0))
    plain = [sample_parameters(base, s) for s in range(400)]
    mixed = [sample_parameters(near, s) for s in range(400)]
    nominal = np.array([abs(p["defocus_nominal_um"]) for p in mixed])
    share = float(np.mean(nominal <= 1.0))
    assert 0.22 < share < 0.38  # ~30 %, none of them in the plain 2-16 µm draw
    assert all(abs(p["defocus_nominal_um"]) >= 2.0 for p in plain)
    # The extra draw comes last: everything but the defocus is what the plain config draws.
    skip = {"defocus_um", "defocus_nominal_um"}
    assert all({k: v for k, v in a.items() if k not in skip}
               == {k: v for k, v in b.items() if k not in skip} for a, b in zip(plain, mixed))
    assert all(np.sign(a["defocus_nominal_um"]) == np.sign(b["defocus_nominal_um"])
               for a, b in zip(plain, mixed) if b["defocus_nominal_um"] != 0)
    with pytest.raises(ValueError, match="near_focus_probability"):
        base.replace(near_focus_probability=1.5)


def test_soft_content_share_smooths_the_specimen_and_keeps_other_draws():
    """A soft-specimen pair images a smoother source: its target has less fine detail than the
    plain pair's, with the same mean and the same microscope, and no other draw moves."""
    from scipy.ndimage import gaussian_filter

    base = get_simulation_preset("bbbc006")
    soft = base.replace(soft_content_probability=0.4, soft_content_sigma_px_range=(1.0, 2.0))
    plain = [sample_parameters(base, s) for s in range(300)]
    mixed = [sample_parameters(soft, s) for s in range(300)]
    sigmas = np.array([p["content_sigma_px"] for p in mixed])
    assert 0.3 < np.mean(sigmas > 0) < 0.5
    assert np.all((sigmas == 0) | ((sigmas >= 1.0) & (sigmas <= 2.0)))
    assert all(p["content_sigma_px"] == 0.0 for p in plain)
    skip = {"content_sigma_px"}
    assert all({k: v for k, v in a.items() if k not in skip}
               == {k: v for k, v in b.items() if k not in skip} for a, b in zip(plain, mixed))

    image = np.random.default_rng(5).random((96, 96)).astype(np.float32)  # pixel-fine detail
    params = sample_parameters(base, 4, defocus_um=0.0, defocus_scale=1.0)
    sharp = make_pair(image, params, 1).sharp
    smooth = make_pair(image, dict(params, content_sigma_px=1.5), 1).sharp
    detail = lambda a: float(np.std(a - gaussian_filter(a, 1.0)))  # noqa: E731
    assert detail(smooth) < 0.5 * detail(sharp)
    assert smooth.mean() == pytest.approx(sharp.mean(), rel=1e-3)
    with pytest.raises(ValueError, match="soft_content_probability"):
        base.replace(soft_content_probability=-0.1)


def test_target_keeps_noise_adds_the_inputs_own_noise_and_keeps_every_draw():
    """With ``target_keeps_noise`` the target is the clean target plus exactly the noise of
    this pair's input: the same blurred image, no other draw moves, and in focus the input
    minus the target is only the (noise-free) in-focus blur."""
    base = get_simulation_preset("bbbc006")
    keep = base.replace(target_keeps_noise=True)
    plain = [sample_parameters(base, s) for s in range(50)]
    kept = [sample_parameters(keep, s) for s in range(50)]
    assert all("target_keeps_noise" not in p for p in plain)  # earlier records unchanged
    assert all(p["target_keeps_noise"] is True for p in kept)
    assert all({**a, "target_keeps_noise": True} == b for a, b in zip(plain, kept))

    image = _cells()
    params = sample_parameters(base, 3, defocus_um=0.0, defocus_scale=1.0)
    clean = make_pair(image, params, 7)
    noisy = make_pair(image, dict(params, target_keeps_noise=True), 7)
    assert np.array_equal(noisy.blurred, clean.blurred)
    noise = noisy.sharp - clean.sharp
    assert float(np.std(noise)) > 1e-3  # the camera noise is really there
    # What the target gained is what the input carries beyond its expected (noise-free) blur,
    # here the mean of many noise draws of the same pair.
    expected = np.mean([make_pair(image, params, seed).blurred for seed in range(100)], axis=0)
    assert np.corrcoef(noise.ravel(), (clean.blurred - expected).ravel())[0, 1] > 0.95
    # so the input minus the target is the deterministic blur only, far smaller than the noise
    assert float(np.std(noisy.blurred - noisy.sharp)) < float(np.std(noise))
    with pytest.raises(ValueError, match="target_keeps_noise"):
        base.replace(target_keeps_noise="yes")


def test_target_in_focus_is_the_in_focus_image_and_with_kept_noise_the_input_itself():
    """``target_in_focus`` makes the target the specimen through the in-focus PSF: in focus and
    with the input's noise kept, the target *is* the input (a model learns identity there);
    out of focus it is the same in-focus image at any defocus."""
    base = get_simulation_preset("bbbc006").replace(target_in_focus=True)
    assert sample_parameters(base, 0)["target_in_focus"] is True
    image = _cells()
    params = sample_parameters(base, 3, defocus_um=0.0, defocus_scale=1.0)
    both = make_pair(image, dict(params, target_keeps_noise=True), 7)
    np.testing.assert_allclose(both.sharp, both.blurred, atol=1e-5)
    specimen = make_pair(image, dict(params, target_in_focus=False), 7).sharp
    far = make_pair(image, dict(params, defocus_um=8.0), 7)
    near = make_pair(image, params, 7)
    np.testing.assert_allclose(far.sharp, near.sharp, atol=1e-6)  # the same in-focus image
    detail = lambda a: float(np.abs(np.diff(a, axis=1)).mean())  # noqa: E731
    assert detail(near.sharp) < detail(specimen)  # softer than the specimen itself
    with pytest.raises(ValueError, match="target_in_focus"):
        base.replace(target_in_focus="on")


def test_target_noise_passband_keeps_all_noise_in_focus_and_less_the_further_out():
    """``target_noise_passband`` keeps the input's noise in the target only where the defocus
    passes texture as well as focus does: all of it in focus (target = input), a shrinking
    share with defocus, and none of the high-frequency noise far out of focus."""
    base = get_simulation_preset("bbbc006").replace(
        target_keeps_noise=True, target_in_focus=True, target_noise_passband=True
    )
    assert sample_parameters(base, 0)["target_noise_passband"] is True
    assert "target_noise_passband" not in sample_parameters(base.replace(
        target_noise_passband=False), 0)
    image = _cells()
    params = sample_parameters(base, 3, defocus_um=0.0, defocus_scale=1.0)
    focus = make_pair(image, params, 7)
    np.testing.assert_allclose(focus.sharp, focus.blurred, atol=1e-5)

    def kept_noise(defocus: float, passband: bool) -> np.ndarray:
        pair_params = dict(params, defocus_um=defocus, target_noise_passband=passband)
        noisy = make_pair(image, pair_params, 7)
        clean = make_pair(image, dict(pair_params, target_keeps_noise=False), 7)
        assert np.array_equal(noisy.blurred, clean.blurred)  # the input does not move
        return noisy.sharp - clean.sharp

    shares = [
        float(np.std(kept_noise(d, True)) / np.std(kept_noise(d, False))) for d in (1, 4, 16)
    ]
    assert 1.0 > shares[0] > shares[1] > shares[2]
    assert shares[2] < 0.1
    # what is kept is a low-passed copy of the same noise realisation, not new noise
    far, full = kept_noise(4.0, True), kept_noise(4.0, False)
    assert np.corrcoef(far.ravel(), full.ravel())[0, 1] > 0.1
    fy, fx = np.meshgrid(np.fft.fftfreq(far.shape[0]), np.fft.rfftfreq(far.shape[1]),
                         indexing="ij")
    high = np.hypot(fy, fx) > 0.25  # cycles per pixel

    def high_power(a: np.ndarray) -> float:
        return float((np.abs(np.fft.rfft2(a)) ** 2)[high].sum())

    assert high_power(far) < 0.01 * high_power(full)
    with pytest.raises(ValueError, match="target_keeps_noise too"):
        get_simulation_preset("bbbc006").replace(target_noise_passband=True)


def test_target_passband_blend_is_the_input_in_focus_and_nears_the_specimen_out_of_focus():
    """``target_passband_blend`` keeps the in-focus target (the input) in focus and moves the
    target towards the specimen itself the further out of focus the pair is."""
    base = get_simulation_preset("bbbc006")
    blend = base.replace(target_keeps_noise=True, target_in_focus=True,
                         target_noise_passband=True, target_passband_blend=True)
    assert sample_parameters(blend, 0)["target_passband_blend"] is True
    image = _cells()
    params = sample_parameters(blend, 3, defocus_um=0.0, defocus_scale=1.0)
    focus = make_pair(image, params, 7)
    np.testing.assert_allclose(focus.sharp, focus.blurred, atol=1e-5)

    def distance_to_specimen(defocus: float, blended: bool) -> float:
        pair_params = dict(params, defocus_um=defocus, target_passband_blend=blended)
        pair = make_pair(image, pair_params, 7)
        clean = dict(pair_params, target_keeps_noise=False, target_in_focus=False,
                     target_noise_passband=False, target_passband_blend=False)
        specimen = make_pair(image, clean, 7)
        assert np.array_equal(pair.blurred, specimen.blurred)  # the input does not move
        return float(np.sqrt(np.mean((pair.sharp - specimen.sharp) ** 2)))

    plain = [distance_to_specimen(d, False) for d in (2, 8)]
    blended = [distance_to_specimen(d, True) for d in (2, 8)]
    assert blended[0] < plain[0] and blended[1] < plain[1]
    assert blended[1] < blended[0]  # nearer the specimen the more the defocus erased
    assert blended[1] < 0.8 * plain[1]
    with pytest.raises(ValueError, match="target_in_focus and target_noise_passband"):
        base.replace(target_keeps_noise=True, target_noise_passband=True,
                     target_passband_blend=True)


def test_make_pair_shapes_types_psf_and_unpacking():
    image = _cells()
    pair = make_pair(image, "bbbc006", 0)
    assert isinstance(pair, SimulatedPair)
    blurred, sharp = pair
    assert blurred.shape == sharp.shape == image.shape
    assert blurred.dtype == sharp.dtype == np.float32
    assert pair.psf.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(pair.psf, defocus_psf(optics_from_params(pair.params)))
    assert json.loads(json.dumps(pair.params)) == pair.params
    lo, hi = np.percentile(image, [0.5, 99.9])
    assert pair.params["source_range"] == pytest.approx([lo, hi])


def test_make_pair_is_reproducible():
    image = _cells()
    a = make_pair(image, "bbbc006", 11)
    b = make_pair(image, "bbbc006", np.random.default_rng(11))
    c = make_pair(image, "bbbc006", 12)
    assert np.array_equal(a.blurred, b.blurred) and np.array_equal(a.sharp, b.sharp)
    assert a.params == b.params
    assert not np.array_equal(a.blurred, c.blurred)
    # Same parameters, different noise seed: same target, different noise.
    d = make_pair(image, a.params, 99)
    assert np.array_equal(d.sharp, a.sharp) and not np.array_equal(d.blurred, a.blurred)


def test_sharp_is_the_normalised_source_and_blurred_its_noisy_blur():
    image = _cells()
    cfg = _plain(
        photons_per_unit_range=(1e7, 1e7), read_noise_e_range=(0.0, 0.0), bit_depth_choices=(16,)
    )
    pair = make_pair(image, cfg, 3, defocus_um=8.0, defocus_scale=1.0)
    lo, hi = pair.params["source_range"]
    expected = np.maximum((image.astype(np.float64) - lo) / (hi - lo), 0)
    np.testing.assert_allclose(pair.sharp, expected, atol=1e-5)
    # Photon-rich camera: the blurred image is the blurred target up to tiny shot noise.
    np.testing.assert_allclose(pair.blurred, blur(expected, pair.psf), atol=2e-3)
    assert pair.params["defocus_um"] == 8.0


def test_flux_is_shared_and_blur_removes_detail():
    image = _cells((128, 128), seed=1)
    for seed in range(3):
        pair = make_pair(image, "bbbc006", seed, defocus_um=16.0)
        assert pair.blurred.mean() == pytest.approx(pair.sharp.mean(), rel=0.05, abs=0.01)
        grad_sharp = np.abs(np.diff(pair.sharp, axis=1)).mean()
        grad_blur = np.abs(np.diff(blur(pair.blurred, np.ones((3, 3)) / 9), axis=1)).mean()
        assert grad_blur < 0.5 * grad_sharp
        assert 0.5 < pair.sharp.max() < 1.5


def test_noise_level_follows_the_photon_budget():
    flat = np.full((64, 64), 1000, dtype=np.uint16)
    cfg = _plain(read_noise_e_range=(0.0, 0.0), bit_depth_choices=(16,))
    residual = {}
    for photons in (100.0, 10000.0):
        c = cfg.replace(photons_per_unit_range=(photons, photons))
        pair = make_pair(flat, c, 0, source_range=(0.0, 2000.0))
        np.testing.assert_allclose(pair.sharp, 0.5, atol=1e-6)
        residual[photons] = float(np.std(pair.blurred - pair.sharp))
        assert residual[photons] == pytest.approx(np.sqrt(0.5 / photons), rel=0.1)
    assert residual[100.0] > 5 * residual[10000.0]


def test_haze_adds_out_of_focus_light_to_both_images():
    image = _cells()
    clean = make_pair(image, _plain(), 4, defocus_um=8.0)
    hazy = make_pair(
        image, _plain(haze_probability=1.0, haze_layers_range=(2, 2)), 4, defocus_um=8.0
    )
    layers = hazy.params["haze_layers"]
    assert len(layers) == 2
    extra = sum(layer["weight"] for layer in layers) * clean.sharp.mean()
    assert hazy.sharp.mean() - clean.sharp.mean() == pytest.approx(extra, rel=0.1)
    assert hazy.blurred.mean() > clean.blurred.mean()


def test_make_pair_errors():
    with pytest.raises(ValueError, match="2-D"):
        make_pair(np.zeros((2, 8, 8)), "bbbc006", 0)
    with pytest.raises(TypeError, match="params_or_cfg"):
        make_pair(np.zeros((8, 8)), 3, 0)
    with pytest.raises(ValueError, match="simulation parameters lack"):
        make_pair(np.zeros((8, 8)), {"numerical_aperture": 0.5}, 0)
    with pytest.raises(ValueError, match="unknown simulation preset"):
        make_pair(np.zeros((8, 8)), "nope", 0)


# --------------------------------------------------------------------------------------------
# Writing pair folders and the CLI (need the project's _io module)


def test_write_pairs_layout_reproducibility_and_no_overwrite(tmp_path):
    read_image = pytest.importorskip("napari_mpt_deblur._io").read_image
    from napari_mpt_deblur.simulate import write_pairs

    sources = [_cells((80, 90), seed=s) for s in range(2)]
    names = write_pairs(sources, tmp_path / "a", 3, "bbbc006", 5, crop=(48, 64), save_psf=True)
    assert names == ["pair_00000", "pair_00001", "pair_00002"]
    for name in names:
        blurred = read_image(tmp_path / "a" / "blurred" / f"{name}.tif")[0]
        sharp = read_image(tmp_path / "a" / "sharp" / f"{name}.tif")[0]
        assert blurred.shape == sharp.shape == (48, 64)
        params = json.loads((tmp_path / "a" / "params" / f"{name}.json").read_text())
        assert params["crop_box_yxhw"][2:] == [48, 64]
        assert (tmp_path / "a" / "psf" / f"{name}.tif").exists()
    assert json.loads((tmp_path / "a" / "simulation.json").read_text())["name"] == "bbbc006"
    write_pairs(sources, tmp_path / "b", 3, "bbbc006", 5, crop=(48, 64))
    for name in names:
        a = read_image(tmp_path / "a" / "blurred" / f"{name}.tif")[0]
        b = read_image(tmp_path / "b" / "blurred" / f"{name}.tif")[0]
        assert np.array_equal(a, b)
    with pytest.raises(FileExistsError):
        write_pairs(sources, tmp_path / "a", 1, "bbbc006", 5)
    # More pairs in the same folder under new names are fine.
    assert write_pairs(sources, tmp_path / "a", 1, "bbbc006", 6, start_index=3) == ["pair_00003"]
    with pytest.raises(ValueError, match="larger than source"):
        write_pairs(sources, tmp_path / "c", 1, "bbbc006", 0, crop=200)
    with pytest.raises(FileNotFoundError):
        write_pairs(tmp_path / "missing.tif", tmp_path / "d", 1, "bbbc006", 0)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_cli_builds_config_from_preset_and_overrides():
    from napari_mpt_deblur._commands import simulate as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(
        [
            "in.tif",
            "-o",
            "out",
            "--na",
            "0.3:0.5",
            "--wavelength-nm",
            "510",
            "--defocus-um",
            "4:12",
            "--crop",
            "64x32",
        ]
    )
    cfg = command.build_config(args)
    assert cfg.numerical_aperture_range == (0.3, 0.5)
    assert cfg.wavelength_nm_choices == (510.0,)
    assert cfg.defocus_um_range == (4.0, 12.0)
    assert cfg.pixel_size_um == 0.645  # from the bbbc006 preset
    assert args.crop == (64, 32)
    args = parser.parse_args(["in.tif", "-o", "out", "--preset", "oil-1.2", "--defocus-um", "-2"])
    assert args.defocus_um == -2.0 and command.build_config(args).name == "oil-1.2"
    with pytest.raises(SystemExit):
        parser.parse_args(["in.tif", "-o", "out", "--na", "0.6:0.4"])


def test_cli_run_writes_pairs(tmp_path):
    write_image = pytest.importorskip("napari_mpt_deblur._io").write_image
    from napari_mpt_deblur._commands import simulate as command

    src = tmp_path / "src"
    src.mkdir()
    write_image(src / "cells.tif", _cells((64, 64)))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [str(src), "-o", str(out), "--n", "2", "--seed", "1", "--crop", "32", "--defocus-um", "8"]
    )
    assert command.run(args) == 0
    assert sorted(p.name for p in (out / "blurred").iterdir()) == [
        "pair_00000.tif",
        "pair_00001.tif",
    ]
    params = json.loads((out / "params" / "pair_00000.json").read_text())
    assert params["defocus_nominal_um"] == 8.0
    assert command.run(args) == 1  # refuses to overwrite

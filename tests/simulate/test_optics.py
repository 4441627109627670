"""Physics and behaviour of the pupil-function defocus PSF and the FFT convolution."""

from __future__ import annotations

import itertools
import math
import time
import warnings

import numpy as np
import pytest
from scipy import ndimage

from napari_mpt_deblur.simulate.optics import (
    OpticsConfig,
    _compute_psf,
    blur,
    clear_psf_cache,
    defocus_psf,
    depth_of_field_um,
    geometric_blur_radius_um,
    psf_cache_info,
    psf_stack,
)


def _radii_um(psf: np.ndarray, pixel_size_um: float) -> np.ndarray:
    c = psf.shape[0] // 2
    y, x = np.indices(psf.shape)
    return np.hypot(y - c, x - c) * pixel_size_um


def _encircled_radius_um(psf: np.ndarray, pixel_size_um: float, fraction: float) -> float:
    r = _radii_um(psf, pixel_size_um).ravel()
    order = np.argsort(r)
    cumulative = np.cumsum(psf.ravel()[order])
    return float(r[order][np.searchsorted(cumulative, fraction * cumulative[-1])])


def _first_minimum_um(psf: np.ndarray, pixel_size_um: float, search_um: float) -> float:
    """Sub-pixel position of the first minimum of the azimuthally averaged profile."""
    r = _radii_um(psf, pixel_size_um)
    bins = np.round(r / pixel_size_um).astype(int)
    profile = np.bincount(bins.ravel(), psf.ravel()) / np.bincount(bins.ravel())
    stop = int(search_um / pixel_size_um)
    i = int(np.argmin(profile[1:stop])) + 1
    a, b, c = profile[i - 1], profile[i], profile[i + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (i + offset) * pixel_size_um


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("na", "wavelength_nm"), [(0.5, 500.0), (0.8, 620.0)])
def test_in_focus_first_dark_ring_at_airy_radius(na, wavelength_nm, dtype):
    cfg = OpticsConfig(
        numerical_aperture=na, wavelength_nm=wavelength_nm, pixel_size_um=0.04, oversample=1
    )
    psf = defocus_psf(cfg, dtype=dtype)
    assert psf.dtype == dtype
    expected = 0.61 * wavelength_nm * 1e-3 / na
    measured = _first_minimum_um(psf.astype(np.float64), 0.04, 1.5 * expected)
    assert measured == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("defocus_um", [0.0, 3.0, -12.0, 30.0])
def test_psf_is_unit_sum_odd_centred_and_non_negative(defocus_um):
    psf = defocus_psf(
        OpticsConfig(numerical_aperture=0.6, wavelength_nm=460.0, defocus_um=defocus_um)
    )
    k = psf.shape[0]
    assert psf.shape == (k, k) and k % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf.min() >= 0
    # Radial symmetry of the circular pupil: the PSF equals its transpose and flips.
    np.testing.assert_allclose(psf, psf.T, atol=1e-12)
    np.testing.assert_allclose(psf, psf[::-1, ::-1], atol=1e-12)
    # Centre of mass on the central pixel.
    y, x = np.indices(psf.shape)
    assert (psf * y).sum() == pytest.approx(k // 2, abs=1e-6)
    assert (psf * x).sum() == pytest.approx(k // 2, abs=1e-6)


def test_auto_size_contains_the_geometric_disc():
    for defocus in (0.0, 8.0, 32.0):
        cfg = OpticsConfig(numerical_aperture=0.5, wavelength_nm=620.0, defocus_um=defocus)
        psf = defocus_psf(cfg)
        half_um = (psf.shape[0] // 2) * cfg.pixel_size_um
        assert half_um > geometric_blur_radius_um(cfg) + 0.61 * 0.62 / 0.5


@pytest.mark.parametrize("na", [0.4, 0.6])
def test_defocus_blur_grows_like_the_geometric_cone(na):
    """Encircled-energy radius grows with slope tan(asin(sqrt(f)·NA/n)) (uniform pupil)."""
    fraction = 0.9
    slope = math.tan(math.asin(math.sqrt(fraction) * na / 1.0))
    radii = []
    for z in (10.0, 20.0):
        cfg = OpticsConfig(
            numerical_aperture=na, wavelength_nm=500.0, pixel_size_um=0.25, defocus_um=z
        )
        radii.append(_encircled_radius_um(defocus_psf(cfg), 0.25, fraction))
    assert (radii[1] - radii[0]) / 10.0 == pytest.approx(slope, rel=0.12)
    assert radii[1] == pytest.approx(20.0 * slope, rel=0.1)
    # Almost all energy lies within the geometric disc plus a diffraction margin.
    cfg = OpticsConfig(
        numerical_aperture=na, wavelength_nm=500.0, pixel_size_um=0.25, defocus_um=20.0
    )
    r_all = _encircled_radius_um(defocus_psf(cfg), 0.25, 0.99)
    assert geometric_blur_radius_um(cfg) < r_all < 1.6 * geometric_blur_radius_um(cfg)


def test_depth_of_field_is_lambda_n_over_na_squared_with_keyword_arguments_only():
    dof = depth_of_field_um(numerical_aperture=1.2, wavelength_nm=550.0, immersion_index=1.515)
    assert dof == pytest.approx(0.55 * 1.515 / 1.2**2)
    assert depth_of_field_um(numerical_aperture=0.5, wavelength_nm=500.0) == pytest.approx(2.0)
    # 1 µm at NA 1.4 oil blurs about as much as 5 µm at NA 0.5 dry (λ·n/NA²: 4λ vs 0.77λ)
    ratio = depth_of_field_um(numerical_aperture=0.5, wavelength_nm=520.0) / depth_of_field_um(
        numerical_aperture=1.4, wavelength_nm=520.0, immersion_index=1.515)
    assert 5.0 < ratio < 5.3
    with pytest.raises(TypeError):
        depth_of_field_um(1.2, 550.0, 1.515)  # positional: the order that was mixed up
    with pytest.raises(ValueError, match="numerical_aperture must be in"):
        depth_of_field_um(numerical_aperture=1.2, wavelength_nm=550.0)  # NA 1.2 needs oil


def test_old_depth_of_field_names_keep_their_order_and_warn_and_callers_use_the_new_one():
    from napari_mpt_deblur.simulate import get_simulation_preset
    from napari_mpt_deblur.train import optics_domain, reblur

    dof = depth_of_field_um(numerical_aperture=1.2, wavelength_nm=550.0, immersion_index=1.515)
    with pytest.warns(DeprecationWarning, match="reblur.depth_of_field_um is deprecated") as w:
        assert reblur.depth_of_field_um(1.2, 550.0, 1.515) == dof  # NA first
    assert w[0].filename == __file__  # the warning points at the caller
    with pytest.warns(DeprecationWarning, match="optics_domain.depth_of_field_um is deprec"):
        assert optics_domain.depth_of_field_um(550.0, 1.2, 1.515) == dof  # wavelength first
    with pytest.warns(DeprecationWarning) as w:
        assert optics_domain.depth_of_field_um(550.0, 1.2, refractive_index=1.515) == dof
    assert any("'refractive_index' is deprecated" in str(r.message) for r in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        bank = reblur.build_reblur_bank(pixel_size_um=0.1, numerical_aperture=1.2,
                                        wavelength_nm=550.0, immersion_index=1.515,
                                        defocus_dof=(2.0,))
        oil = optics_domain.simulation_for_optics(
            get_simulation_preset("bbbc006"), pixel_size_um=0.1, numerical_aperture=1.2,
            wavelength_nm=550.0, immersion_index=1.515)
    assert bank.defocus_um == pytest.approx([2.0 * dof])
    assert oil.defocus_um_range[1] < 12.0


def test_wavelength_in_um_is_one_property_and_not_a_config_field():
    cfg = OpticsConfig(wavelength_nm=520.0, numerical_aperture=0.5, pixel_size_um=0.65)
    assert cfg.wavelength_um == pytest.approx(0.52)
    assert "wavelength_um" not in cfg.to_dict()  # configs, checkpoints and caches unchanged
    # the pupil radius NA/λ in the PSF's fine grid is in that unit: doubling λ halves the
    # sub-samples a pixel needs before the pupil aliases
    from napari_mpt_deblur.simulate.optics import _min_oversample

    longer = OpticsConfig(wavelength_nm=1040.0, numerical_aperture=0.5, pixel_size_um=0.65)
    assert _min_oversample(cfg) == pytest.approx(2.0 * 0.65 * 0.5 / 0.52)
    assert _min_oversample(longer) == pytest.approx(_min_oversample(cfg) / 2)


def test_peak_falls_monotonically_with_defocus():
    peaks = [
        defocus_psf(OpticsConfig(numerical_aperture=0.5, defocus_um=z)).max()
        for z in (0, 4, 8, 16, 32)
    ]
    assert all(a > b for a, b in itertools.pairwise(peaks))


def test_symmetric_in_defocus_sign_without_mismatch():
    # The public function shares one cache entry for ±z; check the physics that justifies it
    # on the uncached computation.
    common = dict(numerical_aperture=0.55, wavelength_nm=620.0, oversample=3, size_px=51)
    plus = _compute_psf(OpticsConfig(defocus_um=9.0, **common))
    minus = _compute_psf(OpticsConfig(defocus_um=-9.0, **common))
    assert np.abs(plus - defocus_psf(OpticsConfig(defocus_um=5.0, **common))).sum() > 0.1
    np.testing.assert_allclose(plus, minus, atol=1e-12)
    np.testing.assert_allclose(defocus_psf(OpticsConfig(defocus_um=-9.0, **common)), plus)


def test_index_mismatch_breaks_the_symmetry():
    common = dict(
        numerical_aperture=1.2,
        wavelength_nm=520.0,
        immersion_index=1.515,
        sample_index=1.33,
        depth_um=10.0,
        pixel_size_um=0.1,
        size_px=61,
    )
    plus = defocus_psf(OpticsConfig(defocus_um=1.0, **common))
    minus = defocus_psf(OpticsConfig(defocus_um=-1.0, **common))
    assert np.abs(plus - minus).sum() > 0.05
    assert plus.sum() == pytest.approx(1.0)
    matched = {**common, "sample_index": 1.515, "oversample": 3}
    np.testing.assert_allclose(
        _compute_psf(OpticsConfig(defocus_um=1.0, **matched)),
        _compute_psf(OpticsConfig(defocus_um=-1.0, **matched)),
        atol=1e-12,
    )


def test_cache_hits_and_returns_independent_copies():
    clear_psf_cache()
    cfg = OpticsConfig(numerical_aperture=0.45, wavelength_nm=600.0, defocus_um=6.25)
    first = defocus_psf(cfg)
    before = psf_cache_info()
    first[:] = 0  # must not corrupt the cache
    second = defocus_psf(cfg)
    after = psf_cache_info()
    assert after.hits == before.hits + 1
    assert second.sum() == pytest.approx(1.0)


def test_psf_is_cheap():
    clear_psf_cache()
    worst = OpticsConfig(numerical_aperture=0.6, wavelength_nm=460.0, defocus_um=41.6)
    start = time.perf_counter()
    defocus_psf(worst)
    # ~15 ms on one core; generous bound for a loaded 2-core machine.
    assert time.perf_counter() - start < 0.5


def test_psf_stack_shares_one_grid():
    cfg = OpticsConfig(numerical_aperture=0.5, wavelength_nm=520.0)
    z = [-8.0, 0.0, 2.0, 16.0]
    stack = psf_stack(cfg, z)
    k = stack.shape[1]
    assert stack.shape == (4, k, k)
    assert (
        k
        == defocus_psf(
            OpticsConfig(numerical_aperture=0.5, wavelength_nm=520.0, defocus_um=16.0)
        ).shape[0]
    )
    np.testing.assert_allclose(stack.sum(axis=(1, 2)), 1.0)
    single = defocus_psf(
        OpticsConfig(numerical_aperture=0.5, wavelength_nm=520.0, defocus_um=2.0, size_px=k)
    )
    np.testing.assert_allclose(stack[2], single)
    with pytest.raises(ValueError, match="z_um_values"):
        psf_stack(cfg, [])


def test_config_round_trip_and_validation():
    cfg = OpticsConfig(numerical_aperture=0.7, wavelength_nm=510.0, defocus_um=-3.0, size_px=31)
    assert OpticsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="numerical_aperture must be below immersion_index"):
        OpticsConfig(numerical_aperture=1.1)
    with pytest.raises(ValueError, match="size_px"):
        OpticsConfig(size_px=32)
    with pytest.raises(ValueError, match="oversample=1 is too coarse"):
        OpticsConfig(numerical_aperture=0.6, wavelength_nm=460.0, oversample=1)
    with pytest.raises(ValueError, match="wavelength_nm"):
        OpticsConfig(wavelength_nm=-5.0)
    with pytest.raises(TypeError, match="defocus_um"):
        OpticsConfig(defocus_um="8")
    with pytest.raises(ValueError, match="unknown OpticsConfig keys"):
        OpticsConfig.from_dict({"na": 0.5})
    with pytest.raises(TypeError, match="OpticsConfig"):
        defocus_psf({"numerical_aperture": 0.5})


# --------------------------------------------------------------------------------------------
# blur


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_blur_matches_direct_convolution_with_mirrored_borders(dtype):
    rng = np.random.default_rng(3)
    image = (rng.random((23, 30)) * 1000).astype(dtype)
    psf = rng.random((7, 5))  # asymmetric: catches flipped or shifted kernels
    psf /= psf.sum()
    out = blur(image, psf)
    expected_dtype = np.float32 if dtype == np.float32 else np.float64
    assert out.dtype == expected_dtype and out.shape == image.shape
    # scipy's 'reflect' repeats the edge sample, like the simulator's mirror padding.
    expected = ndimage.convolve(image.astype(np.float64), psf, mode="reflect")
    tol = 1e-3 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_blur_preserves_flux_constants_and_handles_batches():
    psf = defocus_psf(OpticsConfig(numerical_aperture=0.5, defocus_um=8.0))
    point = np.zeros((80, 80))
    point[40, 40] = 5.0
    out = blur(point, psf)
    assert out.sum() == pytest.approx(5.0, rel=1e-9)
    assert out.max() < 5.0 / 10
    flat = np.full((16, 20), 3.0, dtype=np.float32)  # PSF larger than the image
    np.testing.assert_allclose(blur(flat, psf), 3.0, rtol=1e-5)
    stack = np.stack([point, 2 * point])
    batched = blur(stack, psf)
    np.testing.assert_allclose(batched[1], 2 * out, rtol=1e-9, atol=1e-15)


def test_blur_rejects_bad_input():
    with pytest.raises(ValueError, match="odd"):
        blur(np.zeros((8, 8)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        blur(np.zeros(8), np.ones((3, 3)))
    with pytest.raises(TypeError, match="dtype"):
        blur(np.zeros((8, 8), dtype=complex), np.ones((3, 3)))

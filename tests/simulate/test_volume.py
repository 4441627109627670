"""3-D widefield imaging (sum of defocused planes) and pseudo-volumes from 2-D images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mpt_deblur.simulate.optics import OpticsConfig, blur, defocus_psf
from napari_mpt_deblur.simulate.volume import (
    apply_haze_layer,
    pseudo_volume,
    sample_haze_layers,
    widefield_image,
    widefield_stack,
)

OPTICS = OpticsConfig(numerical_aperture=0.5, wavelength_nm=520.0, pixel_size_um=0.645)


def _beads(shape=(48, 48), positions=((24, 24),), value=1.0):
    out = np.zeros(shape)
    for y, x in positions:
        out[y, x] = value
    return out


def test_each_plane_is_blurred_by_its_own_defocus():
    plane_a = _beads(positions=((20, 20),))
    plane_b = _beads(positions=((28, 30),), value=2.0)
    volume = np.stack([plane_a, plane_b])
    image = widefield_image(volume, OPTICS, focus_um=2.0, z_um=[2.0, 8.0])
    psf_b = defocus_psf(OpticsConfig(**{**OPTICS.to_dict(), "defocus_um": 6.0}))
    # All planes share the grid of the widest PSF.
    psf_a = defocus_psf(OpticsConfig(**{**OPTICS.to_dict(), "size_px": psf_b.shape[0]}))
    expected = blur(plane_a, psf_a) + blur(plane_b, psf_b)
    np.testing.assert_allclose(image, expected, atol=1e-10)


def test_flux_is_conserved_and_focus_selects_the_sharp_plane():
    volume = np.stack([_beads(positions=((24, 24),)) for _ in range(5)])
    stack = widefield_stack(
        volume[:1].repeat(1, 0), OPTICS, focus_um=[0.0, 4.0, 8.0], z_step_um=2.0
    )
    assert stack.shape == (3, 48, 48)
    np.testing.assert_allclose(stack.sum(axis=(1, 2)), 1.0, rtol=1e-9)
    peaks = stack[:, 24, 24]
    assert peaks[0] > peaks[1] > peaks[2]  # the bead is at z = 0
    full = widefield_stack(volume, OPTICS, focus_um=[0.0, 4.0], z_step_um=2.0)
    np.testing.assert_allclose(full.sum(axis=(1, 2)), 5.0, rtol=1e-9)
    # Focusing on the middle plane gives the highest peak (haze from the others is spread).
    assert full[1, 24, 24] > full[0, 24, 24]


def test_linear_in_the_object():
    rng = np.random.default_rng(0)
    a = rng.random((3, 24, 24))
    b = rng.random((3, 24, 24))
    kwargs = dict(focus_um=1.0, z_step_um=3.0)
    combined = widefield_image(a + 2 * b, OPTICS, **kwargs)
    separate = widefield_image(a, OPTICS, **kwargs) + 2 * widefield_image(b, OPTICS, **kwargs)
    np.testing.assert_allclose(combined, separate, rtol=1e-9)
    assert widefield_image(a.astype(np.float32), OPTICS, **kwargs).dtype == np.float32


def test_plane_position_errors():
    volume = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        widefield_image(volume, OPTICS, z_step_um=1.0, z_um=[0, 1])
    with pytest.raises(ValueError, match="one position per plane"):
        widefield_image(volume, OPTICS, z_um=[0.0])
    with pytest.raises(ValueError, match="3 dimensions"):
        widefield_image(np.zeros((8, 8)), OPTICS, z_step_um=1.0)


def test_haze_layers_are_seeded_and_serialisable():
    import json

    a = sample_haze_layers(3, n_layers=2, distance_um_range=(4.0, 8.0), weight_range=(0.2, 0.3))
    b = sample_haze_layers(
        np.random.default_rng(3), n_layers=2, distance_um_range=(4.0, 8.0), weight_range=(0.2, 0.3)
    )
    c = sample_haze_layers(4, n_layers=2, distance_um_range=(4.0, 8.0), weight_range=(0.2, 0.3))
    assert a == b and a != c
    assert json.loads(json.dumps(a)) == a
    for layer in a:
        assert 4.0 <= abs(layer["z_um"]) <= 8.0 and 0.2 <= layer["weight"] <= 0.3


def test_pseudo_volume_stacks_transformed_copies():
    image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    layers = [
        {"z_um": 5.0, "weight": 0.5, "rot90": 1, "flip": False, "shift": [0.0, 0.0]},
        {"z_um": -7.0, "weight": 0.25, "rot90": 0, "flip": True, "shift": [0.5, 0.0]},
    ]
    volume, z = pseudo_volume(image, layers)
    assert volume.shape == (3, 6, 8) and volume.dtype == np.float32
    np.testing.assert_array_equal(z, [0.0, 5.0, -7.0])
    np.testing.assert_array_equal(volume[0], image)
    # Non-square: a quarter turn becomes a half turn so the shape is kept.
    np.testing.assert_allclose(volume[1], 0.5 * image[::-1, ::-1])
    np.testing.assert_allclose(volume[2], 0.25 * np.roll(image[:, ::-1], 3, axis=0))
    square = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(apply_haze_layer(square, layers[0]), 0.5 * np.rot90(square))

"""Optics conditioning: the optics vector, the FiLM, and that it changes nothing until trained."""

from __future__ import annotations

import math

import pytest
import torch

from napari_mpt_deblur import create_model
from napari_mpt_deblur.models.checkpoint import read_header, save_checkpoint
from napari_mpt_deblur.models.conditioning import (
    BLIND_OPTICS,
    DEFAULT_WAVELENGTH_NM,
    as_optics_hints,
    hints_vector,
    immersion_for_na,
    optics_batch,
    optics_vector,
)
from napari_mpt_deblur.models.info import optics_conditioned
from napari_mpt_deblur.models.mpt import MPT, MPTConfig, add_optics_conditioning
from napari_mpt_deblur.models.resolve import load_model
from napari_mpt_deblur.simulate.optics import OpticsHints

# ---------------------------------------------------------------------------- optics vector


def test_vector_is_the_psf_scale_in_pixels_the_aperture_sine_and_known():
    log_scale, sine, known = optics_vector(0.645, 0.5, 520.0, 1.0)
    assert log_scale == pytest.approx(math.log(0.52 / (2 * 0.5 * 0.645)))
    assert sine == pytest.approx(0.5) and known == 1.0
    log_scale, sine, known = optics_vector(0.1, 1.4, 600.0, 1.515)
    assert log_scale == pytest.approx(math.log(0.6 / (2 * 1.4 * 0.1)))
    assert sine == pytest.approx(1.4 / 1.515)


def test_same_psf_in_pixels_gives_the_same_vector():
    # twice the pixel size at twice the wavelength: the same PSF in pixel units
    assert optics_vector(0.5, 0.8, 500.0, 1.0) == pytest.approx(
        optics_vector(1.0, 0.8, 1000.0, 1.0))


@pytest.mark.parametrize("missing", ["pixel_size_um", "numerical_aperture"])
def test_without_pixel_size_or_na_the_optics_are_blind(missing):
    given = dict(pixel_size_um=0.645, numerical_aperture=0.5, wavelength_nm=520.0,
                 immersion_index=1.0)
    given[missing] = None
    assert optics_vector(**given) == BLIND_OPTICS
    assert hints_vector(None) == BLIND_OPTICS
    assert BLIND_OPTICS[2] == 0.0  # the "known" flag


def test_unknown_wavelength_and_immersion_take_documented_defaults():
    assert optics_vector(0.645, 0.5) == pytest.approx(
        optics_vector(0.645, 0.5, DEFAULT_WAVELENGTH_NM, 1.0))
    assert optics_vector(0.1, 1.4) == pytest.approx(optics_vector(0.1, 1.4, 520.0, 1.515))
    assert [immersion_for_na(na) for na in (0.5, 1.2, 1.4)] == [1.0, 1.333, 1.515]


def test_bad_optics_are_refused_with_their_names():
    with pytest.raises(ValueError, match="numerical_aperture"):
        optics_vector(0.645, -0.5)
    with pytest.raises(ValueError, match="immersion_index"):
        optics_vector(0.1, 1.4, 520.0, 1.0)
    with pytest.raises(ValueError, match="unknown OpticsHints keys"):
        as_optics_hints({"pixel_size": 0.5})
    with pytest.raises(TypeError, match="OpticsHints"):
        as_optics_hints(0.5)


def test_hints_mappings_and_simulation_parameters_give_the_same_rows():
    hints = OpticsHints(pixel_size_um=0.645, numerical_aperture=0.5, wavelength_nm=520.0,
                        immersion_index=1.0)
    params = {**hints.__dict__, "defocus_um": 4.0, "preset": "bbbc006"}  # simulation params
    rows = optics_batch([hints, params, None, {"pixel_size_um": 0.645}])
    assert rows.shape == (4, 3) and rows.dtype == torch.float32
    torch.testing.assert_close(rows[0], rows[1])
    assert rows[2].tolist() == list(BLIND_OPTICS) == rows[3].tolist()


# ---------------------------------------------------------------------------- the network


def _x(n=2, size=128, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_unconditioned_config_and_state_dict_are_unchanged():
    plain = create_model("mpt-test")
    assert "optics_conditioning" not in plain.config.to_dict()  # headers stay as they were
    assert not optics_conditioned(plain) and not any("optics" in k for k in plain.state_dict())
    conditioned = create_model("mpt-test", optics_conditioning=True)
    assert conditioned.config.to_dict()["optics_conditioning"] is True
    extra = set(conditioned.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("optics_film.") for k in extra)
    assert list(conditioned.state_dict())[: len(plain.state_dict())] == list(plain.state_dict())
    with pytest.raises(ValueError, match="optics_conditioning"):
        MPTConfig(optics_conditioning="yes")


@pytest.fixture(scope="module")
def bundled_pair():
    """A bundled blind model (mpt-tiny-wide; the default is conditioned itself since stage 23)
    and its conditioned copy (FiLM at zero)."""
    plain = load_model("mpt_tiny.defocus_wide", device="cpu")
    return plain, add_optics_conditioning(plain)


def test_conditioned_copy_of_the_bundled_weights_gives_the_same_output(bundled_pair):
    plain, conditioned = bundled_pair
    assert optics_conditioned(conditioned) and conditioned.info.optics_conditioned
    assert conditioned.info.lineage[-1] == "mpt_tiny.defocus_wide (+ optics conditioning)"
    assert conditioned.info.key is None and conditioned.info.sha256 is None
    assert plain.info.key == "mpt_tiny.defocus_wide"  # the start model is left as it was
    x = _x()
    optics = torch.tensor([optics_vector(0.645, 0.5, 520.0, 1.0), optics_vector(0.1, 1.4)])
    with torch.inference_mode():
        ref = plain(x)
        for given in (None, optics, optics[0]):
            assert (conditioned(x, optics=given) - ref).abs().max().item() <= 1e-6


def test_conditioned_copy_is_exact_under_bf16_autocast(bundled_pair):
    plain, conditioned = bundled_pair
    x = _x(1)
    optics = torch.tensor([optics_vector(0.1, 1.4)])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = plain(x), conditioned(x, optics=optics)
    assert (out.float() - ref.float()).abs().max().item() <= 1e-6


def test_film_trains_and_then_the_optics_change_the_output():
    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned")
    x = _x(2)
    optics = torch.tensor([optics_vector(0.645, 0.5), optics_vector(0.1, 1.4)])
    net(x, optics=optics).square().mean().backward()
    last = net.optics_film.mlp[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        last.weight.normal_(std=0.1)
        same = net(x[:1].expand(2, -1, -1, -1), optics=optics)
        blind = net(x[:1])
        explicit_blind = net(x[:1], optics=torch.tensor(BLIND_OPTICS))
    assert (same[0] - same[1]).abs().max() > 1e-4  # one image, two microscopes: two outputs
    assert (explicit_blind - blind).abs().max() <= 1e-6  # None means the blind vector


def test_bad_optics_shape_is_refused():
    net = create_model("mpt-test", optics_conditioning=True)
    with pytest.raises(ValueError, match=r"optics must be \(2, 3\)"):
        net(_x(2), optics=torch.zeros(3, 3))


def test_conditioned_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned").eval()
    with torch.no_grad():
        net.optics_film.mlp[-1].weight.normal_(std=0.1)
    path = save_checkpoint(tmp_path / "c.safetensors", net, metadata={"name": "conditioned"})
    assert read_header(path)["config"]["optics_conditioning"] is True
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, MPT) and loaded.info.optics_conditioned
    optics = torch.tensor([optics_vector(0.1, 1.4)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(1), optics=optics), net(_x(1), optics=optics))


def test_add_optics_conditioning_refuses_other_networks():
    with pytest.raises(TypeError, match="MPT"):
        add_optics_conditioning(torch.nn.Conv2d(1, 1, 3))
    conditioned = create_model("mpt-test", optics_conditioning=True)
    assert add_optics_conditioning(conditioned) is conditioned



def test_assume_optics_binds_the_vector_for_calls_without_optics_and_unbinds_it():
    from napari_mpt_deblur.models.conditioning import assume_optics

    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned").eval()
    with torch.no_grad():
        net.optics_film.mlp[-1].weight.normal_(std=0.1)
    oil = {"pixel_size_um": 0.1, "numerical_aperture": 1.4}
    x = _x(1)
    with torch.no_grad():
        told = net(x, optics=torch.tensor([optics_vector(0.1, 1.4)]))
        blind = net(x)
        with assume_optics(net, oil) as vector:
            assumed = net(x)
            with assume_optics(net, None):  # blocks nest; unknown optics mean blind
                inner = net(x)
            after_inner = net(x)
        after = net(x)
    assert vector == optics_vector(0.1, 1.4)
    assert (told - blind).abs().max() > 1e-4  # the vector matters for this FiLM
    torch.testing.assert_close(assumed, told)
    torch.testing.assert_close(after_inner, told)
    torch.testing.assert_close(inner, blind)
    torch.testing.assert_close(after, blind)
    plain = create_model("mpt-test", routing="aligned")
    with assume_optics(plain, oil):  # an unconditioned network is left as it is
        assert not hasattr(plain, "assumed_optics")
    assert "assumed_optics" not in "".join(net.state_dict())

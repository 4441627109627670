"""The engine's ``optics`` argument: every tile of a conditioned model gets it; others ignore it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mpt_deblur import create_model, deblur
from napari_mpt_deblur.engine.lazy import deblur_dask
from napari_mpt_deblur.engine.predict import DeblurReport
from napari_mpt_deblur.models.conditioning import BLIND_OPTICS, optics_vector
from napari_mpt_deblur.models.info import ModelInfo
from napari_mpt_deblur.simulate.optics import OpticsHints

OIL = OpticsHints(pixel_size_um=0.1, numerical_aperture=1.4, wavelength_nm=600.0,
                  immersion_index=1.515)


class Spy(torch.nn.Module):
    """Identity network that records the optics each forward gets."""

    size_multiple = 128
    in_channels = 1

    def __init__(self, conditioned: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.info = ModelInfo(name="spy", arch="spy",
                              config={"optics_conditioning": True} if conditioned else {})
        self.seen: list[tuple[float, ...] | None] = []

    def forward(self, x, **kwargs):
        optics = kwargs.get("optics")
        self.seen.append(None if optics is None else tuple(optics[0].tolist()))
        if optics is not None:
            assert optics.shape == (x.shape[0], 3)
        return x * self.weight


class Plain(Spy):
    """An unconditioned network whose forward takes no optics at all (a user's own module)."""

    def forward(self, x):
        self.seen.append(None)
        return x * self.weight


def _image(shape=(300, 280), seed=0):
    return (np.random.default_rng(seed).random(shape) * 1000).astype(np.float32)


def test_every_tile_plane_and_view_of_a_conditioned_model_gets_the_optics():
    spy = Spy(conditioned=True)
    report = DeblurReport()
    deblur(_image((2, 300, 280)), spy, axes="ZYX", device="cpu", tile=128, ensemble=2,
           optics=OIL, report=report)
    assert report.n_tiles > 2 and len(spy.seen) == 2 * report.n_tiles  # two views per tile
    expected = pytest.approx(optics_vector(0.1, 1.4, 600.0, 1.515), abs=1e-6)
    assert all(seen == expected for seen in spy.seen)
    assert report.optics_used and report.optics == {
        "pixel_size_um": 0.1, "numerical_aperture": 1.4, "wavelength_nm": 600.0,
        "immersion_index": 1.515}
    assert report.to_dict()["optics_used"] is True


@pytest.mark.parametrize("optics", [None, {"pixel_size_um": 0.645}, {}])
def test_unknown_optics_run_a_conditioned_model_blind(optics):
    spy = Spy(conditioned=True)
    report = DeblurReport()
    deblur(_image(), spy, device="cpu", optics=optics, report=report)
    assert spy.seen == [BLIND_OPTICS]
    assert not report.optics_used


def test_an_unconditioned_model_ignores_the_optics_and_says_so(caplog):
    plain = Plain(conditioned=False)
    report = DeblurReport()
    image = _image()
    with caplog.at_level("INFO", logger="napari_mpt_deblur.engine.predict"):
        out = deblur(image, plain, device="cpu", optics=OIL, report=report)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-3)
    assert plain.seen == [None] and not report.optics_used
    assert report.optics["numerical_aperture"] == 1.4  # what was given is still recorded
    assert "not optics-conditioned" in caplog.text


def test_mapping_and_hints_are_the_same_optics_and_bad_ones_are_refused():
    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned").eval()
    with torch.no_grad():
        net.optics_film.mlp[-1].weight.normal_(std=0.2)
    image = _image((128, 128))
    with_hints = deblur(image, net, device="cpu", optics=OIL)
    with_mapping = deblur(image, net, device="cpu", optics={
        "pixel_size_um": 0.1, "numerical_aperture": 1.4, "wavelength_nm": 600.0,
        "immersion_index": 1.515})
    np.testing.assert_array_equal(with_hints, with_mapping)
    at_20x = deblur(image, net, device="cpu", optics={"pixel_size_um": 0.645,
                                                      "numerical_aperture": 0.5})
    assert np.abs(at_20x - with_hints).max() > 1e-3  # the optics reach the trained FiLM
    with pytest.raises(ValueError, match="numerical_aperture"):
        deblur(image, net, device="cpu", optics={"numerical_aperture": -1.0})
    with pytest.raises(ValueError, match="unknown OpticsHints keys"):
        deblur(image, net, device="cpu", optics={"na": 1.4})


def test_lazy_path_gives_every_chunk_the_optics():
    da = pytest.importorskip("dask.array")
    spy = Spy(conditioned=True)
    image = _image((300, 280))
    lazy = deblur_dask(da.from_array(image), spy, device="cpu", chunk=160, optics=OIL)
    lazy.compute(scheduler="synchronous")
    expected = pytest.approx(optics_vector(0.1, 1.4, 600.0, 1.515), abs=1e-6)
    assert len(spy.seen) >= 4 and all(seen == expected for seen in spy.seen)
    with pytest.raises(ValueError, match="pixel_size_um"):  # checked before any chunk runs
        deblur(da.from_array(image), spy, device="cpu", optics={"pixel_size_um": 0})

"""``benchmarks/detection_f1.py`` scores a conditioned model as a user who knows the microscope
would run it: with the simulated optics, not blind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_deblur_with_tells_a_conditioned_model_the_simulated_optics(spy_deblur):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import detection_f1
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import napari_mpt_deblur
    from napari_mpt_deblur.models._registry import create_model

    calls = spy_deblur(napari_mpt_deblur)  # the script calls napari_mpt_deblur.deblur
    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned").eval()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    sim = detection_f1.simulation_config(0.645)
    detection_f1.deblur_with(net, image, "cpu", sim)
    detection_f1.deblur_with(net, image, "cpu")
    seen = [c.get("optics") for c in calls]
    assert seen[0] == {"pixel_size_um": 0.645, "numerical_aperture": 0.5,
                       "wavelength_nm": 460.0, "immersion_index": 1.0}
    assert seen[1] is None

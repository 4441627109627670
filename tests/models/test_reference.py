"""The optimised MPT computes the same function as a plain port of the released algorithm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from napari_mpt_deblur import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference_mpt import reference_forward


@pytest.mark.parametrize(
    ("preset", "shape"), [("mpt-test", (1, 1, 128, 256)), ("mpt-tiny", (2, 1, 256, 128))]
)
def test_optimised_compat_matches_reference_port(preset, shape):
    torch.manual_seed(7)
    model = create_model(preset, routing="compat").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "temperature" in name:
                p.uniform_(0.5, 2.0)
    x = torch.rand(shape)
    with torch.inference_mode():
        ours = model(x)
    ref = reference_forward(model, x)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_reference_port_reproduces_authors_fixture(shared_dir):
    from napari_mpt_deblur.models.mpt import MPT, MPTConfig

    data = torch.load(shared_dir / "fixtures" / "mpt_ref_small_rgb.pt", weights_only=True)
    model = MPT(MPTConfig.from_authors_config(data["config"])).eval()
    model.load_state_dict(data["state_dict"])
    out = reference_forward(model, data["inputs"][0])
    assert (out - data["outputs"][0]).abs().max().item() <= 1e-4

"""MPT fidelity: the authors' parameter layout, reference outputs, routing behaviour."""

from __future__ import annotations

import re

import pytest
import torch

from napari_mpt_deblur import create_model, list_models
from napari_mpt_deblur.models import layers
from napari_mpt_deblur.models.mpt import MPT, MPTConfig

FIXTURES = ["mpt_ref_small_gray.pt", "mpt_ref_small_rgb.pt"]


def _fixture(shared_dir, name):
    return torch.load(shared_dir / "fixtures" / name, weights_only=True)


def _fixture_cases():
    return [
        (f, i)
        for f, n in (("mpt_ref_small_gray.pt", 2), ("mpt_ref_small_rgb.pt", 1))
        for i in range(n)
    ]


@pytest.mark.parametrize(("name", "index"), _fixture_cases())
def test_compat_reproduces_reference_outputs(shared_dir, name, index):
    ref = _fixture(shared_dir, name)
    assert len(ref["inputs"]) > index
    model = MPT(MPTConfig.from_authors_config(ref["config"])).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.inference_mode():
        out = model(ref["inputs"][index])
    err = (out - ref["outputs"][index]).abs().max().item()
    assert err <= 1e-4, f"{name}[{index}] max abs error {err:.2e}"


def test_fixture_case_list_covers_every_fixture_input(shared_dir):
    for name in FIXTURES:
        n = len(_fixture(shared_dir, name)["inputs"])
        assert sum(1 for f, _ in _fixture_cases() if f == name) == n


def test_compat_output_does_not_depend_on_attention_chunking(shared_dir, monkeypatch):
    ref = _fixture(shared_dir, "mpt_ref_small_gray.pt")
    model = MPT(MPTConfig.from_authors_config(ref["config"])).eval()
    model.load_state_dict(ref["state_dict"])
    x = ref["inputs"][0]
    with torch.inference_mode():
        whole = model(x)
        monkeypatch.setattr(layers, "_ATTN_CHUNK_ELEMENTS", 4096 * 8)
        chunked = model(x)
        batched = model(torch.cat([x, x]))
    assert (whole - chunked).abs().max() < 1e-5
    assert (batched[1:] - whole).abs().max() < 1e-5


def _spec_table(shared_dir):
    text = (shared_dir / "spec" / "MPT_STATE_DICT.txt").read_text()
    rows = re.findall(r"^(\S+)\t\(([\d, ]*)\)\t(\w+)$", text, flags=re.M)
    return {k: tuple(int(v) for v in s.split(",") if v.strip()) for k, s, _ in rows}


def test_published_layout_matches_authors_state_dict(shared_dir):
    spec = _spec_table(shared_dir)
    assert len(spec) == 1044
    model = MPT(MPTConfig(in_channels=3, out_channels=3))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(spec)  # same keys in the same order
    assert ours == spec


@pytest.mark.parametrize(("channels", "expected"), [(3, 19_799_356), (1, 19_797_916)])
def test_published_parameter_count(channels, expected):
    model = create_model("mpt-base", in_channels=channels, out_channels=channels)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.size_multiple == 128


@pytest.mark.parametrize("routing", ["compat", "aligned"])
def test_every_parameter_gets_a_gradient(routing):
    torch.manual_seed(0)
    model = create_model("mpt-test", routing=routing)
    x = torch.rand(2, 1, 128, 128)
    out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (out - x.flip(-1)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]


def _shift_error(routing: str) -> float:
    """Relative interior error of f(roll(x)) vs roll(f(x)) for a shift of one key footprint."""
    torch.manual_seed(3)
    model = create_model("mpt-test", routing=routing).eval()
    with torch.no_grad():  # random but non-trivial positional biases and temperatures
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    x = torch.rand(1, 1, 256, 640)
    shift = 128  # the largest window footprint (latent: 8 px windows at r=1/2, 1/8 scale)
    with torch.inference_mode():
        y = model(x)
        ys = model(torch.roll(x, shift, dims=-1))
    interior = (slice(None), slice(None), slice(32, -32), slice(shift + 64, -64))
    diff = (torch.roll(y, shift, dims=-1) - ys)[interior].abs().mean()
    return (diff / (y - x).abs().mean()).item()


def test_aligned_routing_is_shift_equivariant_and_compat_is_not():
    aligned, compat = _shift_error("aligned"), _shift_error("compat")
    assert aligned < 0.05, aligned
    assert compat > 5 * aligned, (compat, aligned)


def test_registry_lists_presets_and_rejects_unknown_names():
    names = list_models()
    for expected in ("mpt-base", "mpt-small", "mpt-tiny", "mpt-test"):
        assert expected in names
    assert list_models("mpt-t*") == ["mpt-test", "mpt-tiny"]
    with pytest.raises(ValueError, match=r"available models: .*mpt-base"):
        create_model("mpt-huge")


def test_a_preset_model_is_its_preset_config_built_with_the_same_overrides():
    from napari_mpt_deblur.models.mpt import preset_config

    for name in ("mpt-tiny", "mpt-test"):
        assert create_model(name).config == preset_config(name)
    model = create_model("mpt-test", routing="aligned")
    assert model.config == preset_config("mpt-test", routing="aligned") != preset_config("mpt-test")
    with pytest.raises(ValueError, match="unknown MPT preset 'mpt-huge'; choose from mpt-base"):
        preset_config("mpt-huge")


def test_config_round_trip_and_validation():
    cfg = create_model("mpt-small").config
    assert MPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown MPTConfig keys"):
        MPTConfig.from_dict({"dims": 3})
    with pytest.raises(ValueError, match="routing"):
        MPTConfig(routing="diagonal")


def test_forward_rejects_sizes_that_are_not_multiples():
    model = create_model("mpt-test")
    with pytest.raises(ValueError, match="multiples of 128"):
        model(torch.zeros(1, 1, 100, 128))

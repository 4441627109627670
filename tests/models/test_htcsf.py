"""HTCSF: shapes, gradients, head-to-tail vs cascade information paths, configs, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_mpt_deblur import create_model, deblur, list_models, load_model
from napari_mpt_deblur.models.checkpoint import read_header, save_checkpoint
from napari_mpt_deblur.models.htcsf import HTCSF, HTCSFConfig, multiscale_loss, preset_config

PRESETS = ("htcsf", "htcsf-small", "htcsf-test", "htcsf-cascade")


def _tiny(**overrides) -> HTCSF:
    torch.manual_seed(0)
    return create_model("htcsf-test", **overrides).eval()


@pytest.mark.parametrize(
    ("overrides", "hw"),
    [
        ({}, (24, 40)),  # 3 and 5 times the multiple of 8
        ({"cascade_residual": True}, (40, 24)),
        ({"fusion": "add"}, (8, 56)),
        ({"in_channels": 1, "out_channels": 3}, (24, 8)),
        ({"in_channels": 3, "out_channels": 3, "cascade_residual": True}, (24, 40)),
        ({"num_scales": 2, "widths": (4, 8, 8), "num_blocks": (0, 1, 1)}, (24, 40)),
    ],
)
def test_forward_shapes_at_odd_multiples(overrides, hw):
    model = _tiny(**overrides)
    h, w = hw
    assert h % model.size_multiple == 0 and w % model.size_multiple == 0
    x = torch.rand(2, model.in_channels, h, w)
    with torch.inference_mode():
        out = model(x)
        preds = model.forward_multiscale(x)
    assert out.shape == (2, model.out_channels, h, w) and torch.isfinite(out).all()
    scales = model.config.num_scales
    assert [p.shape[-2:] for p in preds] == [
        (h // 2 ** (scales - 1 - s), w // 2 ** (scales - 1 - s)) for s in range(scales)
    ]
    assert torch.allclose(preds[-1], out, atol=1e-6)


def test_default_preset_runs_at_its_multiple():
    model = create_model("htcsf").eval()
    assert model.size_multiple == 16
    with torch.inference_mode():
        assert model(torch.rand(1, 1, 48, 80)).shape == (1, 1, 48, 80)


def test_forward_rejects_bad_sizes_and_channels():
    model = _tiny()
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 1, 20, 24))
    with pytest.raises(ValueError, match="expects 1 channels; got 3"):
        model(torch.zeros(1, 3, 24, 24))


@pytest.mark.parametrize(
    "overrides", [{}, {"cascade_residual": True}, {"fusion": "add"}, {"input_skip": False}]
)
def test_every_parameter_gets_a_gradient_from_the_multiscale_loss(overrides):
    model = _tiny(**overrides).train()
    x = torch.rand(2, 1, 32, 32)
    loss = multiscale_loss(model.forward_multiscale(x), x.flip(-1))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]


def test_forward_skips_the_coarse_output_convs_in_head_to_tail_mode():
    model = _tiny().train()
    model(torch.rand(1, 1, 32, 32)).mean().backward()
    assert model.outputs[0].weight.grad is None and model.outputs[1].weight.grad is None
    assert model.scales[0].head.weight.grad is not None  # but the coarse sub-networks feed it


def test_cascade_and_head_to_tail_differ_in_structure_not_size():
    fused, cascade = create_model("htcsf"), create_model("htcsf-cascade")
    assert fused.config.replace(cascade_residual=True) == cascade.config
    assert [s.fusion is not None for s in fused.scales] == [False, True, True]
    assert all(s.fusion is None for s in cascade.scales)
    # cascade finer scales read the blurred image and the upsampled coarser output
    assert [s.head.in_channels for s in cascade.scales] == [1, 2, 2]
    assert [s.head.in_channels for s in fused.scales] == [1, 1, 1]
    n_fused = sum(p.numel() for p in fused.parameters())
    n_cascade = sum(p.numel() for p in cascade.parameters())
    assert n_fused != n_cascade and abs(n_fused - n_cascade) < 0.01 * n_fused


def _perturbed_difference(model: HTCSF, parameter: torch.nn.Parameter) -> float:
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        parameter.add_(0.5)
        after = model(x)
    return (after - before).abs().max().item()


def test_information_crosses_scales_decoder_to_encoder_not_output_to_input():
    fused, cascade = _tiny(), _tiny(cascade_residual=True)
    # Head-to-tail: the coarsest *output* conv plays no part in the finest prediction, the
    # coarsest decoder (its tail) does.
    assert _perturbed_difference(fused, fused.outputs[0].bias) == 0
    assert _perturbed_difference(fused, fused.scales[0].decoders[0][0].conv2.bias) > 1e-3
    # Cascade: the finest prediction is built on the coarser output image.
    assert _perturbed_difference(cascade, cascade.outputs[0].bias) > 1e-3


def test_finest_output_is_direct_in_head_to_tail_and_a_residual_in_cascade():
    x = torch.rand(1, 1, 32, 32)
    for model in (_tiny(), _tiny(cascade_residual=True)):
        with torch.no_grad():
            model.outputs[-1].weight.zero_()
            model.outputs[-1].bias.zero_()
            preds = model.forward_multiscale(x)
        if model.config.cascade_residual:  # nothing left but the upsampled coarser output
            up = F.interpolate(preds[-2], size=(32, 32), mode="bilinear", align_corners=False)
            assert torch.allclose(preds[-1], up, atol=1e-6)
        else:  # nothing left but the same-scale input skip
            assert torch.equal(preds[-1], x)


def test_multiscale_loss_weights_each_scale_against_the_downsampled_target():
    target = torch.rand(2, 1, 16, 16)
    exact = [F.avg_pool2d(target, 4), F.avg_pool2d(target, 2), target.clone()]
    assert multiscale_loss(exact, target).item() == pytest.approx(0, abs=1e-7)
    for s, weight in enumerate((0.25, 0.5, 1.0)):
        preds = [p.clone() for p in exact]
        preds[s] += 0.2
        assert multiscale_loss(preds, target).item() == pytest.approx(weight * 0.2, rel=1e-4)
    preds = [p + 0.1 for p in exact]
    assert multiscale_loss(preds, target, weights=(1, 0, 0)).item() == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(ValueError, match="one entry per prediction"):
        multiscale_loss(exact, target, weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="finest prediction"):
        multiscale_loss(exact, target[..., :8])
    with pytest.raises(ValueError, match="not an integer downscaling"):
        multiscale_loss([target[..., :5, :5], target], target)


def test_config_round_trip_and_validation():
    cfg = preset_config("htcsf-small", fusion="add", in_channels=3, out_channels=3)
    assert HTCSFConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(widths=[8, 16, 32]).widths == (8, 16, 32)
    assert HTCSFConfig().size_multiple == 16
    deep = HTCSFConfig(num_scales=2, widths=(8, 16, 32, 64), num_blocks=(1,) * 4)
    assert deep.size_multiple == 16
    assert HTCSFConfig(num_scales=1, widths=(8,), num_blocks=(2,)).size_multiple == 1
    with pytest.raises(ValueError, match=r"unknown HTCSFConfig keys \['routing'\]"):
        HTCSFConfig.from_dict({"routing": "aligned"})  # the training loop retries without it
    with pytest.raises(ValueError, match="fusion must be one of"):
        HTCSFConfig(fusion="multiply")
    with pytest.raises(ValueError, match="same, non-zero number"):
        HTCSFConfig(widths=(8, 16), num_blocks=(1,))
    with pytest.raises(ValueError, match="num_scales"):
        HTCSFConfig(num_scales=0)
    with pytest.raises(ValueError, match="unknown HTCSF preset"):
        preset_config("htcsf-huge")


def test_checkpoint_round_trip(tmp_path):
    model = _tiny(fusion="add")
    path = save_checkpoint(tmp_path / "h.safetensors", model, metadata={"name": "htcsf-rt"})
    header = read_header(path)
    assert header["arch"] == "htcsf" and header["routing"] is None
    assert HTCSFConfig.from_dict(header["config"]) == model.config
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, HTCSF) and loaded.config == model.config
    assert loaded.info["arch"] == "htcsf" and loaded.info["name"] == "htcsf-rt"
    x = torch.rand(1, 1, 24, 40)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_engine_pads_to_the_multiple_and_crops_back():
    image = np.random.default_rng(0).integers(100, 4000, size=(100, 150), dtype=np.uint16)
    model = _tiny()  # multiple 8: 100x150 is padded to 104x152
    out = deblur(image, model, axes="YX", device="cpu", tile=0)
    assert out.shape == image.shape and out.dtype == np.uint16
    with torch.no_grad():  # the same network reduced to its input skip: an identity map
        model.outputs[-1].weight.zero_()
        model.outputs[-1].bias.zero_()
    same = deblur(image, model, axes="YX", device="cpu", tile=0)
    assert np.abs(same.astype(np.int64) - image).max() <= 1  # aligned, not shifted or flipped
    assert np.abs(out.astype(np.int64) - image).max() > 1


def test_registry_lists_the_presets():
    assert list_models("htcsf*") == sorted(PRESETS)
    assert create_model("htcsf-cascade").config.cascade_residual
    assert create_model("htcsf-test", in_channels=3).in_channels == 3
    counts = {n: sum(p.numel() for p in create_model(n).parameters()) for n in PRESETS}
    assert counts["htcsf-test"] < counts["htcsf-small"] < counts["htcsf"] < 1_000_000

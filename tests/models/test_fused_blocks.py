"""The fused block arithmetic computes the textbook formulas, in float32 and under bf16 autocast.

``tests/models/test_reference.py`` covers the whole ``compat`` network against the released
algorithm; these tests pin the rewritten parts for every routing (the shipped models use
``aligned``): ISCA on ``(C, C)`` matrices with ``project_out`` folded in, and the residual adds
accumulated in the output GEMMs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from napari_mpt_deblur.models.layers import DualAttention, PyramidBlock


def _textbook_isca(attn: DualAttention, y: torch.Tensor) -> torch.Tensor:
    """Restormer-style transposed attention, written out step by step (channels-last in/out)."""
    x = y.permute(0, 3, 1, 2)
    q = attn.q_dwconv[0](attn.q[0](x))
    k, v = attn.kv_dwconv[0](attn.kv[0](x)).chunk(2, dim=1)
    q, k, v = (rearrange(t, "b (h c) y x -> b h c (y x)", h=attn.heads) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    weights = torch.softmax(q @ k.transpose(-2, -1) * attn.temperature[0], dim=-1)
    out = rearrange(weights @ v, "b h c (y x) -> b y x (h c)", y=y.shape[1])
    return out @ attn.project_out[0].weight.t()


def _block(routing: str, heads: int, dim: int = 16, rate: float = 0.5, shift: int = 4
           ) -> PyramidBlock:
    torch.manual_seed(3)
    block = PyramidBlock(dim, heads, 2.6, 8, rate, shift, routing).eval()
    with torch.no_grad():  # non-trivial temperatures and norms, so a mix-up would show
        for name, p in block.named_parameters():
            if "temperature" in name or "norm" in name:
                p.uniform_(0.5, 2.0)
    return block


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_isca_on_channel_matrices_equals_the_textbook_formula(heads):
    attn = _block("aligned", heads).attn
    y = torch.randn(2, 32, 48, 16)
    residual = torch.randn_like(y)
    with torch.inference_mode():
        expected = _textbook_isca(attn, y)
        assert torch.allclose(attn.isca(y), expected, atol=1e-5)
        assert torch.allclose(attn.isca(y, residual), residual + expected, atol=1e-5)


@pytest.mark.parametrize("routing", ["compat", "aligned"])
def test_block_with_residuals_in_the_gemms_equals_the_unfused_sum(routing):
    block = _block(routing, heads=2)
    x = torch.randn(1, 32, 32, 16)
    with torch.inference_mode():
        channel, window = block.attn(block.norm1(x))  # no residual: the bare streams
        xc, xs = x + channel, x + window
        expected = xc + block.ffn(block.norm2[0](xc), block.norm2[1](xs))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_bf16_autocast_keeps_the_residual_stream_in_float32_and_close():
    """The faster bf16 path: float32 out of every block, within bf16 rounding of float32."""
    block = _block("aligned", heads=2)
    x = torch.randn(1, 32, 32, 16)
    with torch.inference_mode():
        full = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = block(x)
            xc, xs = block.attn(block.norm1(x), residual=x)
    assert half.dtype == xc.dtype == xs.dtype == torch.float32
    assert not torch.equal(half, full)  # bf16 kernels really ran
    err = (half - full).abs()
    assert err.max().item() < 0.1 * full.abs().max().item()
    assert err.mean().item() < 0.01 * full.abs().mean().item()


def test_window_attention_runs_in_float32_under_cpu_autocast():
    """CPU autocast does not round the attention to bf16 (it would be slower and less exact)."""
    from napari_mpt_deblur.models.layers import window_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(4, 2, 128, 16), torch.randn(4, 2, 64, 16), torch.randn(4, 2, 64, 16)
    mask = torch.randn(1, 2, 128, 64)
    full = window_attention(q, k, v, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = window_attention(q, k, v.bfloat16(), mask)
    assert half.dtype == torch.float32
    assert torch.allclose(half, window_attention(q, k, v.bfloat16().float(), mask), atol=1e-6)
    assert (half - full).abs().max().item() < 0.05


@pytest.mark.parametrize(("shift", "inv_rate"), [(0, 1), (4, 1), (0, 2), (4, 2), (4, 4)])
def test_aligned_query_gather_is_the_roll_partition_and_grouping(shift, inv_rate):
    """The one-gather layout of the aligned routing's queries, and the gather back."""
    from napari_mpt_deblur.models import layers

    h, w, win = 64, 96, 8
    x = torch.randn(2, h, w, 5)
    rolled = torch.roll(x, (-shift * inv_rate, -shift * inv_rate), dims=(1, 2))
    nhp, nwp = h // inv_rate // win, w // inv_rate // win
    expected = layers._group_aligned_queries(layers._partition(rolled, win), nhp, nwp, inv_rate)
    order, inverse = layers._aligned_order(h, w, win, shift, inv_rate, x.device)
    gathered = x.reshape(2, h * w, 5).index_select(1, order).reshape(expected.shape)
    assert torch.equal(gathered, expected)
    back = gathered.reshape(2, h * w, 5).index_select(1, inverse).reshape(x.shape)
    assert torch.equal(back, x)


def test_cached_query_order_from_inference_mode_still_trains():
    """The gather index cached by an inference call must not break a later training step."""
    block = _block("aligned", heads=2)
    x = torch.randn(1, 32, 32, 16)
    with torch.inference_mode():
        block(x)  # fills the cache inside inference mode
    block.train()
    block(x.requires_grad_()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("routing", ["compat", "aligned"])
def test_isca_projection_is_the_two_layers_in_one_gemm_and_one_conv(routing):
    attn = _block(routing, heads=2).attn
    y = torch.randn(2, 32, 48, 16)
    x = y.permute(0, 3, 1, 2)
    with torch.inference_mode():
        q = attn.q_dwconv[0](attn.q[0](x))
        kv = attn.kv_dwconv[0](attn.kv[0](x))
        expected = torch.cat([q, kv], dim=1).permute(0, 2, 3, 1)
        assert torch.allclose(attn.isca_qkv(y), expected, atol=1e-5)


def test_isca_trains_like_the_textbook_formula():
    """The concatenated weights and the squared-sum norms pass every gradient the textbook does."""
    attn = _block("aligned", heads=2).attn
    y = torch.randn(2, 16, 24, 16, requires_grad=True)

    def grads(formula) -> dict[str, torch.Tensor]:
        attn.zero_grad()
        y.grad = None
        out = formula(y)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        found = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
        return {**found, "input": y.grad.clone()}

    ours = grads(attn.isca)
    textbook = grads(lambda t: _textbook_isca(attn, t))
    assert ours.keys() == textbook.keys()
    assert {"q.0.weight", "kv.0.weight", "q_dwconv.0.weight", "kv_dwconv.0.weight",
            "temperature.0", "project_out.0.weight", "input"} <= ours.keys()
    for name, grad in textbook.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(ours[name], grad, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("shift", [0, 4])
def test_key_value_gather_is_the_roll_and_partition(shift):
    from napari_mpt_deblur.models import layers

    x = torch.randn(2, 32, 48, 6)
    expected = layers._partition(torch.roll(x, (-shift, -shift), dims=(1, 2)), 8)
    order = layers._window_order(32, 48, 8, shift, x.device)
    assert torch.equal(layers._gather(x, order).reshape(expected.shape), expected)


@pytest.mark.parametrize(("shift", "inv_rate"), [(0, 1), (4, 1), (0, 2), (4, 2), (4, 4)])
def test_compat_query_gathers_are_the_released_layout_changes(shift, inv_rate):
    """The three gathers of the compat routing against partition / pseudo-images / roll."""
    from napari_mpt_deblur.models import layers

    h, w, win, b, c = 64, 96, 8, 2, 5
    groups, hp = inv_rate**2, h // inv_rate
    x = torch.randn(b, h, w, c)
    to_pseudo, to_windows, back = layers._compat_order(h, w, win, shift, inv_rate, x.device)
    pseudo = layers._unpartition(
        layers._partition(x, win).reshape(b * groups, -1, win * win, c), win, hp)
    assert torch.equal(layers._gather(x, to_pseudo).reshape(pseudo.shape), pseudo)
    rolled = torch.roll(pseudo, (-shift, -shift), dims=(1, 2))
    windows = layers._partition(rolled, win).reshape(b, -1, groups * win * win, c)
    gathered = layers._gather(pseudo.reshape(b, -1, c), to_windows).reshape(windows.shape)
    assert torch.equal(gathered, windows)
    # The way back: windows (any content) to raster order, then the roll undone.
    expected = torch.roll(layers._unpartition(windows.reshape(b, -1, win * win, c), win, h),
                          (shift, shift), dims=(1, 2))
    assert torch.equal(layers._gather(windows, back).reshape(x.shape), expected)


def test_isca_reads_strided_channel_slices_and_batches():
    """ISCA reads its q, k and v as strided channel slices; a batch of 3 runs image by image."""
    attn = _block("aligned", heads=2).attn
    y = torch.randn(3, 16, 24, 16)
    with torch.inference_mode():
        expected = _textbook_isca(attn, y)
        qkv = attn.isca_qkv(y)
        wide = torch.cat([torch.randn_like(qkv), qkv, torch.randn_like(qkv)], dim=-1)
        qkv = wide[..., 48:96]  # strided: row stride 144 channels
        assert not qkv.is_contiguous()
        assert torch.allclose(attn._isca(qkv, None), expected, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = attn._isca(qkv.bfloat16(), None).float()
        assert (half - expected).abs().max().item() < 0.05 * expected.abs().max().item()

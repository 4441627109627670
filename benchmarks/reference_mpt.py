"""A straightforward port of the released MPT forward pass, for benchmarks only (not shipped).

It runs the *algorithm* of the authors' code on our modules' parameters: NCHW tensors with
permute/reshape round trips around every LayerNorm, keys and values materialised ``g = 1/r²``
times so that every query window has its own copy, shift masks and relative-position biases
rebuilt on every call, and unfused ``softmax(q kᵀ) v`` attention. It computes the same function
as ``routing="compat"``; ``benchmarks/speed.py`` times both, and ``tests/models/test_reference.py``
checks that they agree to 1e-4 on small inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reference_forward"]


def _ln(x: torch.Tensor, norm) -> torch.Tensor:
    b, c, h, w = x.shape
    t = x.reshape(b, c, h * w).transpose(1, 2)
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    t = (t - mu) / torch.sqrt(var + 1e-5) * norm.body.weight + norm.body.bias
    return t.transpose(1, 2).reshape(b, c, h, w)


def _partition(x: torch.Tensor, w: int) -> torch.Tensor:  # (B, H, W, C) -> (B*nW, w*w, C)
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _reverse(win: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    b = win.shape[0] // ((h // w) * (wd // w))
    x = win.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


def _shift_mask(h: int, wd: int, w: int, s: int) -> torch.Tensor:
    img = torch.zeros(1, h, wd, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = _partition(img, w).squeeze(-1)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _isca(attn, y: torch.Tensor) -> torch.Tensor:
    b, c, h, w = y.shape
    heads = attn.heads
    q = attn.q_dwconv[0](attn.q[0](y))
    k, v = attn.kv_dwconv[0](attn.kv[0](y)).chunk(2, dim=1)
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    a = (q @ k.transpose(-2, -1)) * attn.temperature[0]
    out = (a.softmax(-1) @ v).reshape(b, c, h, w)
    return F.linear(out.permute(0, 2, 3, 1), attn.project_out[0].weight).permute(0, 3, 1, 2)


def _cswa(attn, y: torch.Tensor) -> torch.Tensor:
    _, c, h, w = y.shape
    win, s, inv, heads = attn.window, attn.shift, attn.inv_rate, attn.heads
    g, hp, wp = inv * inv, h // inv, w // inv
    if inv > 1:
        p = F.avg_pool2d(y, inv)
        src = p + attn.downsamp.downproj(p)
    else:
        src = y
    kv = F.linear(src.permute(0, 2, 3, 1), attn.kv[1].weight).permute(0, 3, 1, 2)
    kv = attn.kv_dwconv[1](kv).permute(0, 2, 3, 1)
    if s:
        kv = torch.roll(kv, (-s, -s), dims=(1, 2))
    kv = _partition(kv, win)  # (B*nWp, N, 2C)
    kv = kv.repeat_interleave(g, dim=0)  # the g-fold copies of the released code
    q = _partition(y.permute(0, 2, 3, 1), win)
    q = F.linear(q, attn.q[1].weight)
    q = _reverse(q, win, hp, wp).permute(0, 3, 1, 2)  # g pseudo-images per batch item
    q = attn.q_dwconv[1](q).permute(0, 2, 3, 1)
    if s:
        q = torch.roll(q, (-s, -s), dims=(1, 2))
    q = _partition(q, win)  # (B*nW, N, C)
    n = win * win
    k, v = kv.chunk(2, dim=-1)
    q, k, v = (t.reshape(-1, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    a = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * attn.temperature[1]
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    a = a + table.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)
    if s:
        mask = _shift_mask(hp, wp, win, s).repeat_interleave(g, dim=0)  # rebuilt every call
        nw = mask.shape[0]
        a = a.view(-1, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        a = a.view(-1, heads, n, n)
    out = (a.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    out = F.linear(out, attn.project_out[1].weight)
    out = _reverse(out, win, h, w)
    if s:
        out = torch.roll(out, (s, s), dims=(1, 2))
    return out.permute(0, 3, 1, 2)


def _block(block, x: torch.Tensor) -> torch.Tensor:
    y = _ln(x, block.norm1)
    xc = x + _isca(block.attn, y)
    xs = x + _cswa(block.attn, y)
    ffn = block.ffn
    g = F.gelu(ffn.dwconv1(ffn.project_in1(_ln(xc, block.norm2[0]))))
    v = F.linear(_ln(xs, block.norm2[1]).permute(0, 2, 3, 1), ffn.project_in2.weight)
    out = F.linear(g.permute(0, 2, 3, 1) * v, ffn.project_out.weight).permute(0, 3, 1, 2)
    return xc + out


def _stage(stage, x: torch.Tensor) -> torch.Tensor:
    for block in stage:
        x = _block(block, x)
    return x


@torch.no_grad()
def reference_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The released algorithm on ``model``'s parameters (``model.config.routing`` is ignored)."""
    e1 = _stage(model.encoder_level1, model.inproj(x))
    e2 = _stage(model.encoder_level2, model.down1_2(e1))
    e3 = _stage(model.encoder_level3, model.down2_3(e2))
    lat = _stage(model.latent, model.down3_4(e3))
    d3 = _stage(model.decoder_level3, model.up4_3(lat) + e3)
    d2 = _stage(model.decoder_level2, model.up3_2(d3) + e2)
    d1 = _stage(model.decoder_level1, model.up2_1(d2) + e1)
    return model.output(d1) + x

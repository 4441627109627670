"""Building blocks of the Multi-Pyramid Transformer.

Parameter names follow the authors' released state dict (``norm1.body.weight``,
``attn.q.0.weight``, ``ffn.project_in1.weight`` ...), so their checkpoints load strictly; the
computation is written from the paper and ``shared/spec/MPT.md``, not from their code.

Tensor layout: blocks take and return channels-last ``(B, H, W, C)`` maps, so per-pixel linears
and LayerNorms need no copies and spatial convolutions run on ``channels_last`` views. Inside the
attention, window tokens are ``(..., tokens, channels)``.

Two routings of cross-scale window attention (CSWA) share the same parameters:

``compat``
    bit-compatible with the released code. It pairs query window ``j`` (raster order) with pooled
    key window ``j // g`` (``g = 1 / r**2``) and applies the query depthwise convolution and shift
    to "pseudo-images" made of raster-consecutive windows. Needed to reproduce the released
    checkpoints; it is not translation-equivariant.
``aligned``
    the routing the paper describes: query window ``(a, b)`` attends to the pooled window
    ``(a*r, b*r)`` that covers it; the query convolution and the shift act on the true image; the
    shifted-window mask labels queries and keys by the same wrap-around regions. On shifted
    blocks the queries are rolled by ``shift / r`` so that query windows stay nested inside their
    key window.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "FEFN",
    "ROUTINGS",
    "DualAttention",
    "LayerNorm2d",
    "PyramidBlock",
    "relative_position_index",
    "window_attention",
]

ROUTINGS = ("compat", "aligned")
MASK_VALUE = -100.0  # the released code's shifted-window mask value (a soft mask, not -inf)
_ATTN_CHUNK_ELEMENTS = 2**25  # logits per attention chunk: bounds peak memory on large images


class LayerNorm2d(nn.Module):
    """Per-pixel LayerNorm over channels (biased variance, eps 1e-5), channels-last input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.LayerNorm(channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _pointwise(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A 1x1 convolution or Linear (no bias) applied to a channels-last ``(B, H, W, C)`` map."""
    return F.linear(x, layer.weight.reshape(layer.weight.shape[0], -1))


def _pointwise_add(x: torch.Tensor, layer: nn.Module, residual: torch.Tensor | None
                   ) -> torch.Tensor:
    """``residual + _pointwise(x, layer)``, as one GEMM that accumulates onto the residual.

    Saves a pass over the map per residual connection. Under autocast the sum stays a separate
    float32 add, so the residual stream is not rounded to the autocast dtype.
    """
    if residual is None:
        return _pointwise(x, layer)
    weight = layer.weight.reshape(layer.weight.shape[0], -1)
    if torch.is_autocast_enabled(x.device.type) or residual.dtype != x.dtype:
        return residual + F.linear(x, weight)
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]), x.reshape(-1, x.shape[-1]), weight.t())
    return out.reshape(shape)


def _spatial(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """A spatial convolution on a channels-last map (runs as NCHW in channels_last memory)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=8)
def relative_position_index(window: int) -> torch.Tensor:
    """Swin relative-position index ``(w*w, w*w)`` into a ``(2w-1)**2`` bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention over key windows, chunked along the window axis.

    ``q`` is ``(W, h, Lq, d)`` (already scaled by the temperature), ``k``/``v`` are
    ``(W, h, Lk, d)`` and ``mask`` is an additive ``(W or 1, h or 1, Lq, Lk)`` term. Chunking keeps
    the logits of the math backend within a fixed budget on large images. Under CPU autocast it
    runs in float32: the CPU flash kernel is no faster in bf16 for these small heads (the
    ``mpt-tiny`` forward was 2-3 % faster at 512²-1024²) and float32 is more accurate.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return window_attention(
                q.float(), k.float(), v.float(), None if mask is None else mask.float()
            )
    n_windows = q.shape[0]
    per_window = q.shape[1] * q.shape[2] * k.shape[2]
    step = max(1, _ATTN_CHUNK_ELEMENTS // max(per_window, 1))
    if step >= n_windows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    out = torch.empty_like(q[..., : v.shape[-1]])
    for start in range(0, n_windows, step):
        stop = min(start + step, n_windows)
        chunk_mask = mask
        if mask is not None and mask.shape[0] != 1:
            chunk_mask = mask[start:stop]
        out[start:stop] = F.scaled_dot_product_attention(
            q[start:stop], k[start:stop], v[start:stop], attn_mask=chunk_mask, scale=1.0
        )
    return out


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, nH*nW, w*w, C)`` windows in raster order."""
    return rearrange(x, "b (nh p) (nw q) c -> b (nh nw) (p q) c", p=window, q=window)


def _unpartition(x: torch.Tensor, window: int, height: int) -> torch.Tensor:
    """Inverse of :func:`_partition` for maps of ``height`` rows."""
    return rearrange(
        x, "b (nh nw) (p q) c -> b (nh p) (nw q) c", nh=height // window, p=window, q=window
    )


def _region_labels(size: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's three row (or column) regions of a map rolled by ``-shift``."""
    labels = torch.zeros(size, dtype=torch.int64, device=device)
    labels[size - window : size - shift] = 1
    labels[size - shift :] = 2
    return labels


@functools.lru_cache(maxsize=64)
def _compat_shift_mask(
    hp: int, wp: int, window: int, shift: int, groups: int, device: torch.device
) -> torch.Tensor:
    """Released-code shift mask, ``(nWp, 1, g*w*w, w*w)``, for the ``compat`` routing.

    The mask is built on the pooled grid only: the ``g`` query windows that share pooled key
    window ``p`` all receive ``p``'s mask, whatever part of the image they come from.
    """
    rows = _region_labels(hp, window, shift, device)
    cols = _region_labels(wp, window, shift, device)
    labels = (rows[:, None] * 3 + cols[None, :])[None, :, :, None]
    windows = _partition(labels, window)[0, :, :, 0]  # (nWp, w*w)
    mask = (windows[:, None, :] != windows[:, :, None]).float() * MASK_VALUE  # (nWp, N, N)
    return mask.repeat(1, groups, 1)[:, None]


@functools.lru_cache(maxsize=64)
def _aligned_shift_mask(
    hp: int, wp: int, window: int, shift: int, inv_rate: int, device: torch.device
) -> torch.Tensor:
    """Consistent shift mask, ``(nWp, 1, g*w*w, w*w)``, for the ``aligned`` routing.

    A query and a key interact only if both come from the same side of every wrap-around seam
    created by rolling queries by ``shift * inv_rate`` and keys by ``shift``.
    """
    h, w = hp * inv_rate, wp * inv_rate
    q_rows = (torch.arange(h, device=device) >= h - shift * inv_rate).long()
    q_cols = (torch.arange(w, device=device) >= w - shift * inv_rate).long()
    k_rows = (torch.arange(hp, device=device) >= hp - shift).long()
    k_cols = (torch.arange(wp, device=device) >= wp - shift).long()
    q_labels = (q_rows[:, None] * 2 + q_cols[None, :])[None, :, :, None]
    k_labels = (k_rows[:, None] * 2 + k_cols[None, :])[None, :, :, None]
    q_win = _group_aligned_queries(
        _partition(q_labels, window), hp // window, wp // window, inv_rate
    )[0, :, :, 0]  # (nWp, g*N)
    k_win = _partition(k_labels, window)[0, :, :, 0]  # (nWp, N)
    mask = (q_win[:, :, None] != k_win[:, None, :]).float() * MASK_VALUE
    return mask[:, None]


def _group_aligned_queries(x: torch.Tensor, nhp: int, nwp: int, inv_rate: int) -> torch.Tensor:
    """Gather the ``g`` query windows nested in each pooled window: ``(B, nWp, g*N, C)``."""
    return rearrange(
        x, "b (hp a wp c) n ch -> b (hp wp) (a c n) ch", hp=nhp, a=inv_rate, wp=nwp, c=inv_rate
    )


@functools.lru_cache(maxsize=64)
def _aligned_order(
    h: int, w: int, window: int, shift: int, inv_rate: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the ``aligned`` routing's grouped queries come from, and the way back.

    ``order[j]`` is the raster index (in the un-rolled ``h x w`` map) of the ``j``-th query of
    the rolled, partitioned and grouped layout ``(nWp, g*N)`` flattened; ``inverse`` puts the
    attention output back in raster order, which also undoes the roll. Built outside inference
    mode, since autograd saves the index for the backward of a training step that reuses it.
    """
    with torch.inference_mode(False):
        grid = torch.arange(h * w, device=device).reshape(1, h, w, 1)
        if shift:
            grid = torch.roll(grid, (-shift * inv_rate, -shift * inv_rate), dims=(1, 2))
        nhp, nwp = h // inv_rate // window, w // inv_rate // window
        order = _group_aligned_queries(_partition(grid, window), nhp, nwp, inv_rate).reshape(-1)
        return order, torch.argsort(order)


@functools.lru_cache(maxsize=64)
def _window_order(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Raster sources of ``_partition(torch.roll(x, (-shift, -shift)))`` flattened: one gather.

    Used for the keys/values of both routings (two passes over the map, the roll and the
    partition, become one). Built outside inference mode, like :func:`_aligned_order`.
    """
    with torch.inference_mode(False):
        grid = torch.arange(h * w, device=device).reshape(1, h, w, 1)
        if shift:
            grid = torch.roll(grid, (-shift, -shift), dims=(1, 2))
        return _partition(grid, window).reshape(-1)


@functools.lru_cache(maxsize=64)
def _compat_order(
    h: int, w: int, window: int, shift: int, inv_rate: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``compat`` routing's three layout changes of the queries, each as one gather.

    ``to_pseudo``: raster windows laid out again as ``g`` pseudo-images of the pooled size
    (partition, regroup, unpartition); ``to_windows``: those pseudo-images rolled, partitioned
    and grouped ``g`` windows per pooled key window; ``back``: the attention output to raster
    order with the roll undone (unpartition, roll). Built outside inference mode.
    """
    groups, hp, wp = inv_rate**2, h // inv_rate, w // inv_rate
    with torch.inference_mode(False):
        grid = torch.arange(h * w, device=device).reshape(1, h, w, 1)
        pseudo = _unpartition(_partition(grid, window).reshape(groups, -1, window * window, 1),
                              window, hp)
        to_pseudo = pseudo.reshape(-1)
        grid = torch.arange(h * w, device=device).reshape(groups, hp, wp, 1)
        if shift:
            grid = torch.roll(grid, (-shift, -shift), dims=(1, 2))
        to_windows = _partition(grid, window).reshape(-1)
        grid = torch.arange(h * w, device=device).reshape(1, -1, window * window, 1)
        grid = _unpartition(grid, window, h)
        if shift:
            grid = torch.roll(grid, (shift, shift), dims=(1, 2))
        return to_pseudo, to_windows, grid.reshape(-1)


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, ..., C)`` with its positions (all but the first and last axes) in ``order``."""
    return x.reshape(x.shape[0], -1, x.shape[-1]).index_select(1, order)


class DualAttention(nn.Module):
    """The two attention streams of a pyramid block: ISCA (index 0) and CSWA (index 1).

    Parameters are stored as the released code stores them (``q.0`` / ``q.1`` and so on), so a
    single module owns both streams. ``forward`` returns ``(isca(y), cswa(y))``.

    Parameters
    ----------
    dim : int
        Channels ``C``.
    heads : int
        Attention heads (head width ``C / heads``).
    window : int
        CSWA window side (8 in the paper).
    pool_rate : float
        CSWA key/value pooling rate ``r`` (1, 1/2, 1/4 or 1/8).
    shift : int
        Shifted-window offset (``window // 2`` on odd blocks, else 0).
    routing : {"compat", "aligned"}
        Query-to-key routing of CSWA (module docstring).
    """

    def __init__(
        self, dim: int, heads: int, window: int, pool_rate: float, shift: int, routing: str
    ) -> None:
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}; got {routing!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        inv_rate = round(1 / pool_rate)
        if not math.isclose(inv_rate * pool_rate, 1.0) or inv_rate < 1:
            raise ValueError(f"pool_rate must be 1/n for an integer n; got {pool_rate}")
        self.heads, self.window, self.shift, self.routing = heads, window, shift, routing
        self.inv_rate = inv_rate
        self.temperature = nn.ParameterList([nn.Parameter(torch.ones(heads, 1, 1)) for _ in "01"])
        self.q = nn.ModuleList(
            [nn.Conv2d(dim, dim, 1, bias=False), nn.Linear(dim, dim, bias=False)]
        )
        self.q_dwconv = nn.ModuleList(
            [nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False) for _ in "01"]
        )
        self.kv = nn.ModuleList(
            [nn.Conv2d(dim, 2 * dim, 1, bias=False), nn.Linear(dim, 2 * dim, bias=False)]
        )
        self.kv_dwconv = nn.ModuleList(
            [nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False) for _ in "01"]
        )
        self.project_out = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in "01"])
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window).clone())
        if inv_rate > 1:
            self.downsamp = KeyValuePool(dim, inv_rate)

    def forward(
        self, y: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(isca(y), cswa(y))``, each added to ``residual`` when it is given."""
        return self.isca(y, residual), self.cswa(y, residual)

    # -- ISCA: transposed (channel) attention over the whole image ---------------------------
    def isca(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Channel attention, computed on ``(C, C)`` matrices instead of full-size maps.

        The attention logits of head ``h`` are ``t_h * q_i.k_j / (|q_i| |k_j|)`` over all pixels,
        so the Gram matrix ``qᵀk`` is divided by the norms afterwards instead of normalising the
        maps. Heads become one block-diagonal ``(C, C)`` softmax (``-inf`` between heads), and
        ``project_out`` is folded into it: the output is one ``v @ (W_out A)ᵀ`` GEMM on the
        channels-last map, accumulated onto ``residual``.
        """
        return self._isca(self.isca_qkv(y), residual)

    def isca_qkv(self, y: torch.Tensor) -> torch.Tensor:
        """ISCA's projected ``[q | k | v]`` map ``(B, H, W, 3C)``, from one GEMM and one conv.

        ``q = DW_q(W_q y)`` and ``kv = DW_kv(W_kv y)`` with the weights concatenated on every
        call (so training sees the parameters): per output channel the same dot products as the
        two layers, in one wider GEMM and one depthwise convolution, and ``[q | k]`` lies in
        adjacent channels for the Gram matrix of :meth:`_isca`.
        """
        weight = torch.cat([self.q[0].weight, self.kv[0].weight]).flatten(1)
        dw_weight = torch.cat([self.q_dwconv[0].weight, self.kv_dwconv[0].weight])
        qkv = F.linear(y, weight).permute(0, 3, 1, 2)
        return F.conv2d(qkv, dw_weight, padding=1, groups=dw_weight.shape[0]).permute(0, 2, 3, 1)

    def _isca(self, qkv: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """ISCA from its projected ``[q | k | v]`` map ``(B, H, W, 3C)``.

        ``qᵀk`` runs as one ``mm`` per image, which reads the strided channel slices ``q``, ``k``
        and ``v`` as they are (``bmm`` copies them first under bf16), and the norms come from
        the squared ``[q | k]`` summed over the pixels: a vector norm over the pixel axis of a
        strided slice is several times slower than both.
        """
        b, height, width, c = qkv.shape
        c //= 3
        qkv = qkv.reshape(b, height * width, 3 * c)
        q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        gram = _image_matmul(q.transpose(1, 2), k).float()  # (B, C, C)
        squares = qkv[..., : 2 * c].square().sum(1, dtype=torch.float32)  # (B, 2C)
        # |q_i|, |k_j| clamped at F.normalize's eps (1e-12) like the textbook normalisation.
        norms = squares.clamp_min(1e-24).sqrt()
        q_norm, k_norm = norms[:, :c], norms[:, c:]
        scale = self.temperature[0].reshape(-1, 1).float().repeat_interleave(c // self.heads, 0)
        logits = gram / (q_norm[:, :, None] * k_norm[:, None, :]) * scale
        attn = torch.softmax(logits + _head_blocks(c, self.heads, qkv.device), dim=-1)
        mix = self.project_out[0].weight.float() @ attn  # (B, C, C): W_out @ blockdiag(attn)
        if residual is not None and residual.dtype == mix.dtype and not torch.is_autocast_enabled(
            qkv.device.type
        ):
            out = torch.baddbmm(residual.reshape(b, -1, c), v, mix.transpose(1, 2))
            return out.reshape(residual.shape)
        out = _image_matmul(v, mix.transpose(1, 2).to(v.dtype)).reshape(b, height, width, c)
        return out if residual is None else residual + out

    # -- CSWA: window attention from full-resolution queries to pooled keys/values -----------
    def cswa(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = y.shape
        win, shift, inv = self.window, self.shift, self.inv_rate
        hp, wp = h // inv, w // inv
        if hp % win or wp % win:
            raise ValueError(
                f"CSWA needs the pooled map ({hp}x{wp}) to be a multiple of the window {win}"
            )
        source = self.downsamp(y) if inv > 1 else y
        kv = _spatial(_pointwise(source, self.kv[1]), self.kv_dwconv[1])
        # Roll and partition in one gather: (B, nWp, N, 2C).
        kv = _gather(kv, _window_order(hp, wp, win, shift, kv.device)).reshape(
            b, -1, win * win, 2 * c)
        q = _pointwise(y, self.q[1])  # (B, H, W, C)
        if self.routing == "compat":
            q, mask = self._compat_queries(q, hp, wp)
            back = _compat_order(h, w, win, shift, inv, q.device)[2]
        else:
            q, mask = self._aligned_queries(q, hp, wp)
            back = _aligned_order(h, w, win, shift, inv, q.device)[1]
        out = self._attend(q, kv, mask)  # (B, nWp, g*N, C)
        # One gather undoes the grouping, the partition and the roll (project_out is per pixel).
        out = _gather(out, back).reshape(b, h, w, c)
        return _pointwise_add(out, self.project_out[1], residual)

    def _compat_queries(
        self, q: torch.Tensor, hp: int, wp: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, h, w, c = q.shape
        win, shift, groups = self.window, self.shift, self.inv_rate**2
        to_pseudo, to_windows, _ = _compat_order(h, w, win, shift, self.inv_rate, q.device)
        # Raster windows laid out again as g pseudo-images of the pooled size (one gather), their
        # convolution, then roll, partition and grouping (one gather).
        pseudo = _gather(q, to_pseudo).reshape(b * groups, hp, wp, c)
        pseudo = _spatial(pseudo, self.q_dwconv[1])
        q = _gather(pseudo.reshape(b, -1, c), to_windows).reshape(b, -1, groups * win * win, c)
        mask = None
        if shift:
            mask = _compat_shift_mask(hp, wp, win, shift, groups, q.device)
        return q, mask

    def _aligned_queries(
        self, q: torch.Tensor, hp: int, wp: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        win, shift, inv = self.window, self.shift, self.inv_rate
        b, h, w, c = q.shape
        q = _spatial(q, self.q_dwconv[1])
        # Roll, partition and grouping in one gather (one pass over q instead of four).
        order, _ = _aligned_order(h, w, win, shift, inv, q.device)
        q = _gather(q, order).reshape(b, hp * wp // (win * win), -1, c)
        mask = None
        if shift:
            mask = _aligned_shift_mask(hp, wp, win, shift, inv, q.device)
        return q, mask

    def _attend(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, _, n_queries, _ = q.shape
        k, v = kv.chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b w n (h d) -> (b w) h n d", h=self.heads) for t in (q, k, v))
        # F.normalize(q) * temperature in one pass over q (the norms are small).
        q = q * (self.temperature[1] / torch.linalg.vector_norm(q, dim=-1, keepdim=True
                                                                ).clamp_min(1e-12))
        k = F.normalize(k, dim=-1)
        n_keys = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n_keys, n_keys, self.heads).permute(2, 0, 1)
        bias = bias.repeat(1, n_queries // n_keys, 1)[None]  # (1, h, g*N, N)
        if mask is not None:
            bias = (mask + bias).to(q.dtype)
            if b > 1:
                bias = bias.repeat(b, 1, 1, 1)
        else:
            bias = bias.to(q.dtype)
        out = window_attention(q, k, v, bias)
        return rearrange(out, "(b w) h n d -> b w n (h d)", b=b)


def _image_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` as one ``mm`` per image: ``mm`` takes strided channel slices as they
    are, where ``bmm`` copies them first under bf16 on the CPU."""
    if a.shape[0] == 1:
        return (a[0] @ b[0]).unsqueeze(0)
    return torch.stack([x @ y for x, y in zip(a, b)])


@functools.lru_cache(maxsize=32)
def _head_blocks(channels: int, heads: int, device: torch.device) -> torch.Tensor:
    """``(C, C)`` additive mask: 0 within a head's block of channels, ``-inf`` across heads."""
    head = torch.arange(channels, device=device) // (channels // heads)
    return torch.zeros(channels, channels, device=device).masked_fill(
        head[:, None] != head[None, :], float("-inf")
    )


class KeyValuePool(nn.Module):
    """CSWA key/value source at rate ``1/n``: ``P + Conv1x1(P)`` with ``P = AvgPool_n(Y)``."""

    def __init__(self, dim: int, inv_rate: int) -> None:
        super().__init__()
        self.inv_rate = inv_rate
        self.downproj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(y.permute(0, 3, 1, 2), self.inv_rate).permute(0, 2, 3, 1)
        return pooled + _pointwise(pooled, self.downproj)


class FEFN(nn.Module):
    """Asymmetric feed-forward fusing the two streams: ``W_out(GELU(DW(W1 a)) * (W2 b))``."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.project_in2 = nn.Linear(dim, hidden, bias=False)
        self.dwconv1 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.project_out = nn.Linear(hidden, dim, bias=False)

    def forward(
        self,
        channel_stream: torch.Tensor,
        window_stream: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The fused streams, added to ``residual`` (in the output GEMM) when it is given."""
        gate = F.gelu(_spatial(_pointwise(channel_stream, self.project_in1), self.dwconv1))
        value = _pointwise(window_stream, self.project_in2)
        return _pointwise_add(gate * value, self.project_out, residual)


class PyramidBlock(nn.Module):
    """One MPT block: ISCA and CSWA streams from a shared LayerNorm, fused by the FEFN.

    ``Xc = X + ISCA(LN1 X)``, ``Xs = X + CSWA(LN1 X)``,
    ``out = Xc + FEFN(LN2a Xc, LN2b Xs)`` (the released code's wiring, which its weights need).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        expansion: float,
        window: int,
        pool_rate: float,
        shift: int,
        routing: str,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = DualAttention(dim, heads, window, pool_rate, shift, routing)
        self.norm2 = nn.ModuleList([LayerNorm2d(dim), LayerNorm2d(dim)])
        self.ffn = FEFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc, xs = self.attn(self.norm1(x), residual=x)
        return self.ffn(self.norm2[0](xc), self.norm2[1](xs), residual=xc)

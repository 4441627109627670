"""Head-to-tail cross-scale fusion network (HTCSF) for microscopy defocus deblurring.

Paper: Jiahe Wang and Boran Han, "Defocus Deblur Microscopy via Head-to-Tail Cross-Scale
Fusion", IEEE ICIP 2022, pp. 2081-2086 (arXiv:2201.02876). No code was published; this is an
independent implementation of what the paper states, with the rest designed for this project
(``shared/spec/HTCSF.md``). It is the light CNN alternative to :mod:`.mpt`.

What the paper fixes
--------------------
- A multi-scale U-Net **without cascade residual learning**: every scale's sub-network predicts
  its sharp image directly, instead of adding a residual to the upsampled output of the coarser
  scale (which, the authors argue, cannot capture the end-to-end non-linear relation between
  in-focus and out-of-focus images).
- **Head-to-tail fusion**: the decoder ("tail") features of the coarser sub-network are fused
  into the encoder ("head") of the next finer one, so information crosses scales
  decoder -> encoder rather than output -> input.

Design choices of this implementation
-------------------------------------
Scales
    ``num_scales`` (3: 1/4, 1/2, 1). Scale inputs are 2x2 area averages of the finer input, the
    image-formation-consistent way to lower resolution (each coarse pixel integrates the four
    fine pixels it covers); the multi-scale loss downsamples the target the same way.
Sub-networks
    Every scale has its own small U-Net (no weight sharing: the blur spans 4x fewer pixels at
    1/4 scale than at full scale, so the filters should differ, and the finest scale dominates
    the cost anyway). Level ``l`` has ``widths[l]`` channels at ``2**-l`` of the scale's
    resolution; the last level is the bottleneck. Encoder and decoder level ``l`` hold
    ``num_blocks[l]`` residual blocks each (conv3x3-LeakyReLU-conv3x3 + identity), the bottleneck
    ``num_blocks[-1]``. Downsampling is a stride-2 3x3 conv, upsampling a 2x2 stride-2
    transposed conv (no overlap, so no checkerboard), and encoder->decoder skips are added.
    There is no normalisation layer: restoration nets see one tile at a time at inference and
    batch statistics would shift intensities; LeakyReLU(0.1) keeps a tiny unnormalised net free
    of dead units.
Head-to-tail fusion
    The tail of the coarser sub-network (its level-0 decoder output, the features its output
    conv reads) is upsampled x2 bilinearly and fused into the head of the finer one (the
    features right after its input conv) by ``fusion``: ``"concat"`` (concatenate, 1x1 conv
    ``2*widths[0] -> widths[0]``, the default) or ``"add"`` (``head + conv1x1(tail)``). The
    coarsest scale has no fusion.
Input skip (``input_skip=True``)
    Each scale's output is ``x_s + f_s(x_s, tail_{s-1})`` where ``x_s`` is the *blurred input
    at the same scale*. This is the ordinary global residual of single-scale restoration nets
    (MPT has one too), not cascade residual learning: no scale's output depends on another
    scale's *output*, the only cross-scale path is the decoder->encoder feature fusion, and
    ``f_s`` is a non-linear function of the whole input pyramid, so the end-to-end mapping stays
    non-linear. It only moves the identity (the large low-frequency content that defocus leaves
    intact) out of what the small net must learn, which speeds up training. It is applied at
    every scale for the same reason; ``input_skip=False`` gives the strictly direct prediction.
Cascade ablation (``cascade_residual=True``)
    The design the paper argues against, with the same sub-networks: scale ``s > 0`` sees
    ``concat(x_s, up(y_{s-1}))`` (its input conv has ``in + out`` channels), predicts a residual
    ``r_s`` and outputs ``y_s = up(y_{s-1}) + r_s``; no features are fused (output -> input
    crossing). The coarsest scale is identical in both variants.
Multi-scale loss
    :func:`multiscale_loss`: L1 at every scale against the area-downsampled target with weights
    ``2**-(S-1-s)`` (1 for the finest, 1/2, 1/4 ...). The finest term alone is exactly the
    single-scale L1, so the loss is comparable with the one MPT is trained with, and the coarser
    outputs act as deep supervision that makes every sub-network's tail carry a deblurred
    representation for the finer scale to fuse.

``forward`` returns the finest prediction (the only one inference needs; the coarser output
convs are skipped in head-to-tail mode), ``forward_multiscale`` all of them, coarse to fine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._dataclass_io import dataclass_from_dict, dataclass_to_dict
from ._registry import Architecture, register_architecture, register_presets
from .info import ModelInfo, attach_info

logger = logging.getLogger(__name__)

__all__ = [
    "FUSIONS",
    "HTCSF",
    "HTCSFConfig",
    "ResBlock",
    "SubNetwork",
    "multiscale_loss",
    "preset_config",
]

#: Ways of fusing the coarser tail into the finer head.
FUSIONS: tuple[str, ...] = ("concat", "add")
_NEGATIVE_SLOPE = 0.1


@dataclass(frozen=True)
class HTCSFConfig:
    """Architecture of an :class:`HTCSF` network.

    Attributes
    ----------
    widths : tuple of int
        Channels of each U-Net level of every sub-network (level ``l`` at ``2**-l`` of the
        scale's resolution; the last level is the bottleneck). At least one level.
    num_blocks : tuple of int
        Residual blocks per level (encoder and decoder each; the bottleneck gets the last
        entry). Same length as ``widths``; 0 is allowed.
    num_scales : int
        Image scales ``1, 1/2, ..., 2**-(num_scales-1)``; 3 gives 1/4, 1/2 and 1.
    in_channels, out_channels : int
        Image channels (1 for fluorescence).
    fusion : {"concat", "add"}
        How the upsampled coarser tail enters the finer head.
    cascade_residual : bool
        Ablation: coarse-to-fine cascade residual learning instead of head-to-tail fusion.
    input_skip : bool
        Add each scale's blurred input to its prediction (see the module docstring for why this
        is not cascade residual learning).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    num_blocks: tuple[int, ...] = (1, 1, 2)
    num_scales: int = 3
    in_channels: int = 1
    out_channels: int = 1
    fusion: str = "concat"
    cascade_residual: bool = False
    input_skip: bool = True

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.num_blocks):
            raise ValueError(
                "widths and num_blocks need the same, non-zero number of entries (one per U-Net "
                f"level); got widths={self.widths!r}, num_blocks={self.num_blocks!r}"
            )
        if any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must all be >= 1; got {self.widths!r}")
        if any(int(n) < 0 for n in self.num_blocks):
            raise ValueError(f"num_blocks must all be >= 0; got {self.num_blocks!r}")
        if self.num_scales < 1:
            raise ValueError(f"num_scales must be >= 1; got {self.num_scales!r}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                "in_channels and out_channels must be >= 1; got "
                f"{self.in_channels!r} and {self.out_channels!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {self.fusion!r}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: 2 per extra scale times 2 per extra U-Net level."""
        return 2 ** (self.num_scales - 1) * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HTCSFConfig:
        return dataclass_from_dict(cls, data)

    def replace(self, **changes: Any) -> HTCSFConfig:
        """A copy with some fields changed (sequences are normalised to tuples)."""
        return HTCSFConfig.from_dict({**self.to_dict(), **changes})


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """``x + conv3x3(LeakyReLU(conv3x3(x)))`` on ``(N, C, H, W)``; keeps shape.

    Parameters
    ----------
    channels : int
        Input and output channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the fresh conv output (autograd-safe: conv backward does not need it);
        # saves one full-resolution allocation per block on CPU.
        return self.conv2(self.act(self.conv1(x))).add_(x)


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])


class Fusion(nn.Module):
    """Fuse a coarser tail ``(N, C, H/2, W/2)`` into a finer head ``(N, C, H, W)``.

    Parameters
    ----------
    channels : int
        ``C`` of both the head and the tail.
    mode : {"concat", "add"}
        ``"concat"``: 1x1 conv over ``[head, up(tail)]``; ``"add"``: ``head + conv1x1(up(tail))``.
    """

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.proj = nn.Conv2d(channels * (2 if mode == "concat" else 1), channels, 1)

    def forward(self, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        tail = F.interpolate(tail, size=head.shape[-2:], mode="bilinear", align_corners=False)
        if self.mode == "concat":
            return self.proj(torch.cat([head, tail], dim=1))
        return head + self.proj(tail)


class SubNetwork(nn.Module):
    """One scale's U-Net: ``(N, C_in, H, W)`` -> tail features ``(N, widths[0], H, W)``.

    Parameters
    ----------
    config : HTCSFConfig
        Widths and blocks per level.
    in_channels : int
        Channels its input conv reads (image channels, plus the upsampled coarser output in the
        cascade ablation).
    fuse : bool
        Whether it receives a coarser tail in its head (head-to-tail mode, every scale but the
        coarsest).
    """

    def __init__(self, config: HTCSFConfig, in_channels: int, fuse: bool) -> None:
        super().__init__()
        widths, blocks = config.widths, config.num_blocks
        self.head = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.fusion = Fusion(widths[0], config.fusion) if fuse else None
        last = len(widths) - 1
        self.encoders = nn.ModuleList(_stage(widths[i], blocks[i]) for i in range(last))
        self.downs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(last)
        )
        self.bottleneck = _stage(widths[last], blocks[last])
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(last)
        )
        self.decoders = nn.ModuleList(_stage(widths[i], blocks[i]) for i in range(last))
        self.act = nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor, coarser_tail: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(x)
        if self.fusion is not None:
            if coarser_tail is None:
                raise ValueError("this sub-network fuses a coarser tail but none was given")
            h = self.fusion(h, coarser_tail)
        h = self.act(h)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            h = encoder(h)
            skips.append(h)
            h = self.act(down(h))
        h = self.bottleneck(h)
        for i in reversed(range(len(self.ups))):
            h = self.decoders[i](self.ups[i](h) + skips[i])
        return h


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class HTCSF(nn.Module):
    """Multi-scale U-Net with head-to-tail cross-scale fusion (or the cascade ablation).

    ``forward`` maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)`` with ``H`` and
    ``W`` multiples of :attr:`size_multiple`; :func:`napari_mpt_deblur.deblur` pads other sizes.
    ``scales[s]`` and ``outputs[s]`` belong to scale ``s`` (0 = coarsest).
    """

    def __init__(self, config: HTCSFConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or HTCSFConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        attach_info(self, ModelInfo(arch="htcsf", config=config.to_dict()))
        c = config
        cascade_in = c.in_channels + c.out_channels
        self.scales = nn.ModuleList(
            SubNetwork(
                c,
                cascade_in if (c.cascade_residual and s > 0) else c.in_channels,
                fuse=not c.cascade_residual and s > 0,
            )
            for s in range(c.num_scales)
        )
        self.outputs = nn.ModuleList(
            nn.Conv2d(c.widths[0], c.out_channels, 3, padding=1) for _ in range(c.num_scales)
        )
        # Narrow convolutions ran ~1.8x faster channels-last on CPU (oneDNN, measured); cuDNN
        # supports the layout too. load_state_dict copies into these tensors, so loaded
        # weights keep it, and save_checkpoint stores contiguous copies.
        self.to(memory_format=torch.channels_last)

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def inference_bytes_per_pixel(self) -> int:
        """Upper estimate of peak inference memory per input pixel (for tile-size choices).

        About ten live full-resolution float32 maps of ``widths[0]`` channels plus the images;
        measured peak RSS growth on CPU: 553 B/px for ``htcsf``, 390 B/px for ``htcsf-small``.
        """
        c = self.config
        return 4 * (10 * c.widths[0] + 2 * (c.in_channels + c.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, every_scale=False)[-1]

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Predictions at every scale, coarse to fine (``[1/4, 1/2, 1]`` for 3 scales).

        Feed them to :func:`multiscale_loss` with the full-resolution target.
        """
        return self._run(x, every_scale=True)

    def _check(self, x: torch.Tensor) -> None:
        multiple = self.size_multiple
        if x.ndim != 4 or x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"HTCSF expects (N, C, H, W) with H and W multiples of {multiple}; got "
                f"{tuple(x.shape)} (napari_mpt_deblur.deblur pads any size for you)"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} channels; got {x.shape[1]}")

    def _skip(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.input_skip:
            return None
        if self.out_channels == self.in_channels:
            return x
        if self.in_channels == 1:
            return x.expand(-1, self.out_channels, -1, -1)
        return None

    def _run(self, x: torch.Tensor, every_scale: bool) -> list[torch.Tensor]:
        self._check(x)
        pyramid = [x.contiguous(memory_format=torch.channels_last)]
        for _ in range(self.config.num_scales - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))
        pyramid.reverse()  # coarse to fine
        finest = len(pyramid) - 1
        outputs: list[torch.Tensor] = []
        tail: torch.Tensor | None = None
        for s, (net, out_conv, xs) in enumerate(zip(self.scales, self.outputs, pyramid)):
            if self.config.cascade_residual and s > 0:
                base = _upsample(outputs[-1], xs)
                y = base + out_conv(net(torch.cat([xs, base], dim=1)))
            else:
                tail = net(xs, tail)
                if not (every_scale or s == finest or self.config.cascade_residual):
                    continue  # head-to-tail inference needs only the finest output conv
                y = out_conv(tail)
                skip = self._skip(xs) if (s == 0 or not self.config.cascade_residual) else None
                if skip is not None:
                    y = y + skip
            outputs.append(y)
        outputs = [y.contiguous() for y in outputs]
        return outputs if every_scale else outputs[-1:]


def _upsample(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(image, size=like.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def multiscale_loss(
    predictions: list[torch.Tensor] | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    weights: tuple[float, ...] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> torch.Tensor:
    """Pixel loss between each scale's prediction and the area-downsampled target, weighted.

    Parameters
    ----------
    predictions : list of tensors, coarse to fine
        :meth:`HTCSF.forward_multiscale` output; the last one has the target's shape and each
        earlier one half the height and width of the next.
    target : tensor, shape ``(N, C, H, W)``
        The sharp image at full resolution.
    weights : tuple of float, optional
        One per prediction, coarse to fine. Default ``2**-(S-1-s)`` (..., 1/4, 1/2, 1): the finest
        term is the plain L1 the single-scale models use, the coarser ones deep supervision.
    loss_fn : callable, optional
        ``loss_fn(prediction, target) -> scalar``; L1 by default (the paper's choice). The
        training loop passes its configured pixel loss so every architecture is trained on the
        same objective at full resolution.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    if not predictions:
        raise ValueError("predictions is empty; pass HTCSF.forward_multiscale(x)")
    n = len(predictions)
    if weights is None:
        weights = tuple(2.0 ** -(n - 1 - s) for s in range(n))
    if len(weights) != n:
        raise ValueError(f"weights needs one entry per prediction ({n}); got {len(weights)}")
    if predictions[-1].shape != target.shape:
        raise ValueError(
            f"the finest prediction has shape {tuple(predictions[-1].shape)} but target has "
            f"{tuple(target.shape)}"
        )
    total = target.new_zeros(())
    for pred, weight in zip(reversed(predictions), reversed(weights)):
        factor_h, factor_w = target.shape[-2] // pred.shape[-2], target.shape[-1] // pred.shape[-1]
        if (
            factor_h != factor_w
            or pred.shape[-2] * factor_h != target.shape[-2]
            or pred.shape[-1] * factor_w != target.shape[-1]
        ):
            raise ValueError(
                f"prediction of shape {tuple(pred.shape)} is not an integer downscaling of the "
                f"target {tuple(target.shape)}"
            )
        scaled = F.avg_pool2d(target, factor_h) if factor_h > 1 else target
        total = total + weight * loss_fn(pred, scaled)
    return total


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "htcsf": (
        "head-to-tail cross-scale fusion CNN (ICIP 2022): 3 scales, widths 16/32/64, fast on CPU",
        {},
    ),
    "htcsf-small": (
        "smaller HTCSF: widths 12/24/48, one block per level",
        {"widths": (12, 24, 48), "num_blocks": (1, 1, 1)},
    ),
    "htcsf-test": (
        "smallest working HTCSF, for tests and smoke runs",
        {"widths": (4, 8), "num_blocks": (1, 1)},
    ),
    "htcsf-cascade": (
        "ablation: 'htcsf' with coarse-to-fine cascade residual learning instead of fusion",
        {"cascade_residual": True},
    ),
}


#: ``preset_config(name, **overrides)``: the config of a preset (without building the model).
preset_config: Callable[..., HTCSFConfig] = register_presets(_PRESETS, HTCSFConfig, HTCSF,
                                                             "HTCSF")


register_architecture(Architecture(name="htcsf", config_class=HTCSFConfig, build=HTCSF))

"""Multi-Pyramid Transformer (MPT) for microscopy defocus deblurring.

Paper: Y. Zhang, Y. Zheng, Y. Yan, Y. Fang, K. Cheng (?), "A Unified Framework for Microscopy
Defocus Deblur with Multi-Pyramid Transformer and Contrastive Learning", CVPR 2024
(arXiv:2403.02611). Original code: GitHub PieceZhang/MPT-CataBlur (Apache-2.0). This is an
independent implementation from the paper and ``shared/spec/MPT.md``; parameter names follow the
released state dict so the authors' checkpoints load strictly.

Deliberate differences from the released code:

- Keys/values are never copied ``g`` times: queries that share a pooled key window are attended
  together (one ``scaled_dot_product_attention`` call with ``g*64`` queries), and shift masks and
  index maps are cached per size and device. The function is unchanged (``compat`` routing).
- ``aligned`` routing fixes the released code's query-to-key pairing (see ``layers.py``).
- Any image size works through the inference engine (reflect padding to ``size_multiple``), and
  1-channel weights load like 3-channel ones.

An extension that is not in the paper: ``optics_conditioning`` (off by default, so the published
model, every checkpoint so far and their outputs are unchanged) feeds the microscope's optics to
the network through FiLM at each U-Net stage (:mod:`.conditioning`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._dataclass_io import dataclass_from_dict, dataclass_to_dict
from ._registry import Architecture, register_architecture, register_presets
from .checkpoint import CheckpointError
from .info import ModelInfo, attach_info, model_info
from .layers import ROUTINGS, PyramidBlock

__all__ = ["MPT", "PUBLISHED_POOL_RATES", "MPTConfig", "add_optics_conditioning",
           "infer_mpt_config", "strip_prefixes"]

#: CSWA pooling rate per block and level (levels 1-3, latent) of the published model.
PUBLISHED_POOL_RATES: tuple[tuple[float, ...], ...] = (
    (1 / 8, 1 / 8, 1 / 4, 1 / 4, 1.0, 1.0),
    (1 / 4, 1 / 4, 1 / 2, 1 / 2, 1.0, 1.0),
    (1 / 2, 1 / 2, 1 / 2, 1 / 2, 1.0, 1.0),
    (1 / 2, 1 / 2, 1 / 2, 1 / 2, 1.0, 1.0),
)


def _pyramid(rates: tuple[float, ...], blocks: int) -> tuple[float, ...]:
    """Keep the published coarse-to-fine order when a level has fewer blocks than 6."""
    if blocks <= len(rates):
        idx = [round(i * (len(rates) - 1) / max(blocks - 1, 1)) for i in range(blocks)]
        return tuple(rates[i] for i in idx) if blocks > 1 else (rates[0],)
    return tuple(rates) + (1.0,) * (blocks - len(rates))


@dataclass(frozen=True)
class MPTConfig:
    """Architecture of an MPT.

    Attributes
    ----------
    dim : int
        Channels at level 1; level ``l`` has ``dim * 2**(l-1)``.
    num_blocks : tuple of 4 ints
        Pyramid blocks in levels 1-3 and the latent (decoders mirror levels 1-3).
    heads : tuple of 4 ints
        Attention heads per level.
    ffn_expansion_factor : float
        FEFN hidden width factor (hidden = ``int(C * factor)``).
    pool_rates : tuple of 4 tuples
        CSWA key/value pooling rate per block, for each level (same in encoder and decoder).
    in_channels, out_channels : int
        Image channels (1 for fluorescence; 3 for the authors' RGB checkpoints).
    window_size : int
        CSWA window side.
    routing : {"compat", "aligned"}
        CSWA routing: ``compat`` reproduces released checkpoints, ``aligned`` is the paper's.
    optics_conditioning : bool
        Modulate each stage's input with the optics (:class:`~.conditioning.OpticsFiLM`):
        ``forward(x, optics)``. Off (the default) builds exactly the published network, and
        the field is then left out of :meth:`to_dict`, so unconditioned checkpoint headers are
        what they were.
    """

    dim: int = 40
    num_blocks: tuple[int, int, int, int] = (6, 6, 6, 6)
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.6
    pool_rates: tuple[tuple[float, ...], ...] = PUBLISHED_POOL_RATES
    in_channels: int = 1
    out_channels: int = 1
    window_size: int = 8
    routing: str = "compat"
    optics_conditioning: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}; got {self.routing!r}")
        if len(self.num_blocks) != 4 or len(self.heads) != 4 or len(self.pool_rates) != 4:
            raise ValueError("num_blocks, heads and pool_rates need 4 entries (3 levels + latent)")
        for level, (n, rates) in enumerate(zip(self.num_blocks, self.pool_rates), 1):
            if len(rates) != n:
                raise ValueError(f"level {level} has {n} blocks but {len(rates)} pool rates")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        if self.dim < 1 or self.window_size < 1 or min(self.heads) < 1:
            raise ValueError("dim, window_size and heads must be positive")
        if not self.ffn_expansion_factor > 0:
            raise ValueError("ffn_expansion_factor must be positive")
        if not isinstance(self.optics_conditioning, bool):
            raise ValueError(
                f"optics_conditioning must be true or false; got {self.optics_conditioning!r}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (128 for the published schedule)."""
        multiple = self.window_size * 8
        for level, rates in enumerate(self.pool_rates):
            for rate in rates:
                multiple = math.lcm(multiple, self.window_size * 2**level * round(1 / rate))
        return multiple

    def to_dict(self) -> dict[str, Any]:
        # an unconditioned config keeps the header it always had (older readers refuse keys
        # they do not know)
        exclude = ("extra",) if self.optics_conditioning else ("extra", "optics_conditioning")
        return dataclass_to_dict(self, exclude=exclude)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MPTConfig:
        return dataclass_from_dict(cls, data, exclude=("extra",))

    @classmethod
    def from_authors_config(cls, config: dict[str, Any], routing: str = "compat") -> MPTConfig:
        """Translate the released code's constructor arguments (``downpool`` as ``[1, r]``)."""
        return cls(
            dim=int(config.get("dim", 40)),
            num_blocks=tuple(config.get("num_blocks", (6, 6, 6, 6))),
            heads=tuple(config.get("heads", (1, 2, 4, 8))),
            ffn_expansion_factor=float(config.get("ffn_expansion_factor", 2.6)),
            pool_rates=tuple(
                tuple(float(pair[1]) for pair in level)
                for level in config.get("downpool", _published_downpool())
            ),
            in_channels=int(config.get("in_channels", config.get("inp_channels", 3))),
            out_channels=int(config.get("out_channels", 3)),
            window_size=int(config.get("window_size", 8)),
            routing=routing,
        )

    def replace(self, **changes: Any) -> MPTConfig:
        """A copy with some fields changed (sequences are normalised to tuples)."""
        return MPTConfig.from_dict({**self.to_dict(), **changes})


def _published_downpool() -> list[list[tuple[int, float]]]:
    return [[(1, rate) for rate in level] for level in PUBLISHED_POOL_RATES]


class Downsample(nn.Module):
    """3x3 conv ``C -> C/2`` then PixelUnshuffle(2): half resolution, twice the channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv ``C -> 2C`` then PixelShuffle(2): double resolution, half the channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MPT(nn.Module):
    """Four-level U-Net of pyramid blocks with additive skips and a global residual.

    ``forward`` maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)`` with ``H`` and
    ``W`` multiples of :attr:`size_multiple`; the inference engine pads other sizes.
    """

    def __init__(self, config: MPTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or MPTConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        attach_info(self, ModelInfo(arch="mpt", config=config.to_dict(), routing=config.routing))
        c = config
        dims = [c.dim * 2**i for i in range(4)]

        def stage(level: int) -> nn.Sequential:
            return nn.Sequential(
                *[
                    PyramidBlock(
                        dims[level],
                        c.heads[level],
                        c.ffn_expansion_factor,
                        c.window_size,
                        rate,
                        (c.window_size // 2) if i % 2 else 0,
                        c.routing,
                    )
                    for i, rate in enumerate(c.pool_rates[level])
                ]
            )

        self.inproj = nn.Conv2d(c.in_channels, c.dim, 3, padding=1, bias=False)
        self.encoder_level1 = stage(0)
        self.down1_2 = Downsample(dims[0])
        self.encoder_level2 = stage(1)
        self.down2_3 = Downsample(dims[1])
        self.encoder_level3 = stage(2)
        self.down3_4 = Downsample(dims[2])
        self.latent = stage(3)
        self.up4_3 = Upsample(dims[3])
        self.decoder_level3 = stage(2)
        self.up3_2 = Upsample(dims[2])
        self.decoder_level2 = stage(1)
        self.up2_1 = Upsample(dims[1])
        self.decoder_level1 = stage(0)
        self.output = nn.Conv2d(c.dim, c.out_channels, 3, padding=1, bias=False)
        if c.optics_conditioning:
            from .conditioning import OpticsFiLM

            # registered last: the published keys keep their order; one (scale, shift) per
            # stage input: encoder levels 1-3, latent, decoder levels 3-1
            self.optics_film = OpticsFiLM(
                (dims[0], dims[1], dims[2], dims[3], dims[2], dims[1], dims[0]))

    @property
    def optics_conditioned(self) -> bool:
        """Whether ``forward`` uses its ``optics`` argument."""
        return self.config.optics_conditioning

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def inference_bytes_per_pixel(self) -> int:
        """Conservative peak inference memory per input pixel (for choosing tile sizes)."""
        return 300 * self.config.dim  # measured ~150 B/px/channel (mpt-tiny, 512²), 2x margin

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def forward(self, x: torch.Tensor, optics: torch.Tensor | None = None) -> torch.Tensor:
        """Deblur ``x`` ``(N, C, H, W)``.

        ``optics`` ``(N, 3)`` or ``(3,)``: :func:`~.conditioning.optics_vector` of each image,
        used by an optics-conditioned model (``None``: unknown optics, the blind vector) and
        ignored by an unconditioned one.
        """
        multiple = self.size_multiple
        if x.ndim != 4 or x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"MPT expects (N, C, H, W) with H and W multiples of {multiple}; got "
                f"{tuple(x.shape)} (napari_mpt_deblur.deblur pads any size for you)"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} channels; got {x.shape[1]}")
        films = self._films(x, optics) if self.config.optics_conditioning else None

        def stage_input(i: int, y: torch.Tensor) -> torch.Tensor:
            return y if films is None else self.optics_film.modulate(y, films[i])

        # Blocks work channels-last; convolutions see channels_last views (no copies).
        e1 = self.encoder_level1(stage_input(0, _nhwc(self.inproj(x))))
        e2 = self.encoder_level2(stage_input(1, _resample(self.down1_2, e1)))
        e3 = self.encoder_level3(stage_input(2, _resample(self.down2_3, e2)))
        latent = self.latent(stage_input(3, _resample(self.down3_4, e3)))
        d3 = self.decoder_level3(stage_input(4, _resample(self.up4_3, latent) + e3))
        d2 = self.decoder_level2(stage_input(5, _resample(self.up3_2, d3) + e2))
        d1 = self.decoder_level1(stage_input(6, _resample(self.up2_1, d2) + e1))
        out = self.output(d1.permute(0, 3, 1, 2))
        if self.out_channels == self.in_channels:
            out = out + x
        elif self.in_channels == 1:
            out = out + x.expand_as(out)
        return out


    def _films(self, x: torch.Tensor, optics: torch.Tensor | None
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from .conditioning import BLIND_OPTICS, OPTICS_VECTOR_SIZE

        n = x.shape[0]
        if optics is None:
            # Callers that cannot pass optics (fine-tuning's losses, scores and previews) run
            # under conditioning.assume_optics, which sets this; otherwise: unknown optics.
            optics = x.new_tensor(getattr(self, "assumed_optics", None) or BLIND_OPTICS,
                                  dtype=torch.float32)
        optics = torch.as_tensor(optics, dtype=torch.float32, device=x.device)
        if optics.ndim == 1:
            optics = optics[None]
        if optics.shape[-1] != OPTICS_VECTOR_SIZE or optics.shape[0] not in (1, n):
            raise ValueError(
                f"optics must be ({n}, {OPTICS_VECTOR_SIZE}) or ({OPTICS_VECTOR_SIZE},) "
                f"(optics_vector per image); got {tuple(optics.shape)}")
        return self.optics_film(optics.expand(n, OPTICS_VECTOR_SIZE))


def add_optics_conditioning(net: MPT) -> MPT:
    """An optics-conditioned copy of an unconditioned MPT that computes the same output.

    The way to start a conditioned model from trained weights (``mpt-deblur train --init``
    with a recipe that turns ``optics_conditioning`` on): every weight is copied, and the
    new :class:`~.conditioning.OpticsFiLM` starts at exactly zero scale and shift. The info
    is kept, with the new config and the start model added to the lineage (its pretrained key
    and file hash no longer describe these weights and are dropped).
    """
    if not isinstance(net, MPT):
        raise TypeError(f"optics conditioning exists for MPT models; got {type(net).__name__}")
    if net.optics_conditioned:
        return net
    param = next(net.parameters())
    conditioned = MPT(net.config.replace(optics_conditioning=True)).to(param.device)
    missing, unexpected = conditioned.load_state_dict(net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("optics_film.") for k in missing):
        raise RuntimeError(f"cannot add optics conditioning: missing {missing}, unexpected "
                           f"{unexpected}")  # pragma: no cover - same class, same layout
    info = model_info(net)
    start = info.key or info.source or info.name
    # no longer the shipped file's weights: the key and hash go, the lineage says where from
    attach_info(conditioned, info.replace(
        config=conditioned.config.to_dict(), key=None, sha256=None,
        lineage=(*info.lineage, f"{start} (+ optics conditioning)") if start else info.lineage,
    ))
    return conditioned.train(net.training)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _resample(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _nhwc(layer(x.permute(0, 3, 1, 2)))


def _scaled(num_blocks: tuple[int, int, int, int], **kwargs: Any) -> dict[str, Any]:
    rates = tuple(_pyramid(r, n) for r, n in zip(PUBLISHED_POOL_RATES, num_blocks))
    return {"num_blocks": num_blocks, "pool_rates": rates, **kwargs}


_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mpt-base": ("the published MPT (dim 40, 6 blocks per stage, 19.8 M parameters)", {}),
    "mpt-small": (
        "CPU/GPU middle ground: dim 32, 4/4/4/4 blocks",
        _scaled((4, 4, 4, 4), dim=32),
    ),
    "mpt-tiny": (
        "CPU default: dim 16, 2/2/2/2 blocks (1024x1024 in seconds on 2 cores)",
        _scaled((2, 2, 2, 2), dim=16),
    ),
    "mpt-test": (
        "smallest working MPT, for tests and smoke runs",
        _scaled((2, 2, 2, 2), dim=8, heads=(1, 1, 2, 2)),
    ),
}


#: ``preset_config(name, **overrides)``: the config of a preset (without building the model).
preset_config: Callable[..., MPTConfig] = register_presets(_PRESETS, MPTConfig, MPT, "MPT")


# --------------------------------------------------------------------------------------------
# Checkpoints: the released state-dict layout, registered for models.checkpoint
# --------------------------------------------------------------------------------------------
#: Key prefixes of the authors' training wrappers (``DataParallel`` around ``Network``).
AUTHOR_PREFIXES = ("module.Network.", "Network.", "module.")
_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the training wrappers' key prefixes (``module.Network.``, ``Network.`` ...)."""
    for prefix in AUTHOR_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def infer_mpt_config(state_dict: dict[str, torch.Tensor], routing: str | None = "compat"
                     ) -> MPTConfig:
    """Reconstruct an :class:`MPTConfig` from the authors' key layout and shapes.

    Pooling rates are not stored in the weights; levels with six blocks get the published
    schedule, others a pyramid consistent with which blocks own a ``downproj``. Header-less
    files come from the released code, so ``routing`` defaults to its ``compat`` routing.
    """
    if "inproj.weight" not in state_dict or "output.weight" not in state_dict:
        raise CheckpointError(
            "this is not an MPT state dict (no 'inproj.weight'/'output.weight' keys); "
            f"first keys: {list(state_dict)[:5]}"
        )
    inproj = state_dict["inproj.weight"]
    dim, in_ch = int(inproj.shape[0]), int(inproj.shape[1])
    out_ch = int(state_dict["output.weight"].shape[0])
    num_blocks, heads, rates = [], [], []
    for level, stage in enumerate(_STAGES):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{stage}\.(\d+)\.", k))}
        if not idx:
            raise CheckpointError(f"MPT state dict has no blocks for {stage}")
        n = max(idx) + 1
        num_blocks.append(n)
        heads.append(int(state_dict[f"{stage}.0.attn.relative_position_bias_table"].shape[1]))
        pooled = [f"{stage}.{i}.attn.downsamp.downproj.weight" in state_dict for i in range(n)]
        published = PUBLISHED_POOL_RATES[level]
        if n == len(published) and [r < 1 for r in published] == pooled:
            rates.append(tuple(published))
        else:
            coarse = min(published)
            rates.append(tuple(coarse if p else 1.0 for p in pooled))
    hidden = int(state_dict["encoder_level1.0.ffn.project_in1.weight"].shape[0])
    factor = 2.6 if int(dim * 2.6) == hidden else hidden / dim
    table = int(state_dict["encoder_level1.0.attn.relative_position_bias_table"].shape[0])
    window = (round(table**0.5) + 1) // 2
    return MPTConfig(
        dim=dim,
        num_blocks=tuple(num_blocks),
        heads=tuple(heads),
        ffn_expansion_factor=factor,
        pool_rates=tuple(rates),
        in_channels=in_ch,
        out_channels=out_ch,
        window_size=window,
        routing=routing or "compat",
    )


def check_mpt_config(config: MPTConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Compare a header's size parameters with the tensors, before the model is built."""
    inproj, output = state_dict.get("inproj.weight"), state_dict.get("output.weight")
    if inproj is None or output is None:
        raise CheckpointError("checkpoint tensors lack 'inproj.weight'/'output.weight'")
    expected = (config.dim, config.in_channels, config.out_channels)
    found = (int(inproj.shape[0]), int(inproj.shape[1]), int(output.shape[0]))
    if expected != found:
        raise CheckpointError(
            f"checkpoint header (dim, in, out channels) = {expected} disagrees with its "
            f"tensors {found}"
        )
    for stage, n in zip(_STAGES, config.num_blocks):
        count = len({k.split(".")[1] for k in state_dict if k.startswith(stage + ".")})
        if count != n:
            raise CheckpointError(
                f"checkpoint header says {n} blocks in {stage} but its tensors have {count}"
            )


register_architecture(Architecture(
    name="mpt",
    config_class=MPTConfig,
    build=MPT,
    filter_state_dict=strip_prefixes,
    infer_config=infer_mpt_config,
    check_config=check_mpt_config,
    config_from_authors=lambda kwargs, routing=None: MPTConfig.from_authors_config(
        kwargs, routing=routing or "compat"),
))

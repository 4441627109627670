"""Training losses: Haar wavelet bands, pixel losses and the EFCR contrastive regulariser.

EFCR (extended frequency contrastive regularisation) comes from Zhang et al., "A Unified
Framework for Microscopy Defocus Deblur with Multi-Pyramid Transformer and Contrastive
Learning" (CVPR 2024). It compares the network output with a positive (the sharp image) and
with negatives (blurred versions) in the Haar wavelet domain, and extends the comparison to
images without ground truth through a "relative" term. See ``spec/EFCR.md`` for the formulas.

Deliberate differences from the authors' released code
------------------------------------------------------
- The released code evaluates the whole contrastive loss, including the forward pass on the
  extra images, under ``torch.no_grad()``. The term therefore never produced a gradient and, as
  released, EFCR changed nothing in training. Here the anchors (the output on the blurred input
  and the output on the unlabeled images) keep their graph; only the positives and negatives are
  detached. ``tests/train/test_losses.py`` checks that the term alone yields parameter gradients.
- The released negatives use RGB colour jitter and near-box Gaussian kernels chosen once per
  batch. Here the negatives are built by :mod:`napari_mpt_deblur.train.reblur`: intensity gain,
  offset, gamma and noise jitter for single-channel fluorescence, and re-blurring with small
  physical defocus PSFs picked per image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PIXEL_LOSSES  # torch-free there: the run configs check it too

__all__ = [
    "PIXEL_LOSSES",
    "EFCRLoss",
    "EFCRTerms",
    "PixelLoss",
    "charbonnier_loss",
    "efcr_loss",
    "efcr_terms",
    "haar_dwt",
    "haar_idwt",
    "pixel_loss",
    "psnr_loss",
]

logger = logging.getLogger(__name__)

_PSNR_EPS = 1e-8  # caps a sample's PSNR at 80 dB, so a perfect sample gives no infinite gradient

_EPS = 1e-7


def _check_4d(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W); got shape {tuple(x.shape)}")


def _haar_filters(dtype: torch.dtype, device: torch.device) -> Tensor:
    # Orthonormal 2x2 Haar analysis filters in the order LL, LH, HL, HH. With the 1/2 factor
    # the transform is orthogonal: energy is preserved and the transpose is the inverse.
    ll = [[1.0, 1.0], [1.0, 1.0]]
    lh = [[1.0, 1.0], [-1.0, -1.0]]  # vertical change: horizontal edges
    hl = [[1.0, -1.0], [1.0, -1.0]]  # horizontal change: vertical edges
    hh = [[1.0, -1.0], [-1.0, 1.0]]
    return 0.5 * torch.tensor([ll, lh, hl, hh], dtype=dtype, device=device).unsqueeze(1)


def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the orthonormal 2-D Haar wavelet transform.

    A fixed stride-2 convolution, differentiable and cheap, so the loss needs no wavelet
    library. Odd heights or widths are extended by one reflected row/column first.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
        Images.

    Returns
    -------
    LL : Tensor, shape (N, C, ceil(H/2), ceil(W/2))
        Low band (local means times 2).
    Hf : Tensor, shape (N, C, 3, ceil(H/2), ceil(W/2))
        Detail bands LH, HL, HH stacked along dimension 2.

    Notes
    -----
    The filters are orthonormal, so for even sizes ``sum(x**2) == sum(LL**2) + sum(Hf**2)``
    and :func:`haar_idwt` reconstructs ``x`` exactly.
    """
    _check_4d(x, "x")
    n, c, h, w = x.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        if (pad_h and h < 2) or (pad_w and w < 2):
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        else:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    weight = _haar_filters(x.dtype, x.device).repeat(c, 1, 1, 1)
    bands = F.conv2d(x, weight, stride=2, groups=c)
    bands = bands.reshape(n, c, 4, bands.shape[-2], bands.shape[-1])
    return bands[:, :, 0], bands[:, :, 1:]


def haar_idwt(ll: Tensor, hf: Tensor) -> Tensor:
    """Invert :func:`haar_dwt` (for even sizes; crop afterwards if the input was odd).

    Parameters
    ----------
    ll : Tensor, shape (N, C, h, w)
    hf : Tensor, shape (N, C, 3, h, w)

    Returns
    -------
    Tensor, shape (N, C, 2h, 2w)
    """
    _check_4d(ll, "ll")
    if hf.ndim != 5 or hf.shape[2] != 3 or hf.shape[:2] != ll.shape[:2]:
        raise ValueError(
            f"hf must have shape (N, C, 3, h, w) matching ll {tuple(ll.shape)}; "
            f"got {tuple(hf.shape)}"
        )
    n, c, h, w = ll.shape
    bands = torch.cat([ll.unsqueeze(2), hf], dim=2).reshape(n, 4 * c, h, w)
    weight = _haar_filters(ll.dtype, ll.device).repeat(c, 1, 1, 1)
    return F.conv_transpose2d(bands, weight, stride=2, groups=c)


# --------------------------------------------------------------------------------------------
# Pixel losses
# --------------------------------------------------------------------------------------------


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean of ``sqrt((pred - target)**2 + eps**2)``: L1 that stays smooth near zero."""
    diff = pred - target
    return torch.sqrt(diff * diff + eps * eps).mean()


def psnr_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Minus the mean per-sample PSNR (dB, data range 1): ``mean_i 10·log10(MSE_i + eps)``.

    L1 or MSE averaged over a batch is dominated by the strongly defocused samples, whose
    errors are a hundred times larger than a near-focus sample's; a model trained on them barely
    notices that it degrades an already sharp input by several dB. The log makes every sample
    count by its *relative* error, the way PSNR gains are judged: halving the error of an
    in-focus patch is worth as much as halving it for a 16 µm one, so leaving a sharp image
    sharp becomes part of the objective.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return (10.0 * torch.log10(mse + _PSNR_EPS)).mean()


def pixel_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Pixel reconstruction loss by name (``"l1"``, ``"mse"``, ``"charbonnier"`` or ``"psnr"``,
    :func:`psnr_loss`).

    Computed in float32 even under autocast, because half-precision squared errors of
    normalised images underflow.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    pred = pred.float()
    target = target.float()
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "charbonnier":
        return charbonnier_loss(pred, target)
    if kind == "psnr":
        return psnr_loss(pred, target)
    raise ValueError(f"kind must be one of {', '.join(map(repr, PIXEL_LOSSES))}; got {kind!r}")


class PixelLoss(nn.Module):
    """Module form of :func:`pixel_loss`."""

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in PIXEL_LOSSES:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, PIXEL_LOSSES))}; got {kind!r}"
            )
        self.kind = kind

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Loss between ``pred`` and ``target`` (both (N, C, H, W))."""
        return pixel_loss(pred, target, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# --------------------------------------------------------------------------------------------
# EFCR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EFCRTerms:
    """The parts of the EFCR regulariser, kept apart for logging.

    Attributes
    ----------
    cr : Tensor
        Scalar ``pos / (neg + rel + 1e-7)``; this is what gets weighted and minimised.
    pos : Tensor
        Distance of the output's bands to the sharp image's bands (scalar).
    neg : Tensor
        Mean detail-band distance of the output to the negatives (scalar; 0 without pairs).
    rel : Tensor
        Extended relative term on the unlabeled images (scalar; 0 without them).
    """

    cr: Tensor
    pos: Tensor
    neg: Tensor
    rel: Tensor

    def to_dict(self) -> dict[str, float]:
        """Plain floats for logs."""
        return {k: float(getattr(self, k).detach()) for k in ("cr", "pos", "neg", "rel")}


def _l1_per_image(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).abs().flatten(1).mean(dim=1)


def _relative_term(
    unlabeled_restored: Tensor, unlabeled: Tensor, reblurred: Sequence[Tensor], weight: float
) -> Tensor:
    # rel = w * mean_n ||Hf f(E) - Hf n||_1 / ||Delta||_1 with Delta = mean_n (Hf n - Hf E),
    # evaluated per image and averaged over the batch, so one flat image cannot dominate.
    _, hf_out = haar_dwt(unlabeled_restored.float())
    _, hf_e = haar_dwt(unlabeled.detach().float())
    hf_neg = [haar_dwt(r.detach().float())[1] for r in reblurred]
    delta = torch.stack([h - hf_e for h in hf_neg]).mean(dim=0)
    delta_norm = delta.abs().flatten(1).mean(dim=1)
    dist = torch.stack([_l1_per_image(hf_out, h) for h in hf_neg]).mean(dim=0)
    return weight * (dist / (delta_norm + _EPS)).mean()


def efcr_terms(
    restored: Tensor | None,
    sharp: Tensor | None,
    blurred: Tensor | None,
    *,
    negatives: Sequence[Tensor] = (),
    unlabeled_restored: Tensor | None = None,
    unlabeled: Tensor | None = None,
    unlabeled_reblurred: Sequence[Tensor] = (),
    rel_weight: float = 0.1,
) -> EFCRTerms:
    """Compute the EFCR regulariser and its parts.

    ``CR = pos / (neg + rel + 1e-7)`` with

    - ``pos = l1(LL restored, LL sharp) + l1(Hf restored, Hf sharp)``,
    - ``neg = mean over n in {blurred, *negatives} of l1(Hf restored, Hf n)``,
    - ``rel = rel_weight * mean over n in R of ||Hf f(E) - Hf n||_1 / ||Delta||_1``, where
      ``R = unlabeled_reblurred`` and ``Delta = mean over n in R of (Hf n - Hf E)``.

    ``l1`` is the mean absolute difference. Minimising CR pulls the output's bands towards the
    sharp image and pushes its detail bands away from blurred versions; the relative term pushes
    the output on real blurry images away from their re-blurred versions, in units of what the
    re-blur removed.

    Parameters
    ----------
    restored : Tensor (N, C, H, W) or None
        Network output on ``blurred`` (the anchor; keeps its graph). ``None`` when there are no
        labeled pairs; then ``pos = neg = 0`` and ``CR = 1 / (rel + 1e-7)``.
    sharp : Tensor (N, C, H, W) or None
        Ground truth (positive; detached here).
    blurred : Tensor (N, C, H, W) or None
        Network input (always a negative; detached here).
    negatives : sequence of Tensor (N, C, H, W)
        More negatives: photometric augmentations and re-blurred versions of ``blurred``.
    unlabeled_restored : Tensor (M, C, h, w) or None
        Network output on the unlabeled images E (anchor; keeps its graph).
    unlabeled : Tensor (M, C, h, w) or None
        The unlabeled images E themselves.
    unlabeled_reblurred : sequence of Tensor (M, C, h, w)
        ``R``: E re-blurred (per image) and augmentations of it.
    rel_weight : float
        Factor on the relative term (0.1 in the paper).

    Returns
    -------
    EFCRTerms

    Notes
    -----
    Unlike the authors' release, nothing here runs under ``torch.no_grad()``: gradients flow
    through ``restored`` and ``unlabeled_restored``; every positive and negative is detached.
    The bands are computed in float32 even under autocast.
    """
    zero = None
    has_pairs = restored is not None
    if has_pairs:
        if sharp is None or blurred is None:
            raise ValueError("efcr_terms needs sharp and blurred together with restored")
        _check_4d(restored, "restored")
        for name, t in (("sharp", sharp), ("blurred", blurred), *(
            (f"negatives[{i}]", n) for i, n in enumerate(negatives)
        )):
            _check_4d(t, name)
            if t.shape != restored.shape:
                raise ValueError(
                    f"{name} must have the shape of restored {tuple(restored.shape)}; "
                    f"got {tuple(t.shape)}"
                )
        ll_out, hf_out = haar_dwt(restored.float())
        ll_s, hf_s = haar_dwt(sharp.detach().float())
        pos = F.l1_loss(ll_out, ll_s) + F.l1_loss(hf_out, hf_s)
        negs = [blurred, *negatives]
        neg = torch.stack(
            [F.l1_loss(hf_out, haar_dwt(n.detach().float())[1]) for n in negs]
        ).mean()
        zero = pos.new_zeros(())
    has_rel = unlabeled_restored is not None
    if has_rel:
        if unlabeled is None or len(unlabeled_reblurred) == 0:
            raise ValueError(
                "efcr_terms needs unlabeled and at least one unlabeled_reblurred image together "
                "with unlabeled_restored"
            )
        _check_4d(unlabeled_restored, "unlabeled_restored")
        for name, t in (("unlabeled", unlabeled), *(
            (f"unlabeled_reblurred[{i}]", r) for i, r in enumerate(unlabeled_reblurred)
        )):
            _check_4d(t, name)
            if t.shape != unlabeled_restored.shape:
                raise ValueError(
                    f"{name} must have the shape of unlabeled_restored "
                    f"{tuple(unlabeled_restored.shape)}; got {tuple(t.shape)}"
                )
        rel = _relative_term(unlabeled_restored, unlabeled, unlabeled_reblurred, rel_weight)
        if zero is None:
            zero = rel.new_zeros(())
    if zero is None:
        raise ValueError("efcr_terms needs labeled pairs (restored), unlabeled images, or both")
    if not has_pairs:
        pos = neg = zero
    if not has_rel:
        rel = zero
    cr = pos / (neg + rel + _EPS) if has_pairs else 1.0 / (rel + _EPS)
    return EFCRTerms(cr=cr, pos=pos, neg=neg, rel=rel)


def efcr_loss(
    restored: Tensor | None,
    sharp: Tensor | None,
    blurred: Tensor | None,
    *,
    negatives: Sequence[Tensor] = (),
    unlabeled_restored: Tensor | None = None,
    unlabeled: Tensor | None = None,
    unlabeled_reblurred: Sequence[Tensor] = (),
    rel_weight: float = 0.1,
) -> Tensor:
    """The scalar EFCR regulariser ``CR``; see :func:`efcr_terms` for the definition.

    The authors' released implementation computed this under ``torch.no_grad()`` and so never
    produced a gradient; this one does (through ``restored`` and ``unlabeled_restored``).
    """
    return efcr_terms(
        restored,
        sharp,
        blurred,
        negatives=negatives,
        unlabeled_restored=unlabeled_restored,
        unlabeled=unlabeled,
        unlabeled_reblurred=unlabeled_reblurred,
        rel_weight=rel_weight,
    ).cr


class EFCRLoss(nn.Module):
    """``weight * CR``, the EFCR regulariser as a module (see :func:`efcr_terms`).

    Parameters
    ----------
    weight : float
        λ, the factor on CR in ``L = pixel_loss + λ·CR`` (authors: 5e-4).
    rel_weight : float
        Factor on the relative term (0.1 in the paper).

    Notes
    -----
    The negatives are passed in rather than made here, so the module stays deterministic and
    the caller controls the random re-blur (see :mod:`napari_mpt_deblur.train.reblur`). The
    released code ran this loss under ``torch.no_grad()``, so it never trained anything; this
    module keeps the anchors' graph.
    """

    def __init__(self, weight: float = 5e-4, rel_weight: float = 0.1) -> None:
        super().__init__()
        if weight < 0 or rel_weight < 0:
            raise ValueError(
                f"weight and rel_weight must be >= 0; got weight={weight!r}, "
                f"rel_weight={rel_weight!r}"
            )
        self.weight = float(weight)
        self.rel_weight = float(rel_weight)
        self.last_terms: EFCRTerms | None = None

    def forward(
        self,
        restored: Tensor | None,
        sharp: Tensor | None,
        blurred: Tensor | None,
        *,
        negatives: Sequence[Tensor] = (),
        unlabeled_restored: Tensor | None = None,
        unlabeled: Tensor | None = None,
        unlabeled_reblurred: Sequence[Tensor] = (),
    ) -> Tensor:
        """Weighted CR; the unweighted parts are kept in ``self.last_terms`` for logging."""
        terms = efcr_terms(
            restored,
            sharp,
            blurred,
            negatives=negatives,
            unlabeled_restored=unlabeled_restored,
            unlabeled=unlabeled,
            unlabeled_reblurred=unlabeled_reblurred,
            rel_weight=self.rel_weight,
        )
        self.last_terms = terms
        return self.weight * terms.cr

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, rel_weight={self.rel_weight:g}"

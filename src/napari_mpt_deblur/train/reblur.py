"""Degradations applied on the fly during training: physical re-blur and intensity jitter.

These build EFCR's negatives (blurred inputs re-blurred, photometric augmentations) and the
self-supervised re-blur pairs ``(G(E), E)`` on images without ground truth. Everything runs on
torch tensors already on the training device, with an explicit ``torch.Generator`` so a run is
reproducible step by step.

Unlike the authors' release, which re-blurred with near-box Gaussians (σ = 10, 3-7 px kernels)
chosen once per batch, re-blur kernels here are small physical defocus PSFs (pupil-function
model from :mod:`napari_mpt_deblur.simulate.optics`) drawn independently for each image, and
the intensity jitter is gain/offset/gamma/noise for single-channel fluorescence rather than RGB
colour jitter.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._dataclass_io import renamed_arguments

__all__ = [
    "PhotometricJitter",
    "ReblurBank",
    "build_reblur_bank",
    "depth_of_field_um",
    "make_negatives",
    "make_reblurred_set",
]

logger = logging.getLogger(__name__)


@renamed_arguments(refractive_index="immersion_index")
def depth_of_field_um(numerical_aperture: float, wavelength_nm: float, immersion_index: float
                      ) -> float:
    """Deprecated: :func:`napari_mpt_deblur.simulate.depth_of_field_um`, the one definition
    (keyword arguments; this alias keeps its old order, NA first)."""
    from ..simulate import optics

    warnings.warn("napari_mpt_deblur.train.reblur.depth_of_field_um is deprecated; use "
                  "napari_mpt_deblur.simulate.depth_of_field_um", DeprecationWarning, stacklevel=3)
    return optics.depth_of_field_um(numerical_aperture=numerical_aperture,
                                    wavelength_nm=wavelength_nm, immersion_index=immersion_index)


class ReblurBank:
    """A fixed set of small blur kernels, applied per image by a grouped convolution.

    Parameters
    ----------
    kernels : array or Tensor, shape (K, k, k)
        Non-negative kernels with odd side ``k``; each is normalised to unit sum.
    defocus_um : sequence of float, optional
        Defocus each kernel was made with (recorded in metadata only).

    Notes
    -----
    Borders are handled by reflection, so a re-blurred patch has no dark frame that a network
    could learn to detect.
    """

    def __init__(self, kernels: np.ndarray | Tensor, defocus_um: Sequence[float] | None = None
                 ) -> None:
        k = torch.as_tensor(np.asarray(kernels, dtype=np.float32) if not isinstance(
            kernels, Tensor) else kernels.detach().float())
        if k.ndim == 2:
            k = k[None]
        if k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] % 2 != 1:
            raise ValueError(
                f"kernels must have shape (K, k, k) with odd k; got {tuple(k.shape)}"
            )
        if (k < 0).any() or not torch.isfinite(k).all():
            raise ValueError("kernels must be finite and non-negative")
        sums = k.sum(dim=(1, 2), keepdim=True)
        if (sums <= 0).any():
            raise ValueError("every kernel must have a positive sum")
        # Stored flipped, so that conv2d (a correlation) applies a true convolution.
        self._kernels = (k / sums).flip(-1, -2).contiguous()
        self.defocus_um = tuple(float(d) for d in defocus_um) if defocus_um is not None else None

    @property
    def kernels(self) -> Tensor:
        """Unit-sum kernels, shape (K, k, k)."""
        return self._kernels.flip(-1, -2)

    def __len__(self) -> int:
        return int(self._kernels.shape[0])

    @property
    def kernel_size(self) -> int:
        """Side of the kernels in pixels."""
        return int(self._kernels.shape[-1])

    def to(self, device: torch.device | str) -> ReblurBank:
        """Move the kernels to ``device`` (in place; returns self)."""
        self._kernels = self._kernels.to(device)
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random kernel indices (on the CPU)."""
        return torch.randint(len(self), (n,), generator=generator)

    def apply(self, x: Tensor, index: Tensor | Sequence[int]) -> Tensor:
        """Blur image ``i`` of ``x`` (N, C, H, W) with kernel ``index[i]``."""
        if x.ndim != 4:
            raise ValueError(f"x must have shape (N, C, H, W); got {tuple(x.shape)}")
        n, c, h, w = x.shape
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() != n:
            raise ValueError(
                f"index must hold one kernel index per image ({n}); got {index.numel()}"
            )
        ks = self.kernel_size
        pad = ks // 2
        weight = self._kernels.to(device=x.device, dtype=x.dtype)[index.to(x.device)]
        weight = weight.repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, k, k)
        mode = "reflect" if pad < min(h, w) else "replicate"
        padded = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
        return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Blur each image of ``x`` with its own randomly chosen kernel."""
        return self.apply(x, self.sample(x.shape[0], generator))


@renamed_arguments(refractive_index="immersion_index")
def build_reblur_bank(
    *,
    pixel_size_um: float,
    numerical_aperture: float,
    wavelength_nm: float,
    immersion_index: float = 1.0,
    defocus_dof: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    max_kernel_size: int = 31,
) -> ReblurBank:
    """Small physical defocus PSFs for re-blurring, from the pupil-function model.

    Parameters
    ----------
    pixel_size_um : float
        Camera pixel size in the sample plane, µm.
    numerical_aperture : float
        Objective NA.
    wavelength_nm : float
        Emission wavelength, nm.
    immersion_index : float
        Immersion refractive index (1.0 dry, 1.515 oil); ``refractive_index`` is its deprecated
        name.
    defocus_dof : sequence of float
        Defocus of each kernel in multiples of the depth of field ``λ·n/NA²``; small values
        (0.5-2) give blurs of a few pixels, much weaker than the defocus being corrected.
    max_kernel_size : int
        Kernels are cropped (centred) to at most this odd side and renormalised.

    Returns
    -------
    ReblurBank
    """
    from ..simulate import optics

    dof = optics.depth_of_field_um(numerical_aperture=numerical_aperture,
                                   wavelength_nm=wavelength_nm, immersion_index=immersion_index)
    kernels = []
    defocus = []
    for factor in defocus_dof:
        z_um = float(factor) * dof
        cfg = optics.OpticsConfig(
            numerical_aperture=numerical_aperture,
            wavelength_nm=wavelength_nm,
            pixel_size_um=pixel_size_um,
            immersion_index=immersion_index,
            defocus_um=z_um,
        )
        psf = optics.defocus_psf(cfg, dtype=np.float32)
        # The automatic PSF size keeps a wide diffraction margin; crop it to a kernel that
        # still holds almost all of the energy (renormalised), for a cheap convolution.
        kernels.append(_center_crop_pad(psf, _energy_side(psf, 0.99, max_kernel_size)))
        defocus.append(z_um)
    side = max(k.shape[0] for k in kernels)
    stack = np.stack([_center_crop_pad(k, side) for k in kernels])
    logger.debug("re-blur bank: defocus %s µm, kernel %d px", [f"{d:.2f}" for d in defocus], side)
    return ReblurBank(stack, defocus_um=defocus)


def _energy_side(psf: np.ndarray, fraction: float, max_side: int) -> int:
    """Smallest odd centred square side holding ``fraction`` of the PSF energy (capped)."""
    c = psf.shape[0] // 2
    total = float(psf.sum())
    for r in range(c + 1):
        if 2 * r + 1 >= max_side:
            return max_side | 1
        if float(psf[c - r : c + r + 1, c - r : c + r + 1].sum()) >= fraction * total:
            return max(2 * r + 1, 3)
    return psf.shape[0]


def _center_crop_pad(kernel: np.ndarray, side: int) -> np.ndarray:
    """Centre ``kernel`` in an odd ``side`` x ``side`` array (cropping or zero padding)."""
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2:
        raise ValueError(f"PSF must be 2-D; got shape {kernel.shape}")
    side = side | 1
    out = np.zeros((side, side), np.float32)
    h, w = kernel.shape
    cy, cx = h // 2, w // 2
    r = side // 2
    y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
    x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
    out[r - (cy - y0): r + (y1 - cy), r - (cx - x0): r + (x1 - cx)] = kernel[y0:y1, x0:x1]
    s = out.sum()
    return out / s if s > 0 else out


@dataclass(frozen=True)
class PhotometricJitter:
    """Random per-image intensity changes for normalised fluorescence patches.

    ``y = gain · sign(x)|x|^gamma + offset + noise``, each drawn per image, so the network is
    contrasted against versions of the blurred input that differ in brightness, contrast and
    noise level but not in sharpness.

    Attributes
    ----------
    gain : (float, float)
        Range of the multiplicative gain.
    offset : (float, float)
        Range of the additive offset (normalised units).
    gamma : (float, float)
        Range of the gamma exponent (log-uniform).
    noise_std : (float, float)
        Range of the standard deviation of added Gaussian noise (normalised units).
    """

    gain: tuple[float, float] = (0.8, 1.25)
    offset: tuple[float, float] = (-0.05, 0.05)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: tuple[float, float] = (0.0, 0.02)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Jitter each image of ``x`` (N, C, H, W)."""
        n = x.shape[0]
        shape = (n,) + (1,) * (x.ndim - 1)

        def uniform(lo: float, hi: float) -> Tensor:
            u = torch.rand(shape, generator=generator)
            return (lo + (hi - lo) * u).to(device=x.device, dtype=x.dtype)

        gain = uniform(*self.gain)
        offset = uniform(*self.offset)
        gamma = torch.exp(uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
        sigma = uniform(*self.noise_std)
        noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        shaped = torch.sign(x) * x.abs().clamp_min(1e-8).pow(gamma)
        return gain * shaped + offset + sigma * noise


def make_negatives(
    blurred: Tensor,
    bank: ReblurBank,
    *,
    generator: torch.Generator | None = None,
    jitter: PhotometricJitter | None = None,
    n_photometric: int = 1,
    n_reblur: int = 1,
) -> list[Tensor]:
    """EFCR negatives beyond ``blurred`` itself: jittered and re-blurred copies (detached).

    Parameters
    ----------
    blurred : Tensor (N, C, H, W)
        The network inputs.
    bank : ReblurBank
        Small physical defocus PSFs.
    generator : torch.Generator, optional
        Source of randomness (CPU generator).
    jitter : PhotometricJitter, optional
        Intensity augmentation; default ranges if omitted.
    n_photometric, n_reblur : int
        How many jittered and how many re-blurred copies.

    Returns
    -------
    list of Tensor
    """
    jitter = jitter or PhotometricJitter()
    with torch.no_grad():
        b = blurred.detach()
        negs = [jitter(b, generator) for _ in range(n_photometric)]
        negs += [bank(b, generator) for _ in range(n_reblur)]
    return negs


def make_reblurred_set(
    images: Tensor,
    bank: ReblurBank,
    *,
    generator: torch.Generator | None = None,
    jitter: PhotometricJitter | None = None,
    n_reblur: int = 1,
    n_augmented: int = 1,
) -> tuple[Tensor, list[Tensor]]:
    """``R = {G(E), augmentations of G(E)}`` for EFCR's relative term (detached).

    Returns
    -------
    reblurred : Tensor
        The first ``G(E)``, also usable as the input of a self-supervised pair ``(G(E), E)``.
    members : list of Tensor
        All members of ``R`` (``reblurred`` first).
    """
    if n_reblur < 1:
        raise ValueError(f"n_reblur must be >= 1; got {n_reblur}")
    jitter = jitter or PhotometricJitter()
    with torch.no_grad():
        e = images.detach()
        blurred = [bank(e, generator) for _ in range(n_reblur)]
        members = list(blurred)
        for i in range(n_augmented):
            members.append(jitter(blurred[i % n_reblur], generator))
    return blurred[0], members

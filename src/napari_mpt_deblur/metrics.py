"""Image-quality metrics with one stated convention (used by evaluation, demo and fine-tuning).

PSNR and SSIM are computed after normalising both images by the *reference* (sharp) image's
min-max range, so scores do not depend on the camera's units. ``data_range`` is then 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim"]


def _normalise_pair(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    img = np.asarray(image, dtype=np.float64)
    if img.shape != ref.shape:
        raise ValueError(f"image {img.shape} and reference {ref.shape} differ in shape")
    lo, hi = float(ref.min()), float(ref.max())
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    return (img - lo) * scale, (ref - lo) * scale


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB with the reference's range as the peak."""
    img, ref = _normalise_pair(image, reference)
    mse = float(np.mean((img - ref) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """SSIM (Gaussian window, sigma 1.5, as in Wang et al. 2004) on reference-normalised images."""
    from skimage.metrics import structural_similarity

    img, ref = _normalise_pair(image, reference)
    return float(
        structural_similarity(
            img, ref, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )

"""Input checks at the library boundary: each raises a precise built-in error naming the problem."""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED_KINDS = {"u": "unsigned integer", "i": "signed integer", "f": "floating point"}


def check_image_array(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as an ndarray after checking dtype, size and finiteness.

    Raises ``TypeError`` for unsupported dtypes (bool, complex, object, strings) and
    ``ValueError`` for empty arrays, NaN or Inf values.
    """
    if hasattr(image, "compute") and not isinstance(image, np.ndarray):
        raise TypeError(f"{name} is a lazy array; pass it to deblur(), which handles dask arrays")
    array = np.asarray(image)
    if array.dtype.kind not in SUPPORTED_KINDS:
        raise TypeError(
            f"{name} has dtype {array.dtype}, which cannot be deblurred; supported are "
            "unsigned/signed integers and floating point (convert complex data to magnitude, "
            "and masks are not images)"
        )
    if array.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (Y, X); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum() - n_nan)
            raise ValueError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite values; replace them "
                "(e.g. np.nan_to_num) before deblurring"
            )
    return array


def check_positive(value: float, name: str) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return float(value)


def check_choice(value: str, choices: list[str] | tuple[str, ...], name: str) -> str:
    """Raise ``ValueError`` listing ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value

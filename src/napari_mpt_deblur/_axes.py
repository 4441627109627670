"""Axes strings ("YX", "ZYX", "TCZYX", "YXC" ...): inference from shapes and validation."""

from __future__ import annotations

VALID_AXES = "TZCYXQ"
_ALIASES = {"S": "C", "I": "Q"}


def validate_axes(axes: str, ndim: int) -> str:
    """Normalise and check an axes string against the array's number of dimensions.

    Letters: T (time), Z (depth), C (channel; S is accepted as an alias), Y, X, and Q for any
    other stacking axis. Y and X must each appear once.
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'ZYX'; got {type(axes).__name__}")
    norm = "".join(_ALIASES.get(a, a) for a in axes.strip().upper())
    bad = sorted(set(norm) - set(VALID_AXES))
    if bad:
        raise ValueError(
            f"axes {axes!r} contains unknown letters {bad}; use letters from {VALID_AXES!r} "
            "(T time, Z depth, C channel, Y rows, X columns, Q other)"
        )
    if len(norm) != ndim:
        raise ValueError(
            f"axes {axes!r} has {len(norm)} letters but the image has {ndim} dimensions"
        )
    if len(set(norm)) != len(norm):
        raise ValueError(f"axes {axes!r} repeats a letter")
    if "Y" not in norm or "X" not in norm:
        raise ValueError(f"axes {axes!r} must contain both 'Y' and 'X'")
    return norm


def infer_axes(shape: tuple[int, ...], model_channels: int = 1) -> str:
    """Guess the layout of an image from its shape (pass ``axes`` to be explicit).

    The last two axes are Y and X, except that a trailing axis of size 3 or 4 (with a larger
    plane before it) is read as colour channels (YXC), as napari does for RGB. A leading axis
    whose size matches a multi-channel model is read as channels; other leading axes are
    stacks (Z, then T).
    """
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"an image needs at least 2 dimensions; got shape {tuple(shape)}")
    if ndim >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        stack = ndim - 3
        return _stack_letters(stack) + "YXC"
    if ndim >= 3 and model_channels > 1 and shape[-3] == model_channels:
        return _stack_letters(ndim - 3) + "CYX"
    return _stack_letters(ndim - 2) + "YX"


def _stack_letters(n: int) -> str:
    if n > 3:
        raise ValueError(f"cannot infer axes for {n + 2}-D data; pass axes explicitly")
    return {0: "", 1: "Z", 2: "TZ", 3: "QTZ"}[n]

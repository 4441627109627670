"""Typed progress records that training code yields and GUIs or CLIs consume.

Kept free of torch so that a widget can import it without loading PyTorch. A napari
``thread_worker`` forwards these records across threads unchanged (CAREamics-style protocol).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainUpdate", "UpdateKind"]


class UpdateKind(enum.Enum):
    """What a :class:`TrainUpdate` reports."""

    LOSS = "loss"
    """Training loss of one step; ``value`` is a dict of floats (``loss`` plus its parts)."""
    VALIDATION = "validation"
    """Validation scores; ``value`` is a dict of floats."""
    PREVIEW = "preview"
    """Current output on the held-out crop: ``value`` has ``image`` and ``input`` (2-D float32,
    model units), ``norm_range`` ((lo, hi) to map them back to the data's units), ``box``
    ((y, x, h, w) in the source image) and ``source`` (its name)."""
    CHECKPOINT = "checkpoint"
    """A file was written; ``value`` is a dict with ``path`` and ``kind`` ("best"/"state")."""
    DONE = "done"
    """The run ended; ``value`` is a dict with ``reason`` and summary scores."""
    ERROR = "error"
    """The run failed; ``value`` is the exception (it is re-raised after this record)."""


@dataclass(frozen=True)
class TrainUpdate:
    """One progress record.

    Attributes
    ----------
    kind : UpdateKind
        What is reported.
    step : int
        Optimiser steps completed when the record was made.
    total : int
        Steps planned for the run.
    value : Any
        Payload; its type depends on ``kind`` (see :class:`UpdateKind`).
    """

    kind: UpdateKind
    step: int
    total: int
    value: Any = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (arrays and exceptions become short descriptions)."""
        value = self.value
        if isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"
        elif isinstance(value, dict):
            value = {
                k: (f"<array {getattr(v, 'shape', '')}>" if hasattr(v, "shape") else v)
                for k, v in value.items()
            }
        return {"kind": self.kind.value, "step": self.step, "total": self.total, "value": value}

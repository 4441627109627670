"""Training: supervised fitting on simulated pairs, EFCR, and fine-tuning on unlabeled images,
both stepped by the one trainer (:mod:`.engine`).

Names are imported lazily, so ``import napari_mpt_deblur.train`` does not load torch until a
training function is used; :class:`TrainUpdate` and :class:`UpdateKind` are torch-free.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "FINETUNE_PRESETS",
    "EFCRLoss",
    "EfcrConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "History",
    "OpticsHints",
    "OptimConfig",
    "StepLoop",
    "TrainConfig",
    "TrainUpdate",
    "Trainer",
    "UpdateKind",
    "efcr_loss",
    "efcr_terms",
    "finetune",
    "finetune_iter",
    "fit",
    "get_finetune_preset",
    "haar_dwt",
    "list_finetune_presets",
    "pixel_loss",
]

_LAZY = {
    "TrainConfig": ".config",
    "OptimConfig": ".config",
    "EfcrConfig": ".config",
    "OpticsHints": ".config",
    "Trainer": ".engine",
    "StepLoop": ".engine",
    "TrainUpdate": ".updates",
    "UpdateKind": ".updates",
    "EFCRLoss": ".losses",
    "efcr_loss": ".losses",
    "efcr_terms": ".losses",
    "haar_dwt": ".losses",
    "pixel_loss": ".losses",
    "History": ".loop",
    "fit": ".loop",
    "FINETUNE_PRESETS": ".finetune",
    "FinetuneConfig": ".finetune",
    "FinetuneResult": ".finetune",
    "finetune": ".finetune",
    "finetune_iter": ".finetune",
    "get_finetune_preset": ".finetune",
    "list_finetune_presets": ".finetune",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import EfcrConfig, OpticsHints, OptimConfig, TrainConfig
    from .engine import StepLoop, Trainer
    from .finetune import (
        FINETUNE_PRESETS,
        FinetuneConfig,
        FinetuneResult,
        finetune,
        finetune_iter,
        get_finetune_preset,
        list_finetune_presets,
    )
    from .loop import History, fit
    from .losses import EFCRLoss, efcr_loss, efcr_terms, haar_dwt, pixel_loss
    from .updates import TrainUpdate, UpdateKind


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

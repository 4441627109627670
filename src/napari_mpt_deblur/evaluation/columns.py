"""Model columns of the quality table: how a command-line word becomes a model to score.

``mpt-deblur evaluate``, ``benchmarks/eval_quality.py`` and the scripts all name their columns
the same way (a bundled model name, a checkpoint path, ``NAME@x8`` for 8-view test-time
augmentation, ``NAME@blind`` for an optics-conditioned model told nothing of the microscope),
so the parsing (:func:`split_views`, :func:`split_blind`, :func:`model_columns`) and the
loading of those specs into models (``_resolve_models``) live here, once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .protocol import BLURRED, RICHARDSON_LUCY, RICHARDSON_LUCY_REAL

if TYPE_CHECKING:
    from ..models.info import DeblurModel

logger = logging.getLogger(__name__)

__all__ = ["Ensembled", "model_columns", "split_blind", "split_views"]


@dataclass(frozen=True)
class Ensembled:
    """A model column run with test-time augmentation (``deblur(..., ensemble=views)``) and/or
    blind (``blind``: an optics-conditioned model gets no optics, as for an image whose
    microscope nobody knows; every other column is told each image set's true optics, which
    only a conditioned model uses).

    ``model`` is anything a column accepts: a loaded model, a bundled name or a checkpoint path.
    """

    model: DeblurModel | str | os.PathLike | None
    views: int = 8
    blind: bool = False


def _resolve_models(models: Mapping[str, DeblurModel | str | os.PathLike | Ensembled | None]
                    | None, device: str) -> dict[str, DeblurModel | Ensembled]:
    """Column name -> loaded model (or :class:`Ensembled` of one): specs become models here."""
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict of name -> model (or checkpoint, or None); got "
            f"{type(models).__name__}"
        )
    reserved = {BLURRED, RICHARDSON_LUCY, RICHARDSON_LUCY_REAL}
    resolved: dict[str, DeblurModel | Ensembled] = {}
    for name, model in models.items():
        if not isinstance(name, str) or not name or name in reserved:
            raise ValueError(
                f"model names must be non-empty and not {sorted(reserved)}; got {name!r}"
            )
        views, blind = 1, False
        if isinstance(model, Ensembled):
            from ..engine.predict import check_ensemble

            model, views, blind = model.model, check_ensemble(model.views), model.blind
        if model is None or isinstance(model, (str, os.PathLike)):
            from ..models.pretrained import canonical_name
            from ..models.resolve import resolve_model

            # the one cached road from a name to a network (old names accepted silently)
            model = resolve_model(canonical_name(name if model is None else model),
                                  device=device)
        resolved[name] = Ensembled(model, views, blind) if views > 1 or blind else model
    return resolved


def _unwrap(model: DeblurModel | Ensembled) -> tuple[DeblurModel, int]:
    return (model.model, model.views) if isinstance(model, Ensembled) else (model, 1)


def _is_blind(model: DeblurModel | Ensembled) -> bool:
    return isinstance(model, Ensembled) and model.blind


def split_blind(value: str) -> tuple[str, bool]:
    """``"mpt-tiny@x8@blind"`` -> ``("mpt-tiny@x8", True)``: the column runs without optics."""
    head, sep, tail = value.rpartition("@")
    if sep and head and tail.lower() == "blind":
        return head, True
    return value, False


def split_views(value: str) -> tuple[str, int]:
    """``"mpt-tiny@x8"`` -> ``("mpt-tiny", 8)``: the model and its test-time views."""
    from ..engine.predict import ENSEMBLE_SIZES

    head, sep, tail = value.rpartition("@x")
    if not sep or not head:
        return value, 1
    if not tail.isdigit() or int(tail) not in ENSEMBLE_SIZES:
        raise ValueError(
            f"{value!r}: the test-time views after '@x' must be one of "
            f"{', '.join(map(str, ENSEMBLE_SIZES))} (e.g. mpt-tiny@x8)"
        )
    return head, int(tail)


def model_columns(values: list[str] | None) -> dict[str, Any]:
    """Column name -> model spec; ``NAME@x8`` adds a column with 8-view test-time augmentation,
    ``NAME@blind`` one that withholds the optics from an optics-conditioned model."""
    from ..models.pretrained import bundled_models

    bundled = bundled_models()
    if values is None:
        if not bundled:
            logger.warning("no trained models are bundled; evaluating the baselines only")
        return {name: name for name in bundled}
    entries: dict[str, Any] = {}
    for value in values:
        if value.lower() == "none":
            continue
        spec, blind = split_blind(value)
        spec, views = split_views(spec)
        name = spec if spec in bundled else Path(spec).name.removesuffix(".safetensors")
        if views > 1:
            name = f"{name} ×{views}"
        if blind:
            name = f"{name} (blind)"
        base, k = name, 2
        while name in entries:
            name, k = f"{base} ({k})", k + 1
        entries[name] = Ensembled(spec, views, blind) if views > 1 or blind else spec
    return entries

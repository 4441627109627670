"""The records of an evaluation run: one :class:`Score` per cell, an :class:`EvalResult` per run.

Kept apart from the code that produces them so that ``results.json`` files written by earlier
runs can be read back (:meth:`EvalResult.from_dict`) and re-tabulated without importing the
engine or the models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from .protocol import EvalConfig, _key

__all__ = ["EvalResult", "Score"]


@dataclass(frozen=True)
class Score:
    """One table entry before averaging.

    Attributes
    ----------
    set : str
        Image-set key (``"w1"``, ``"w2"``) or ``"real"`` for the real pair.
    image : str
        File name.
    defocus_um : float
        Defocus level.
    method : str
        Method (column) name.
    psnr_db, ssim : float
        Metrics against the sharp reference (reference-normalised).
    seconds : float
        Wall time of the method on this image.
    affine : (float, float), optional
        ``(gain, offset)`` of the real-pair fit.
    """

    set: str
    image: str
    defocus_um: float
    method: str
    psnr_db: float
    ssim: float
    seconds: float = 0.0
    affine: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        data = dataclasses.asdict(self)
        data["affine"] = None if self.affine is None else list(self.affine)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("affine") is not None:
            data["affine"] = tuple(data["affine"])
        return cls(**data)


@dataclass
class EvalResult:
    """Scores of one evaluation run, with what is needed to reproduce and present them.

    Attributes
    ----------
    config : EvalConfig
    methods : list of str
        Column order: the baselines, then the models.
    scores : list of Score
        Simulated-defocus scores, one per image, level and method.
    real_pair : list of Score
        Real-pair scores (empty when skipped).
    rl_iterations : dict
        ``{wavelength_nm: {defocus_um: n}}`` as strings (from :class:`RLTuning`).
    rl_settings : dict
        What the tuning depended on (validation files, criterion...; :class:`RLTuning`).
    models : dict
        Model name -> provenance (``model.info``: source, SHA-256, ...).
    images : dict
        Set key -> file names used.
    environment : dict
        Versions, CPU count, platform and date.
    seconds : float
        Wall time of the whole run.
    examples : dict
        Row label -> {panel title -> crop}, for :func:`save_example_figure` (not serialised).
    """

    config: EvalConfig
    methods: list[str]
    scores: list[Score] = field(default_factory=list)
    real_pair: list[Score] = field(default_factory=list)
    rl_iterations: dict[str, dict[str, int]] = field(default_factory=dict)
    rl_settings: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def summary(self, *, by_set: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
        """Mean and sample standard deviation over images.

        Returns
        -------
        dict
            ``{row: {method: {"psnr_db": (mean, std), "ssim": (mean, std), "n": n,
            "seconds": mean}}}`` with rows ``"4"`` (µm) or, ``by_set``, ``"w1/4"``.
        """
        groups: dict[str, dict[str, list[Score]]] = {}
        for s in self.scores:
            row = f"{s.set}/{_key(s.defocus_um)}" if by_set else _key(s.defocus_um)
            groups.setdefault(row, {}).setdefault(s.method, []).append(s)
        return {
            row: {method: _stats(items) for method, items in methods.items()}
            for row, methods in groups.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything except the example crops, JSON-serialisable."""
        return {
            "format_version": 1,
            "package_version": __version__,
            "config": self.config.to_dict(),
            "methods": list(self.methods),
            "summary": _jsonable(self.summary()),
            "summary_by_set": _jsonable(self.summary(by_set=True)),
            "real_pair": [s.to_dict() for s in self.real_pair],
            "scores": [s.to_dict() for s in self.scores],
            "rl_iterations": self.rl_iterations,
            "rl_settings": self.rl_settings,
            "models": self.models,
            "images": self.images,
            "environment": self.environment,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild from :meth:`to_dict` (e.g. ``results.json``), without example crops."""
        return cls(
            config=EvalConfig.from_dict(data["config"]),
            methods=list(data["methods"]),
            scores=[Score.from_dict(s) for s in data.get("scores", [])],
            real_pair=[Score.from_dict(s) for s in data.get("real_pair", [])],
            rl_iterations=dict(data.get("rl_iterations", {})),
            rl_settings=dict(data.get("rl_settings", {})),
            models=dict(data.get("models", {})),
            images=dict(data.get("images", {})),
            environment=dict(data.get("environment", {})),
            seconds=float(data.get("seconds", 0.0)),
        )


def _stats(items: Sequence[Score]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(items)}
    for name in ("psnr_db", "ssim"):
        values = np.array([getattr(s, name) for s in items], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = (float(values.mean()), std)
    out["seconds"] = float(np.mean([s.seconds for s in items]))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj

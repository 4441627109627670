"""Optional deep-learning nuclei detectors: StarDist and Cellpose.

Used only when the user has the package and its weights stored locally: both are imported
lazily, and neither is ever allowed to download anything (a missing model raises
``FileNotFoundError`` saying how to fetch it once by hand). Each returns a label image, which
:func:`~napari_mpt_deblur.detect.classical._result_from_labels` summarises like the watershed's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .classical import normalize_percentile
from .config import DetectionConfig


def _run_stardist(image: np.ndarray, cfg: DetectionConfig) -> np.ndarray:
    try:
        from stardist.models import StarDist2D
    except ImportError as exc:
        raise ImportError(
            "method='stardist' needs the 'stardist' package (and TensorFlow): "
            "pip install stardist tensorflow; or use method='log' or 'watershed'"
        ) from exc
    folder = _stardist_folder(cfg)
    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    norm = normalize_percentile(image, cfg.normalize_percentiles)
    kwargs: dict[str, Any] = {}
    if not isinstance(cfg.threshold, str):
        kwargs["prob_thresh"] = float(cfg.threshold)
    labels, _details = model.predict_instances(norm, **kwargs)
    return np.asarray(labels)


def _stardist_folder(cfg: DetectionConfig) -> Path:
    if cfg.model_path is not None:
        folder = Path(cfg.model_path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model_path {str(folder)!r} is not a StarDist model folder (no config.json)"
            )
        return folder
    name = cfg.model_name or "2D_versatile_fluo"
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    cache = keras_home / "models" / "StarDist2D" / name
    configs = sorted(cache.glob("**/config.json")) if cache.is_dir() else []
    if not configs:
        raise FileNotFoundError(
            f"StarDist model {name!r} is not in the local cache {str(cache)!r}, and this "
            "plugin never downloads weights. Load it once with StarDist2D.from_pretrained("
            f"{name!r}) yourself, or pass model_path= a model folder"
        )
    return configs[0].parent


def _run_cellpose(image: np.ndarray, cfg: DetectionConfig) -> np.ndarray:
    try:
        from cellpose import models as cp_models
    except ImportError as exc:
        raise ImportError(
            "method='cellpose' needs the 'cellpose' package: pip install cellpose; "
            "or use method='log' or 'watershed'"
        ) from exc
    weights = _cellpose_weights(cfg, getattr(cp_models, "MODEL_DIR", None))
    model = cp_models.CellposeModel(gpu=False, pretrained_model=str(weights))
    norm = normalize_percentile(image, cfg.normalize_percentiles)
    output = model.eval(norm, diameter=cfg.diameter_px)
    return np.asarray(output[0])


def _cellpose_weights(cfg: DetectionConfig, model_dir: Any) -> Path:
    if cfg.model_path is not None:
        path = Path(cfg.model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model_path {str(path)!r} is not a Cellpose model file")
        return path
    name = cfg.model_name or "nuclei"
    if model_dir is None:
        env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
        model_dir = Path(env) if env else Path.home() / ".cellpose" / "models"
    model_dir = Path(model_dir)
    # Cellpose 2/3 store built-in weights as '<name>torch_0', custom and newer ones as '<name>'.
    for candidate in (model_dir / name, model_dir / f"{name}torch_0"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Cellpose model {name!r} is not in the local model folder {str(model_dir)!r}, and "
        "this plugin never downloads weights. Run Cellpose once yourself to fetch it, or "
        "pass model_path= a model file"
    )

"""Training configuration: the shared parts, and the frozen dataclass of a supervised run.

A run is reproducible from its config alone (plus the data it names), so the config is stored in
every checkpoint and in the resumable state, and read from JSON or YAML files (the bundled
models' recipes are in ``configs/recipes/``).

Shared parts (:class:`~napari_mpt_deblur._dataclass_io.ConfigPart`): :class:`OptimConfig`
(optimiser, schedule, clipping, mixed precision) and :class:`EfcrConfig` (the EFCR loss and its
re-blur operator) are defined, documented and validated once here; the optics part,
:class:`~napari_mpt_deblur.simulate.optics.OpticsHints` (optical hints for the re-blur operator,
shared with the evaluation protocol), is defined with the optics and re-exported here.
:class:`TrainConfig` and :class:`~napari_mpt_deblur.train.finetune.FinetuneConfig` are
composed of them (both subclass :class:`RunConfig`, which also gives them the JSON/YAML round
trip): each holds a part as one field (``cfg.optim``, ``cfg.efcr``; fine-tuning also
``cfg.optics``), with its own default part where the run kinds differ (fine-tuning starts from a
trained model: a small learning rate, a short warm-up). The parts' fields still read and write
flat (:func:`~napari_mpt_deblur._dataclass_io.composed_of_parts`): ``cfg.lr``,
``TrainConfig(lr=...)``, ``dataclasses.replace(cfg, lr=...)``, the ``lr:`` key of a recipe, the
``config`` of every resumable state and the ``training`` header of every checkpoint written so
far, and ``to_dict()`` writes them flat, so older versions read what this one writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._dataclass_io import (
    ConfigPart,
    DictRoundTrip,
    check_keys,
    composed_of_parts,
    flat_field_names,
)
from ..simulate.mixture import canonical_simulation_spec, parse_simulation
from ..simulate.optics import OpticsHints

__all__ = ["AMP_MODES", "FINETUNE_MODES", "PIXEL_LOSSES", "REPLAY_OPTICS", "SCHEDULES",
           "SELECTION_SCORES", "TRAINABLE_CHOICES", "EfcrConfig", "OpticsHints", "OptimConfig",
           "RunConfig", "TrainConfig"]

logger = logging.getLogger(__name__)

AMP_MODES = ("auto", "off", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")

# The choices of a fine-tuning run (FinetuneConfig's mode, replay_optics, selection_score and
# trainable fields, documented there), defined here because this module does not import torch:
# ``mpt-deblur finetune`` offers them as its options' choices while building its parser, and
# train.finetune / train.trainable check against the same tuples (and still export them).
FINETUNE_MODES = ("full", "reblur_only", "efcr", "replay")
REPLAY_OPTICS = ("auto", "user", "model")
#: Where the selection score's pairs get their content (``FinetuneConfig.selection_score``).
SELECTION_SCORES = ("bundled-images", "own-images")
#: Which parameters fine-tuning adapts (:func:`.trainable.select_trainable`).
TRAINABLE_CHOICES = ("all", "late", "norms", "optics")

#: The pixel losses of :func:`.losses.pixel_loss` (defined here, torch-free, for the configs).
PIXEL_LOSSES = ("l1", "mse", "charbonnier", "psnr")
_ROUTINGS = ("aligned", "compat")

def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if not float(value) >= 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


@dataclass(frozen=True)
class OptimConfig(ConfigPart):
    """The optimiser of a run: AdamW, warm-up then cosine (or constant) learning rate, gradient
    clipping and mixed precision. Every training loop steps through
    :class:`~napari_mpt_deblur.train.engine.Trainer`, which takes this.

    Attributes
    ----------
    lr, min_lr : float
        Peak and final learning rate (AdamW).
    warmup_steps : int
        Linear warm-up steps from 0 to ``lr``.
    weight_decay : float
        AdamW decoupled weight decay, applied to weight matrices and kernels only.
    schedule : {"cosine", "constant"}
        Learning-rate decay after warm-up.
    grad_clip : float
        Maximum global gradient norm; 0 disables clipping.
    amp : {"auto", "off", "bf16", "fp16"}
        Mixed precision (:func:`~napari_mpt_deblur.train._common.resolve_amp`). CUDA: "auto"
        picks bf16 where supported, otherwise fp16. CPU: "bf16" autocasts on CPUs with native
        bf16 (AVX-512 BF16, AMX), about 1.2x the step rate of float32 for mpt-tiny
        (``benchmarks/train_throughput.py``); "auto" stays float32.
    compile : bool
        Run the training forward through ``torch.compile`` (the first steps pay for the
        compilation, minutes on a CPU); with ``amp: bf16`` about 1.4x the float32 step rate for
        mpt-tiny on an AVX-512 BF16 CPU, without it slightly slower.
    """

    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    grad_clip: float = 1.0
    amp: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false; got {self.compile!r}")
        _non_negative_int("warmup_steps", self.warmup_steps)
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            _non_negative(name, getattr(self, name))


@dataclass(frozen=True)
class EfcrConfig(ConfigPart):
    """The EFCR loss and the re-blur operator behind its negatives.

    Attributes
    ----------
    efcr_weight : float
        λ on the contrastive ratio CR (authors: 5e-4); 0 disables EFCR.
    efcr_rel_weight : float
        Factor on the relative term inside CR (paper: 0.1).
    reblur_defocus_dof : tuple of float
        Defocus of the small re-blur PSFs, in multiples of the axial depth of field
        ``λ·n/NA²``.
    """

    efcr_weight: float = 5e-4
    efcr_rel_weight: float = 0.1
    reblur_defocus_dof: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)

    def __post_init__(self) -> None:
        for name in ("efcr_weight", "efcr_rel_weight"):
            _non_negative(name, getattr(self, name))
        dof = self.reblur_defocus_dof
        try:
            values = tuple(float(v) for v in dof)
        except (TypeError, ValueError):
            values = ()
        if isinstance(dof, (str, bytes)) or not values or any(not v > 0 for v in values):
            raise ValueError(
                f"reblur_defocus_dof must be a non-empty list of positive numbers; got {dof!r}"
            )
        object.__setattr__(self, "reblur_defocus_dof", values)


class RunConfig(DictRoundTrip):
    """What the run configs (:class:`TrainConfig`, ``FinetuneConfig``) share beyond their
    fields: the parts ``optim`` (:class:`OptimConfig`, read by the trainer) and ``efcr``
    (:class:`EfcrConfig`, read by the losses), each declared by the config with its defaults
    and validated by the part itself, and the JSON/YAML round trip with the parts' fields flat.
    """

    optim: OptimConfig
    efcr: EfcrConfig

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The config's keys, in order: its own fields and, flat, its parts' (``lr``, not
        ``optim``), as in its files and its ``to_dict()``."""
        return flat_field_names(cls)


# Fields that only steer how a run is executed; they may differ when a run is resumed.
RUN_CONTROL_FIELDS = frozenset(
    {
        "steps",
        "time_budget_s",
        "out_dir",
        "val_every",
        "ckpt_every",
        "keep_every",
        "log_every",
        "num_workers",
        "device",
        "data_root",
        "amp",
        "compile",
    }
)

#: The same for a fine-tuning run (``FinetuneConfig``): the fields the panel's Resume and the
#: CLI's ``--resume`` may change; any other difference from the saved run is refused/ignored.
FINETUNE_RUN_CONTROL_FIELDS = frozenset(
    {"steps", "time_budget_s", "device", "val_every", "preview_every", "state_every"}
)

_TUPLE_FIELDS = (
    "train_dirs",
    "extra_dirs",
    "paired_dirs",
    "unlabeled_dirs",
    "val_dirs",
    "source_weights",
)


@composed_of_parts
@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Everything that defines a supervised training run on simulated (and real) pairs.

    Attributes
    ----------
    model : str
        Model preset name for ``create_model`` (e.g. ``"mpt-tiny"``).
    model_overrides : dict
        Architecture fields that replace the preset's (e.g. ``{"dim": 24}``).
    routing : {"aligned", "compat"}
        CSWA routing; the project trains "aligned" (the paper's), "compat" exists only to
        fine-tune the authors' checkpoints.
    data_root : str
        Folder that relative data paths are resolved against (``~`` and ``$VARS`` expand).
    train_dirs : tuple of str
        In-focus image sources for simulated pairs: folders (TIFF/PNG inside), files or glob
        patterns. The default is the BBBC006 w2 training folder and ExampleHuman d1/d2.
    extra_dirs : tuple of str
        More in-focus sources, sampled together with ``train_dirs``.
    source_weights : tuple of float
        One weight per entry of ``train_dirs`` + ``extra_dirs``: the share of training patches
        drawn from that entry (within an entry, images are drawn in proportion to their area).
        Empty (the default): every image in proportion to its area, so a folder of many large
        images dominates; weights rebalance content (e.g. more nuclei than actin).
    paired_dirs : tuple of str
        Folders with real pairs in ``blur/`` and ``sharp/`` subfolders, matched by file name.
    paired_fraction : float
        Fraction of each batch drawn from ``paired_dirs`` when there are any.
    unlabeled_dirs : tuple of str
        Blurry images without ground truth for EFCR's relative term (and, with
        ``reblur_weight > 0``, for self-supervised re-blur pairs ``f(G(E)) ≈ E``).
    unlabeled_batch_size : int
        Unlabeled patches per step (only used with ``unlabeled_dirs``).
    reblur_weight : float
        Weight of the self-supervised re-blur pixel loss on unlabeled patches.
    reblur_defocus_dof : tuple of float
        Defocus of the small re-blur PSFs (EFCR negatives and re-blur pairs), in multiples of
        the axial depth of field ``λ·n/NA²`` of the simulation optics: a field of :attr:`efcr`.
    val_dirs : tuple of str
        In-focus images for the fixed validation set (never the evaluation set).
    simulation : str or tuple of dict
        Simulation preset name (``get_simulation_preset``), e.g. ``"bbbc006"``; or a weighted
        mixture of presets, so that one model learns several microscopes: ``{bbbc006: 0.7,
        oil-high-na: 0.3}`` or a list of ``{preset, weight, overrides, name}`` members
        (:mod:`napari_mpt_deblur.simulate.mixture`). Each training pair draws its member with
        the run's seeded generator; validation pairs are split among the members by weight.
        A mixture is stored in its list form (:func:`~napari_mpt_deblur.simulate.
        canonical_simulation_spec`), whichever form was written.
    simulation_overrides : dict
        Fields of the simulation config to replace (nested dicts for nested configs); with a
        mixture, replaced in every member before the member's own ``overrides``.
    patch_size : int
        Training patch side in pixels; must be a multiple of the model's ``size_multiple``.
    val_patch_size : int or None
        Validation patch side; ``None`` uses ``patch_size``.
    batch_size : int
        Patches per step.
    steps : int
        Optimiser steps of the whole run (also the length of the cosine schedule).
    optim : OptimConfig
        The optimiser (lr, min_lr, weight_decay, warmup_steps, schedule, grad_clip, amp,
        compile; read and written flat: ``cfg.lr``, ``lr:``). ``amp`` and ``compile`` may
        change when a run is resumed.
    efcr : EfcrConfig
        EFCR, ``L = pixel + efcr_weight·CR`` (efcr_weight, efcr_rel_weight,
        reblur_defocus_dof; flat like ``optim``).
    pixel_loss : {"l1", "mse", "charbonnier", "psnr"}
        Pixel reconstruction loss; "psnr" is minus the mean per-sample PSNR, which weighs
        near-focus samples by their relative error (``losses.psnr_loss``).
    optics_dropout : float
        For an optics-conditioned model (``model_overrides: {optics_conditioning: true}``),
        the probability that a simulated pair's true optics are replaced by the blind vector
        (:data:`~napari_mpt_deblur.models.conditioning.BLIND_OPTICS`), so the model keeps a
        sound default for images whose optics are unknown. Real pairs always go blind.
        Drawn from a stream of its own: the batches are those of an unconditioned run.
        Unconditioned models ignore it.
    device : str
        Torch device name, or "auto".
    seed : int
        Seeds model initialisation and every random choice of the data stream.
    val_every, ckpt_every, log_every : int
        Steps between validations (and best-checkpoint updates), resumable-state saves and
        log lines.
    keep_every : int or None
        Also keep a copy of the resumable state as ``state-NNNNN.pt`` every this many steps
        (a multiple of ``ckpt_every``), so that checkpoints can be chosen after the run on
        validation sets the trainer does not see (``scripts/select_checkpoint.py``). ``None``
        keeps only the latest state (each copy is as large as the model and optimiser).
    num_val_patches : int
        Size of the fixed validation set.
    num_workers : int
        DataLoader workers (0 = in the main process; the default for 2-core machines).
    time_budget_s : float or None
        Stop cleanly (saving resumable state) after this many seconds of this invocation.
    out_dir : str
        Run folder: ``best.safetensors``, ``state.pt``, ``log.jsonl``, ``config.json``.
    """

    model: str = "mpt-tiny"
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    routing: str = "aligned"
    data_root: str = "data"
    train_dirs: tuple[str, ...] = (
        "train/bbbc006_w2",
        "train/examplehuman/d1.tif",
        "train/examplehuman/d2.tif",
    )
    extra_dirs: tuple[str, ...] = ()
    source_weights: tuple[float, ...] = ()
    paired_dirs: tuple[str, ...] = ()
    paired_fraction: float = 0.25
    unlabeled_dirs: tuple[str, ...] = ()
    unlabeled_batch_size: int = 2
    reblur_weight: float = 0.0
    val_dirs: tuple[str, ...] = ("val/bbbc006_w2",)
    simulation: str | tuple[Mapping[str, Any], ...] = "bbbc006"
    simulation_overrides: Mapping[str, Any] = field(default_factory=dict)
    patch_size: int = 128
    val_patch_size: int | None = None
    batch_size: int = 4
    steps: int = 20000
    optim: OptimConfig = field(default_factory=OptimConfig)
    efcr: EfcrConfig = field(default_factory=EfcrConfig)
    pixel_loss: str = "l1"
    optics_dropout: float = 0.3
    device: str = "auto"
    seed: int = 0
    val_every: int = 500
    ckpt_every: int = 500
    keep_every: int | None = None
    log_every: int = 10
    num_val_patches: int = 32
    num_workers: int = 0
    time_budget_s: float | None = None
    out_dir: str = "runs/mpt-tiny"

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes, os.PathLike)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        for name in ("model_overrides", "simulation_overrides"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a mapping; got {type(value).__name__}")
            object.__setattr__(self, name, dict(value))
        object.__setattr__(self, "simulation", canonical_simulation_spec(self.simulation))
        self._validate()

    def _validate(self) -> None:
        _choice("routing", self.routing, _ROUTINGS)
        _choice("pixel_loss", self.pixel_loss, PIXEL_LOSSES)
        parse_simulation(self.simulation, self.simulation_overrides)  # names, weights, fields
        for name in ("patch_size", "batch_size", "steps", "val_every", "ckpt_every", "log_every",
                     "num_val_patches", "unlabeled_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.val_patch_size is not None and (
            not isinstance(self.val_patch_size, int) or self.val_patch_size < 1
        ):
            raise ValueError(
                f"val_patch_size must be a positive integer or None; got {self.val_patch_size!r}"
            )
        if self.keep_every is not None and (
            not isinstance(self.keep_every, int) or isinstance(self.keep_every, bool)
            or self.keep_every < 1 or self.keep_every % self.ckpt_every
        ):
            raise ValueError(
                "keep_every must be None or a positive multiple of ckpt_every "
                f"({self.ckpt_every}); got {self.keep_every!r}"
            )
        for name in ("num_workers", "seed"):
            _non_negative_int(name, getattr(self, name))
        _non_negative("reblur_weight", self.reblur_weight)
        for name in ("paired_fraction", "optics_dropout"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.time_budget_s is not None and not float(self.time_budget_s) > 0:
            raise ValueError(f"time_budget_s must be > 0 or None; got {self.time_budget_s!r}")
        if not self.train_dirs and not self.extra_dirs and not self.paired_dirs:
            raise ValueError("train_dirs, extra_dirs and paired_dirs are all empty: no data")
        if self.source_weights:
            entries = len(self.train_dirs) + len(self.extra_dirs)
            if len(self.source_weights) != entries:
                raise ValueError(
                    f"source_weights needs one weight per train_dirs + extra_dirs entry "
                    f"({entries}); got {len(self.source_weights)}"
                )
            weights = [float(w) for w in self.source_weights]
            if any(not w >= 0 for w in weights) or not sum(weights) > 0:
                raise ValueError(
                    f"source_weights must be >= 0 with a positive sum; got {list(weights)}"
                )

    # ----------------------------------------------------------------------------------------
    @property
    def effective_val_patch_size(self) -> int:
        """Validation patch side (``val_patch_size`` or ``patch_size``)."""
        return self.val_patch_size or self.patch_size

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """Resolve a data path: ``~``/``$VARS`` expanded, relative paths under ``data_root``."""
        p = Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))
        if p.is_absolute():
            return p
        root = Path(os.path.expandvars(os.path.expanduser(self.data_root)))
        return root / p

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like a new config)."""
        check_keys(TrainConfig, changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) config file.

        Keys not given keep their defaults. Unknown keys raise ``ValueError`` listing the
        valid keys, so a typo never silently trains with a default.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ValueError(
                f"config file {path} must end in .json, .yaml or .yml; got {suffix or 'none'!r}"
            )
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"config file {path} must hold a mapping of keys to values; got "
                f"{type(data).__name__}"
            )
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as JSON (written to a temporary file, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

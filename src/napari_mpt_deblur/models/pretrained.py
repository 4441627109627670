"""Trained weights shipped with the package, keyed ``arch.tag``.

Architecture presets (``create_model("mpt-tiny")``) name a network *shape*; a pretrained key
names *weights*: ``mpt_tiny.defocus`` is the ``mpt-tiny`` preset trained for widefield defocus.
The pattern is timm's ``model.pretrained_tag``: one architecture can have several sets of
weights (``mpt_tiny.defocus``, ``mpt_tiny.defocus_wide``), and the key says which.

This table is the one place that knows the shipped files: their SHA-256 (checked by
``tests/models/test_pretrained.py`` against the files), description, normalisation and
lineage. To ship new weights for a key, replace the file and update its ``sha256`` here.

The names weights had before keys existed (``"mpt-tiny"``, ``"mpt-tiny-wide"``, ``"htcsf"``)
are each entry's ``label``: still accepted everywhere a model is named (with a
``DeprecationWarning`` from the Python API), and still what the napari model picker shows.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .info import IntensityNormalization

__all__ = [
    "DEFAULT_PRETRAINED",
    "PretrainedEntry",
    "bundled_models",
    "canonical_name",
    "default_model_name",
    "get_pretrained",
    "list_pretrained",
    "pretrained_keys",
]

#: The weights used when no model is named (CLI, widgets, ``deblur()``).
DEFAULT_PRETRAINED = "mpt_tiny.defocus"

_PERCENTILE = IntensityNormalization().to_dict()  # robust percentiles, the default


@dataclass(frozen=True)
class PretrainedEntry:
    """One set of shipped weights.

    Attributes
    ----------
    key : str
        ``arch.tag``: the architecture (a preset name with ``_`` for ``-``) and the training tag.
    label : str
        Short display name; also the name these weights had before keys (still accepted).
    arch : str
        Checkpoint architecture family (``"mpt"``, ``"htcsf"``).
    preset : str
        The architecture preset the weights fit (``create_model(preset)`` builds the network).
    file : str
        File name under ``napari_mpt_deblur/weights``.
    sha256 : str
        SHA-256 of that file: the one place it is recorded.
    description : str
        What the weights are for (one line).
    normalization : dict
        The intensity normalisation they were trained with.
    lineage : tuple of str
        Where the weights come from, oldest first: the weights the last stage started from
        (``commit:path`` in git history) and the recipe that made them (the full stage history
        is in the model card and docs/training.md).
    """

    key: str
    label: str
    arch: str
    preset: str
    file: str
    sha256: str
    description: str
    normalization: dict[str, Any]
    lineage: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """Where the file is installed."""
        return Path(str(resources.files("napari_mpt_deblur") / "weights" / self.file))


_ENTRIES: tuple[PretrainedEntry, ...] = (
    PretrainedEntry(
        key="mpt_tiny.defocus",
        label="mpt-tiny",
        arch="mpt",
        preset="mpt-tiny",
        file="mpt-tiny.safetensors",
        sha256="b217875f56b7c1596689fdba9554e7393199c054a105dc0e000b1f72f22a960d",
        description="default: 20x widefield defocus 0-16 µm and high-NA oil 0-2 µm; uses the "
        "microscope's optics when given (pixel size, NA); keeps the fine texture of in-focus "
        "images; trained on 17 kinds of specimen",
        normalization=_PERCENTILE,
        lineage=("3c086bf:src/napari_mpt_deblur/weights/mpt-tiny.safetensors (stage 16)",
                 "478d262:configs/experiments/mpt-tiny-noise-target.yaml (step 1500)",
                 "478d262:configs/experiments/mpt-tiny-in-focus-target.yaml (step 1750)",
                 "68f7d40:configs/recipes/mpt-tiny.yaml (stage 20, step 1250)",
                 "e34d788:configs/recipes/mpt-tiny.yaml (stage 23, step 1300)",
                 "83822e1:configs/recipes/mpt-tiny.yaml (stage 24, step 1900; shipped as "
                 "0.3 × it + 0.7 × stage 23)",
                 "447d0fe:configs/recipes/mpt-tiny.yaml (stage 25, step 1250)",
                 "acf7a15:configs/recipes/mpt-tiny.yaml (stage 26, step 1400)",
                 "configs/recipes/mpt-tiny.yaml (stage 27, step 1400; shipped as "
                 "0.5 × it + 0.5 × stage 26)"),
    ),
    PretrainedEntry(
        key="mpt_tiny.defocus_wide",
        label="mpt-tiny-wide",
        arch="mpt",
        preset="mpt-tiny",
        file="mpt-tiny-wide.safetensors",
        sha256="e24b32511a1f140aec37a91a2b12e69772911162d9a2cd9eb964aa50b890b02f",
        description="strong defocus: trained on 2-24 µm, best at 16-24 µm",
        normalization=_PERCENTILE,
        lineage=("60a4e51:src/napari_mpt_deblur/weights/mpt-tiny.safetensors (stage 7)",
                 "configs/recipes/mpt-tiny-wide.yaml"),
    ),
    PretrainedEntry(
        key="htcsf.defocus",
        label="htcsf",
        arch="htcsf",
        preset="htcsf",
        file="htcsf.safetensors",
        sha256="5a343f3fb07d287b850806fcce50d2af3ee7ac71a52b63d08ce2017adff680d5",
        description="fast CNN alternative (head-to-tail cross-scale fusion, ICIP 2022)",
        normalization=_PERCENTILE,
        lineage=("a9ba847:src/napari_mpt_deblur/weights/htcsf.safetensors (stage 1)",
                 "configs/recipes/htcsf.yaml"),
    ),
)

_BY_KEY = {e.key: e for e in _ENTRIES}
# Set while the command line runs: old names typed by a user are accepted without warnings.
_ACCEPT_OLD_NAMES = contextvars.ContextVar("accept_old_names", default=False)
_BY_LABEL = {e.label: e for e in _ENTRIES}


def pretrained_keys() -> list[str]:
    """All keys, the default first."""
    return sorted(_BY_KEY, key=lambda k: k != DEFAULT_PRETRAINED)


def list_pretrained(*, installed: bool = True) -> list[PretrainedEntry]:
    """The entries, the default first; ``installed`` drops those whose file is missing."""
    entries = [_BY_KEY[k] for k in pretrained_keys()]
    return [e for e in entries if e.path.is_file()] if installed else entries


def is_pretrained_name(name: object) -> bool:
    """True for a key or an old name (label); no warning, no file check."""
    return isinstance(name, str) and (name in _BY_KEY or name in _BY_LABEL)


def get_pretrained(name: str, *, warn: bool = True) -> PretrainedEntry:
    """The entry for a key, or for an old name (``"mpt-tiny"``).

    Old names still work; with ``warn`` they raise a ``DeprecationWarning`` naming the key to
    use instead. An unknown name raises ``ValueError`` listing the valid keys (and the closest).

    Raises
    ------
    ValueError
        ``name`` is neither a key nor an old name.
    """
    if name in _BY_KEY:
        return _BY_KEY[name]
    if name in _BY_LABEL:
        entry = _BY_LABEL[name]
        if warn and not _ACCEPT_OLD_NAMES.get():
            warnings.warn(
                f"the weights name {name!r} is deprecated; use the pretrained key "
                f"{entry.key!r} (architecture preset names now only name untrained networks)",
                DeprecationWarning, stacklevel=_caller_stacklevel(),
            )
        return entry
    raise ValueError(unknown_message(name))


@contextlib.contextmanager
def old_names_accepted() -> Iterator[None]:
    """Accept old names without a ``DeprecationWarning`` inside this block.

    The CLI runs its commands in one: names on a command line or in a config are what a user
    typed (and what the docs of earlier versions showed), not code to update, and some reach
    the resolver through library code that cannot know where they came from.
    """
    token = _ACCEPT_OLD_NAMES.set(True)
    try:
        yield
    finally:
        _ACCEPT_OLD_NAMES.reset(token)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call), so that
    the warning names their line, however deep the package called this from."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            "napari_mpt_deblur"):
        frame, level = frame.f_back, level + 1
    return level


def canonical_name(name: str) -> str:
    """The key for an old name, silently; anything else unchanged (the CLI and widgets use
    this, so that a user typing ``--model mpt-tiny`` gets no warning)."""
    entry = _BY_LABEL.get(name) if isinstance(name, str) else None
    return entry.key if entry is not None else name


def bundled_models() -> dict[str, Path]:
    """Installed weights by their old name (label), sorted by it as before keys existed.

    Kept for code that names weights by label (evaluation columns); new code uses
    :func:`list_pretrained`.
    """
    return {e.label: e.path for e in sorted(list_pretrained(), key=lambda e: e.label)}


def default_model_name() -> str:
    """The default weights' label (``"mpt-tiny"``); their key is :data:`DEFAULT_PRETRAINED`."""
    return _BY_KEY[DEFAULT_PRETRAINED].label


def unknown_message(name: object) -> str:
    """The error text for a name that is no pretrained key: the valid keys, the closest first."""
    keys = pretrained_keys()
    close = difflib.get_close_matches(str(name), keys + list(_BY_LABEL), n=1)
    hint = f" (did you mean {canonical_name(close[0])!r}?)" if close else ""
    return (f"{name!r} is not a pretrained model{hint}; valid keys: {', '.join(keys)}")

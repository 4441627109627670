"""Modal file dialogs shared by the dock widgets.

They live in one module, called through its attribute (``_dialogs.ask_checkpoint_path``), so
tests replace the modal dialog by patching this module instead of an attribute of a magicgui
``Container`` (whose ``__delattr__`` removes a child widget, which breaks monkeypatch's undo).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.catalog import CHECKPOINT_SUFFIXES

__all__ = ["ask_checkpoint_path", "ask_save_path"]


def ask_checkpoint_path(parent: Any, title: str) -> str | None:
    """Ask for a checkpoint file; ``None`` when the user cancels."""
    from qtpy.QtWidgets import QFileDialog

    patterns = " ".join(f"*{s}" for s in CHECKPOINT_SUFFIXES)
    path, _ = QFileDialog.getOpenFileName(
        parent, title, str(Path.home()), f"Checkpoints ({patterns});;All files (*)"
    )
    return path or None


def ask_save_path(
    parent: Any, title: str, filter: str, suggestion: str | None = None
) -> str | None:
    """Ask where to write a new file; ``None`` when the user cancels.

    Qt's save dialog itself asks before an existing file is chosen, so a returned path that
    exists has been confirmed by the user.
    """
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, title, suggestion or str(Path.home()), filter)
    return path or None

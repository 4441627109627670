"""What the fine-tune panel does with a finished run: list it, save it, export it.

:class:`FinetuneResults` is the part of :class:`~._finetune.FinetuneWidget` after a run ends:
the run's model is listed at once in the shared model catalog (in memory), **Save** writes it
as a project checkpoint (atomic; the header records the data, the optics hints and every
setting) and replaces the in-memory entry by the file, and **Export for bioimage.io** packages
the saved checkpoint in a worker thread. The file work itself is Qt-free
(:func:`~._finetune_job.save_finetuned`, :func:`~._finetune_job.export_steps`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _dialogs, _finetune_job
from ._jobs import FinetuneFailed

if TYPE_CHECKING:
    from napari.qt.threading import GeneratorWorker

    from ._finetune_job import FinetuneOutcome

logger = logging.getLogger(__name__)

__all__ = ["FinetuneResults"]


class FinetuneResults:
    """Listing, saving and exporting the last run; a mixin of the fine-tune panel.

    Expects the panel's ``_catalog``, ``_last``, ``_name``, ``_output``, ``_export``,
    ``running``, ``_closed``, ``_set_status`` and ``_update_state``; keeps its own state in
    ``_memory_entry``, ``_saved_paths``, ``_saved_checkpoint`` and ``_export_worker``.
    """

    def _init_results(self) -> None:
        self._memory_entry: str | None = None
        self._saved_paths: set[Path] = set()
        self._saved_checkpoint: Path | None = None  # what "Export for bioimage.io" exports
        self._export_worker: GeneratorWorker | None = None
        self._export_unavailable = _finetune_job.bioimageio_unavailable()

    # ------------------------------------------------------------------ catalog and saving
    def _model_name(self) -> str:
        name = self._name.value.strip()
        if not name and self._last is not None:
            name = f"{self._last.model_entry.get('name', 'model')}-ft"
        return name or "fine-tuned"

    def _publish(self, outcome: FinetuneOutcome) -> None:
        """List the run's model in the shared catalog (replacing this panel's previous one)."""
        if self._memory_entry is not None and self._memory_entry in self._catalog:
            self._catalog.remove(self._memory_entry)
        entry = self._catalog.add_model(outcome.model, self._model_name())
        self._memory_entry = entry.name

    def _ask_save_path(self) -> str | None:
        """Ask where to save (separate so tests can replace the modal dialog)."""
        from qtpy.QtWidgets import QFileDialog

        suggestion = str(Path.home() / f"{self._model_name()}.safetensors")
        path, _ = QFileDialog.getSaveFileName(self.native, "Save the fine-tuned model",
                                              suggestion, "Checkpoints (*.safetensors)")
        return path or None

    def _confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing a file this panel did not write (tests replace the dialog)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self.native, "Replace file?", f"{path} exists. Replace it with the fine-tuned model?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the last run's best model to ``path`` (or 'Save to', or a dialog) and list it.

        A file this panel did not write is only replaced after the user confirms. Returns the
        written path, or ``None`` when nothing was saved.
        """
        from napari.utils.notifications import show_error, show_warning

        outcome = self._last
        if outcome is None or self.running:
            show_warning("Nothing to save yet: run (or stop) a fine-tuning first.")
            return None
        target = path if path is not None else self._output.value
        if target is None or str(target) in ("", "."):
            target = self._ask_save_path()
        if not target:
            return None
        target = Path(target).expanduser()
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        if (target.exists() and target.resolve() not in self._saved_paths
                and not self._confirm_overwrite(target)):
            self._set_status(f"Not saved: {target.name} exists.")
            return None
        name = self._model_name()
        try:
            written = _finetune_job.save_finetuned(outcome, target, name=name)
        except (OSError, ValueError, TypeError) as exc:
            show_error(f"Could not save the fine-tuned model: {exc}")
            self._set_status(f"Save failed: {exc}")
            return None
        self._saved_paths.add(written.resolve())
        with self._output.changed.blocked():
            self._output.value = written
        if self._memory_entry is not None and self._memory_entry in self._catalog:
            self._catalog.remove(self._memory_entry)
        self._memory_entry = None
        entry = self._catalog.add_checkpoint(written, name=name, select=True)
        self._saved_checkpoint = written
        self._update_state()
        self._set_status(f"Saved {written.name} (best weights, settings and data description "
                         f"in its header); listed as {entry.name!r}.")
        return written

    # ------------------------------------------------------------------ bioimage.io export
    @property
    def exporting(self) -> bool:
        """True while a bioimage.io export is in flight."""
        return self._export_worker is not None

    def export_bioimageio(self) -> bool:
        """Export the last saved checkpoint as a bioimage.io package, in a worker thread.

        Asks for the ``.zip`` with a save dialog (which itself asks before an existing file is
        replaced). A name typed without ``.zip`` gets it, and the file of that new name is then
        not replaced, since nobody confirmed it. The package is written atomically. Returns
        whether an export was started; the result shows in the status line.
        """
        from napari.utils.notifications import show_warning

        checkpoint = self._saved_checkpoint
        if self._export_unavailable is not None:
            show_warning(self._export_unavailable)
            return False
        if checkpoint is None:
            show_warning("Save the fine-tuned model first: the saved checkpoint is exported.")
            return False
        if self.running or self.exporting:
            show_warning("Wait until the run or the export in progress has ended.")
            return False
        chosen = _dialogs.ask_save_path(self.native, "Export for bioimage.io",
                                        "bioimage.io packages (*.zip)",
                                        str(checkpoint.with_suffix(".zip")))
        if not chosen:
            return False
        target = Path(chosen).expanduser()
        if target.suffix != ".zip":
            target = target.with_name(target.name + ".zip")
            if target.exists():
                self._set_status(f"Not exported: {target.name} exists; choose that file in the "
                                 "dialog to replace it.")
                return False
        self._export_worker = _finetune_job.start_export_worker(
            checkpoint, target,
            on_returned=lambda outcome: self._on_export_returned(outcome, target),
            on_finished=self._on_export_finished,
        )
        self._set_status(f"Exporting {checkpoint.name} for bioimage.io to {target.name}…")
        self._update_state()
        return True

    def _on_export_returned(self, outcome: Any, target: Path) -> None:
        from napari.utils.notifications import show_error

        if self._closed:
            return
        if isinstance(outcome, FinetuneFailed):
            message = str(outcome.error) or type(outcome.error).__name__
            show_error(f"Could not export for bioimage.io: {message}")
            self._set_status(f"Export failed: {message}")
            return
        if outcome is None:
            self._set_status("Export stopped.")
            return
        formats = ", ".join(outcome.weight_formats) or "no weights"
        skipped = "".join(f"; {fmt} skipped: {why}" for fmt, why in outcome.skipped.items())
        self._set_status(f"Exported {outcome.path.name} for bioimage.io ({formats}{skipped}).")

    def _on_export_finished(self) -> None:
        self._export_worker = None
        if not self._closed:
            self._update_state()

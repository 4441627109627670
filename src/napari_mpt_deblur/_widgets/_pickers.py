"""The model and device pickers shared by the deblur and fine-tune panels.

A panel's model choice is the shared :class:`~napari_mpt_deblur.models.catalog.ModelCatalog`:
bundled weights, checkpoints loaded anywhere in the viewer (dropped files, either panel's file
dialog) and fine-tuned models, plus a last ``"Load checkpoint…"`` item that opens a file dialog.
:class:`ModelPicker` is that ComboBox and its wiring, written once: the choices, the dialog and
what happens when it fails or is cancelled (back to the previous choice), the catalog's change
events (which may come from any thread; the choice survives them), and a tooltip saying what the
chosen weights are for. The panel keeps the ComboBox as its ``self._model`` (tests set it
directly) and hears about a new choice through one callback.

:func:`device_picker` is the "Device" ComboBox ("auto" and every device torch can use here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox

from ..models.catalog import CatalogEvent, ModelCatalog, ModelOptics
from . import _dialogs

logger = logging.getLogger(__name__)

__all__ = ["LOAD_CHECKPOINT", "ModelPicker", "describe_device", "device_choices",
           "device_picker"]

#: Value of the model picker's last item, which opens a file dialog.
LOAD_CHECKPOINT = "<load checkpoint>"
DEVICE_TOOLTIP = "Where the network runs; 'auto' prefers a GPU"


class ModelPicker:
    """A model ComboBox kept in step with a :class:`ModelCatalog`.

    Parameters
    ----------
    catalog : ModelCatalog
        Where the choices come from (and where a checkpoint chosen in the dialog goes).
    label : str
        The ComboBox's label.
    tooltip : str
        What the picker is for; the chosen entry's description is shown above it.
    dialog_title : str
        Title of the "Load checkpoint…" file dialog.
    on_change : callable, optional
        ``on_change(name)`` after the choice changed (``None`` when nothing can be chosen);
        never called with :data:`LOAD_CHECKPOINT`.
    on_catalog_change : callable, optional
        Called without arguments after every catalog change (e.g. to refresh buttons).
    follow_selection : bool
        Switch to a model that is added with ``select=True`` anywhere (a checkpoint loaded or
        saved in another panel): right for the deblur panel, whose user wants the newest
        model; the fine-tune panel's start model stays put.

    Attributes
    ----------
    combo : magicgui.widgets.ComboBox
        The widget to put in the panel.
    last : str or None
        The last real choice (what a failed or cancelled dialog returns to).
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        label: str = "Model",
        tooltip: str = "",
        dialog_title: str = "Load a checkpoint",
        on_change: Callable[[str | None], None] | None = None,
        on_catalog_change: Callable[[], None] | None = None,
        follow_selection: bool = False,
    ) -> None:
        self._catalog = catalog
        self._tooltip = tooltip
        self._dialog_title = dialog_title
        self._on_change = on_change
        self._on_catalog_change = on_catalog_change
        self._follow_selection = follow_selection
        self.combo = ComboBox(label=label, choices=self.choices, nullable=True)
        with self.combo.changed.blocked():
            self.combo.value = catalog.default_name()
        self.last: str | None = self.combo.value
        self._describe()
        self.combo.changed.connect(self._on_changed)
        catalog.connect(self._on_catalog_event)

    # ------------------------------------------------------------------ state
    @property
    def value(self) -> str | None:
        """The chosen catalog entry (may briefly be :data:`LOAD_CHECKPOINT` or ``None``)."""
        return self.combo.value

    @property
    def ready(self) -> bool:
        """Whether a model is chosen (not nothing, not the dialog item)."""
        return self.combo.value not in (None, LOAD_CHECKPOINT)

    def optics(self) -> ModelOptics:
        """What the chosen model knows of optics, from its header (nothing while none is
        chosen): whether it takes them, and the sampling it was trained at."""
        name = self.combo.value
        if not self.ready or name not in self._catalog:
            return ModelOptics()
        return self._catalog.optics(name)

    def choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        """``(label, name)`` of every catalog entry, then the dialog item."""
        entries = [(entry.label, entry.name) for entry in self._catalog.entries()]
        return [*entries, ("Load checkpoint…", LOAD_CHECKPOINT)]

    def disconnect(self) -> None:
        """Stop following the catalog (the panel's viewer closed)."""
        self._catalog.disconnect(self._on_catalog_event)

    # ------------------------------------------------------------------ changes
    def _on_changed(self, value: Any = None) -> None:
        if value == LOAD_CHECKPOINT:
            self.browse()
            return
        if value is not None:
            self.last = value
        self._describe()
        if self._on_change is not None:
            self._on_change(value)

    def _set(self, name: str | None) -> None:
        """Choose ``name`` and tell the panel, as a user's choice would (once, unblocked)."""
        with self.combo.changed.blocked():
            self.combo.value = name
        self._on_changed(self.combo.value)

    def _describe(self) -> None:
        """The tooltip says what the chosen weights are for (from the catalog)."""
        name = self.combo.value
        purpose = self._catalog.get(name).description if name in self._catalog else ""
        self.combo.tooltip = "\n".join(filter(None, [purpose, self._tooltip]))

    def browse(self) -> None:
        """Ask for a checkpoint and choose it; on failure or cancel, back to the last choice."""
        from napari.utils.notifications import show_error

        path = _dialogs.ask_checkpoint_path(self.combo.native, self._dialog_title)
        entry = None
        if path:
            try:
                entry = self._catalog.add_checkpoint(path, select=True)
            except (OSError, ValueError) as exc:
                show_error(f"Cannot use {Path(path).name} as a model: {exc}")
        with self.combo.changed.blocked():
            self.combo.reset_choices()
        if entry is not None and entry.name in self._catalog:
            self._set(entry.name)
        else:
            previous = self.last if self.last in self._catalog else None
            self._set(previous or self._catalog.default_name())

    def _on_catalog_event(self, event: CatalogEvent) -> None:
        """Catalog changes can come from any thread; Qt widgets must change in the GUI thread."""
        from superqt.utils import ensure_main_thread

        ensure_main_thread(self._apply_catalog_event)(event)

    def _apply_catalog_event(self, event: CatalogEvent) -> None:
        try:
            current = self.combo.value
            with self.combo.changed.blocked():
                self.combo.reset_choices()
        except RuntimeError:  # the Qt widget was deleted (closed dock)
            self.disconnect()
            return
        entry = event.entry
        if (self._follow_selection and event.select and entry is not None
                and entry.name in self._catalog):
            wanted = entry.name
        elif current in self._catalog:
            wanted = current
        else:  # the choice was removed (or the dialog is open): the catalog's default
            wanted = self._catalog.default_name()
        with self.combo.changed.blocked():
            self.combo.value = wanted
        if self.combo.value != current:
            self._on_changed(self.combo.value)
        else:
            self._describe()
        if self._on_catalog_change is not None:
            self._on_catalog_change()


def describe_device(name: str) -> str:
    """A device choice as the user reads it (``"cuda:0 · NVIDIA H100"``, ``"mps · Apple GPU"``)."""
    if name.startswith("cuda"):
        import torch

        index = int(name.split(":")[1]) if ":" in name else 0
        return f"{name} · {torch.cuda.get_device_name(index)}"
    if name == "mps":
        return "mps · Apple GPU"
    return name


def device_choices(_widget: Any = None) -> list[tuple[str, str]]:
    """``"auto"`` (saying what it picks here), then every device torch can use here."""
    from .._device import get_device, list_devices

    choices = [(f"auto ({get_device('auto')})", "auto")]
    choices += [(describe_device(name), name) for name in list_devices()]
    return choices


def device_picker(label: str = "Device", tooltip: str = DEVICE_TOOLTIP) -> ComboBox:
    """The "Device" ComboBox of a panel (value: ``"auto"``, ``"cpu"``, ``"cuda:N"``, ``"mps"``)."""
    combo = ComboBox(label=label, choices=device_choices)
    combo.tooltip = tooltip
    return combo

"""Layout shared by the plugin's docks: one label column, a scroll area, a readable title.

napari docks a plugin widget as it is: no scroll area, and the dock's minimum height is the
widget's. A long panel therefore grows the main window past the screen (the fine-tune panel
alone needed 1091 px, all three docks about 1900 px). magicgui's ``Container(scrollable=True)``
does not help here: its scroll area is the *root* native widget, while napari (0.9) docks
``container.native``, the inner widget, and so drops the scroll area. :func:`scrolling_form`
puts the rows in a scroll area inside the panel instead, with a small minimum height and the
full height as its size hint, so that every dock can shrink to fit a 1080-pixel screen while
nothing scrolls when there is room.

magicgui aligns labels per container, measuring text rather than the label widgets, and leaves
buttons and check boxes without a label; rows then start at different x positions.
:func:`align_labels` gives every label in a form (nested sections included) one fixed width,
and :func:`field_row` puts label-less widgets into the field column.

All of this is Qt plumbing only; nothing here knows about images or models.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from magicgui.widgets import Container, Label, Widget

__all__ = ["MIN_FORM_HEIGHT", "align_labels", "field_row", "finish_panel", "scrolling_form",
           "wrap_label"]

#: Smallest height a scrolling form asks for: a few rows stay visible however crowded the
#: dock area is.
MIN_FORM_HEIGHT = 120


def field_row(*widgets: Widget) -> Container:
    """A row that sits in the field column of a labelled form (for buttons and check boxes).

    magicgui gives buttons and check boxes no label, so they start at the left edge; wrapped in
    a container (whose label is empty) they start where the other fields do.
    """
    row = Container(layout="horizontal", labels=False, widgets=list(widgets))
    row.margins = (0, 0, 0, 0)
    return row


def wrap_label(label: Label) -> None:
    """Let a value label use the field's width and wrap, instead of its fixed text width."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)


def _is_section(widget: Any) -> bool:
    """A nested labelled form (e.g. the collapsible advanced settings)."""
    return isinstance(widget, Container) and widget.layout == "vertical" and widget.labels


def _rows(container: Container) -> Iterator[tuple[Any, Any]]:
    """``(child, its label widget or None)`` for every row under ``container``, nested too."""
    for child in container:
        ref = getattr(child, "_labeled_widget", None)
        labeled = ref() if callable(ref) else None
        yield child, (labeled._label_widget if labeled is not None else None)
        if isinstance(child, Container) and child.layout == "vertical":
            yield from _rows(child)


def _label_widgets(container: Container) -> Iterator[Any]:
    """The label widgets of every labelled row under ``container`` (nested forms too)."""
    for child, label in _rows(container):
        if label is not None and not _is_section(child):
            yield label


def align_labels(container: Container) -> int:
    """Give every row label under ``container`` the width of the widest; returns that width.

    Fixed, not just a minimum: a wrapping value label in the same row would otherwise take
    part of the label's share and push the field off the column.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    for child, label in _rows(container):
        if label is not None and _is_section(child):
            label.native.hide()  # a nested form spans the row: its labels join the column
            if hasattr(child, "margins"):
                child.margins = (0, 0, 0, 0)
    labels = list(_label_widgets(container))
    if not labels:
        return 0
    width = max(label.native.sizeHint().width() for label in labels)
    for label in labels:
        label.native.setFixedWidth(width)
        label.native.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)
    left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
    for text in _value_labels(container):  # headings and status lines read from the left
        text.native.setAlignment(left)
        text.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return width


def _value_labels(container: Container) -> Iterator[Label]:
    for child in container:
        if isinstance(child, Label):
            yield child
        elif isinstance(child, Container) and child.layout == "vertical":
            yield from _value_labels(child)


@functools.cache
def _scroll_type() -> type:
    """A ``QScrollArea`` whose size hint is its content's and whose minimum height is small."""
    from qtpy.QtCore import QEvent, QSize
    from qtpy.QtWidgets import QFrame, QScrollArea

    class FormScrollArea(QScrollArea):
        def __init__(self, parent: Any = None) -> None:
            super().__init__(parent)
            self.setWidgetResizable(True)
            self.setFrameShape(QFrame.Shape.NoFrame)
            self.title_width = 0  # at least this wide (the dock's title), see finish_panel

        def eventFilter(self, watched: Any, event: Any) -> bool:  # Qt's name
            # the content's size hints changed (labels realigned, a section opened): tell the
            # dock, which would otherwise keep the scroll area's old hints
            if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
                self.updateGeometry()
            return super().eventFilter(watched, event)

        def _extra_width(self) -> int:
            return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

        def sizeHint(self) -> QSize:  # Qt's name
            inner = self.widget()
            if inner is None:
                return super().sizeHint()
            hint = inner.sizeHint()
            return QSize(hint.width() + self._extra_width(),
                         hint.height() + 2 * self.frameWidth())

        def minimumSizeHint(self) -> QSize:  # Qt's name
            inner = self.widget()
            if inner is None:
                return super().minimumSizeHint()
            width = max(inner.minimumSizeHint().width() + self._extra_width(), self.title_width)
            return QSize(width, min(MIN_FORM_HEIGHT, inner.minimumSizeHint().height()))

    return FormScrollArea


def scrolling_form(owner: Container, widgets: Sequence[Widget]) -> Container:
    """Put ``widgets`` in a labelled form inside a vertical scroll area that fills ``owner``.

    ``owner`` is the panel napari docks (created with ``labels=False``); the returned form is
    the container that holds the rows. Extra Qt widgets, such as plots, go into its layout
    before the last item, a stretch that keeps the rows at the top.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    form = Container(labels=True, widgets=list(widgets))
    scroll = _scroll_type()(owner.native)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(form.native)
    form.native.installEventFilter(scroll)
    scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    form.native.layout().addStretch(1)  # rows keep their height; spare room goes below them
    owner.margins = (0, 0, 0, 0)
    owner.native.layout().addWidget(scroll)
    owner.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return form


def finish_panel(owner: Container, form: Container) -> None:
    """Align the form's labels now and whenever the panel is shown or restyled; fit the title.

    Label widths depend on the font, which napari's stylesheet sets only once the panel is
    docked, and the dock (with its title bar) exists only then too; so both are (re)done when
    the panel is shown. The panel is kept at least as wide as its dock's title: napari titles a
    plugin dock "<widget> (<plugin>)", which is wider than these panels' fields, and a cut
    title hides which panel is which.
    """
    align_labels(form)
    owner.native.installEventFilter(_tidy_filter_type()(form, owner.native))


@functools.cache
def _tidy_filter_type() -> type:
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QDockWidget

    watched_events = (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange)

    class Tidy(QObject):
        def __init__(self, form: Container, parent: QObject) -> None:
            super().__init__(parent)
            self._form = form

        def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt's name
            if event.type() in watched_events:
                align_labels(self._form)
                self._fit_title(watched)
            return False

        @staticmethod
        def _fit_title(panel: Any) -> None:
            # a hint, not setMinimumWidth: an explicit minimum would override the content's
            # own (larger) minimum width, and the fields would be cut instead of the title
            scroll = panel.findChild(_scroll_type())
            dock = panel.parentWidget()
            while dock is not None and not isinstance(dock, QDockWidget):
                dock = dock.parentWidget()
            title = dock.titleBarWidget() if dock is not None else None
            if scroll is None or title is None or dock.isFloating():
                return
            layout = title.layout()
            needed = (layout.sizeHint() if layout is not None else title.sizeHint()).width()
            if scroll.title_width != needed:
                scroll.title_width = needed
                scroll.updateGeometry()

    return Tidy

"""The microscope fields the Deblur and Fine-tune docks share, and what a layer says of them.

:class:`OpticsFields` holds the four spin boxes (pixel size, NA, emission wavelength, immersion
index; 0 shows as "unknown" or whatever the dock calls its default) and fills them from a layer
through :func:`layer_optics`, the one lookup of a layer's optics (its metadata, OME-XML, scale
and source file, :func:`~napari_mpt_deblur.optics_metadata.optics_from_metadata`).
:func:`sampling_notice` is the Deblur dock's one-line warning when an image's pixels are far
from what the model was trained at.
"""

from __future__ import annotations

import logging
from typing import Any

from magicgui.widgets import FloatSpinBox

from ..optics_metadata import OPTICS_FIELDS, optics_from_metadata
from ._layers import layer_source_path

logger = logging.getLogger(__name__)

__all__ = ["SAMPLING_TOLERANCE", "OpticsFields", "layer_optics", "sampling_notice"]

#: Pixel sizes within this factor of a training sampling need no notice.
SAMPLING_TOLERANCE = 1.5


def layer_optics(layer: Any) -> dict[str, float]:
    """The optics a layer records (any of ``OPTICS_FIELDS``); ``{}`` when its metadata is odd."""
    try:
        return optics_from_metadata(layer.metadata, scale=tuple(layer.scale),
                                    units=tuple(layer.units),
                                    source_path=layer_source_path(layer))
    except Exception:  # odd metadata must not break a dock
        logger.debug("could not read optics from %s", getattr(layer, "name", layer),
                     exc_info=True)
        return {}


class OpticsFields:
    """Pixel size (µm), NA, emission wavelength (nm) and immersion index spin boxes.

    Parameters
    ----------
    unknown_text : str
        What a field shows at 0, its "not given" value (``"unknown"``, ``"from model"``).
    """

    def __init__(self, unknown_text: str) -> None:
        self.pixel_size = FloatSpinBox(label="Pixel size (µm)", min=0.0, max=100.0,
                                       step=0.005, value=0.0)
        self.na = FloatSpinBox(label="NA", min=0.0, max=1.7, step=0.05, value=0.0)
        self.wavelength = FloatSpinBox(label="Wavelength (nm)", min=0.0, max=2000.0,
                                       step=10.0, value=0.0)
        self.index = FloatSpinBox(label="Immersion index", min=0.0, max=2.0, step=0.01,
                                  value=0.0)
        for widget, decimals in ((self.pixel_size, 4), (self.na, 3), (self.wavelength, 0),
                                 (self.index, 3)):
            widget.native.setDecimals(decimals)
            widget.native.setSpecialValueText(unknown_text)

    @property
    def widgets(self) -> dict[str, FloatSpinBox]:
        """The fields by ``OpticsHints`` name, in :data:`OPTICS_FIELDS` order."""
        fields = (self.pixel_size, self.na, self.wavelength, self.index)
        return dict(zip(OPTICS_FIELDS, fields, strict=True))

    def fill(self, layer: Any, *, clear: bool = False) -> dict[str, float]:
        """Set the fields ``layer`` records (``clear``: the others to unknown); returns the
        values set, as the fields hold them."""
        found = layer_optics(layer) if layer is not None else {}
        filled = {}
        for name, widget in self.widgets.items():
            value = found.get(name)
            if value is not None and widget.min < value <= widget.max:
                widget.value = value
                filled[name] = float(widget.value)
            elif clear:
                widget.value = 0.0
        return filled

    def values(self) -> dict[str, float | None]:
        """Each field's value; ``None`` where it is unknown (0)."""
        return {name: (float(w.value) if w.value and w.value > 0 else None)
                for name, w in self.widgets.items()}

    def set_enabled(self, enabled: bool, tooltip: str) -> None:
        for widget in self.widgets.values():
            widget.enabled = enabled
            widget.tooltip = tooltip


def sampling_notice(pixel_size_um: float | None, trained_um: tuple[float, ...]) -> str:
    """A one-line notice when ``pixel_size_um`` is more than :data:`SAMPLING_TOLERANCE` times
    from every pixel size the model was trained at; ``""`` when it is close or unknown."""
    if not pixel_size_um or not trained_um:
        return ""
    if min(max(pixel_size_um / t, t / pixel_size_um) for t in trained_um) <= SAMPLING_TOLERANCE:
        return ""
    trained = " or ".join(f"{t:g}" for t in trained_um)
    return (f"These pixels ({pixel_size_um:.3g} µm) are far from the model's training "
            f"sampling ({trained} µm/px): results may suffer. Fine-tuning it on your images "
            "(Plugins → Fine-tune) adapts it.")

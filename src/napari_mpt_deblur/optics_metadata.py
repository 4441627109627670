"""What image files and napari layers record about the microscope, in the units the package uses.

One place for every lookup of optics in metadata and every conversion of a length to µm, so
that the file reader, the napari reader, the widgets and the command line agree on what a file
says: the pixel size (OME ``PhysicalSize*``, ImageJ/TIFF resolution tags, a layer's scale and
units), the z spacing, and the optical hints of the re-blur operator (numerical aperture,
emission wavelength, immersion index) from plain metadata keys and OME-XML.

Neither Qt nor napari is imported here: a layer is described by plain values (``metadata``,
``scale``, ``units``, the path it was opened from), so the functions are tested without a
viewer. ``tifffile`` is imported only by the functions that open a file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "IMMERSION_INDEX",
    "LENGTH_UM",
    "OPTICS_FIELDS",
    "isotropic_pixel_size_um",
    "layer_pixel_size_um",
    "ome_pixel_size_um",
    "ome_z_spacing_um",
    "optics_from_metadata",
    "optics_from_ome",
    "read_ome_xml",
    "read_pixel_size_um",
    "tiff_pixel_size_um",
    "to_um",
]

#: µm per unit of length, by the (lower-cased) names OME, ImageJ and napari (pint) write; the
#: one table for every conversion to µm in the package.
LENGTH_UM: dict[str, float] = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "\\u00b5m": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micron": 1.0, "microns": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
}

#: The optical hints of the re-blur operator, as :class:`~napari_mpt_deblur.simulate.optics.
#: OpticsHints` (and ``FinetuneConfig``) names them.
OPTICS_FIELDS = ("pixel_size_um", "numerical_aperture", "wavelength_nm", "immersion_index")

#: Refractive index of OME's ``Objective/@Immersion`` media (``None``: not a single medium).
IMMERSION_INDEX: dict[str, float | None] = {
    "oil": 1.515, "water": 1.333, "glycerol": 1.47, "air": 1.0, "silicone": 1.406,
    "multi": None, "other": None,
}

#: Metadata keys (lower case) that name each hint; the first one present wins.
_KEYS = {
    "pixel_size_um": ("pixel_size_um", "pixel_size", "physical_size_x_um"),
    "numerical_aperture": ("numerical_aperture", "na", "lens_na", "objective_na"),
    "wavelength_nm": ("wavelength_nm", "emission_wavelength_nm", "emission_nm", "wavelength"),
    "immersion_index": ("refractive_index", "immersion_index", "immersion_refractive_index"),
}
_TIFF = (".tif", ".tiff")


# ------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------
def to_um(value: float, unit: Any) -> float | None:
    """``value`` in ``unit``, in µm; ``None`` when ``unit`` is not a length.

    ``unit`` is a name (``"nm"``, ``"µm"``, ``"micron"``...; see :data:`LENGTH_UM`) or a pint
    unit, as in napari's ``layer.units``.
    """
    factor = LENGTH_UM.get(str(unit).strip().lower())
    if factor is not None:
        return value * factor
    try:  # other pint length units
        return float((value * unit).to("micrometer").magnitude)
    except Exception:
        return None


def _positive(value: Any) -> float | None:
    """A finite positive float, or ``None`` (a ``(y, x)`` pair gives its x)."""
    if isinstance(value, (list, tuple)) and value:
        value = value[-1]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# ------------------------------------------------------------------------------------------
# OME-XML
# ------------------------------------------------------------------------------------------
def _ome_elements(xml: str | None, name: str) -> list[Any]:
    """The elements called ``name`` (any namespace) of an OME-XML string; none if malformed."""
    if not xml:
        return []
    from xml.etree import ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        logger.debug("malformed OME-XML", exc_info=True)
        return []
    return [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == name]


def ome_pixel_size_um(xml: str | None) -> tuple[float, float] | None:
    """``(y, x)`` µm from OME ``Pixels/@PhysicalSizeX,Y`` (unit ``PhysicalSizeXUnit``).

    OME's default unit is µm; a unit that is not a known length is read as µm too.
    """
    for pixels in _ome_elements(xml, "Pixels"):
        px, py = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
        if px and py:
            try:
                x, y = float(px), float(py)
            except ValueError:
                return None
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            return (to_um(y, unit) or y), (to_um(x, unit) or x)
    return None


def ome_z_spacing_um(xml: str | None) -> float | None:
    """The z step in µm from OME ``Pixels/@PhysicalSizeZ``; ``None`` when absent or unknown."""
    for pixels in _ome_elements(xml, "Pixels"):
        z = _positive(pixels.get("PhysicalSizeZ"))
        if z is not None:
            value = to_um(z, pixels.get("PhysicalSizeZUnit", "µm"))
            return value if value and value > 0 else None
    return None


def optics_from_ome(xml: str | None) -> dict[str, float]:
    """NA, emission wavelength (nm) and immersion index from OME-XML (what microscopes record).

    The objective's ``LensNA`` and ``Immersion`` medium, an ``ObjectiveSettings/@RefractiveIndex``
    (which wins over the medium), and the first channel's ``EmissionWavelength``.
    """
    found: dict[str, float] = {}
    for element in _ome_elements(xml, "Objective"):
        na = _positive(element.get("LensNA"))
        if na is not None:
            found.setdefault("numerical_aperture", na)
        index = IMMERSION_INDEX.get(str(element.get("Immersion", "")).lower())
        if index is not None:
            found.setdefault("immersion_index", index)
    for element in _ome_elements(xml, "ObjectiveSettings"):
        index = _positive(element.get("RefractiveIndex"))
        if index is not None:
            found["immersion_index"] = index
    for element in _ome_elements(xml, "Channel"):
        wavelength = _positive(element.get("EmissionWavelength"))
        if wavelength is not None:
            um = to_um(wavelength, element.get("EmissionWavelengthUnit", "nm"))
            if um:
                found.setdefault("wavelength_nm", um * 1e3)
    return found


# ------------------------------------------------------------------------------------------
# TIFF files
# ------------------------------------------------------------------------------------------
def tiff_pixel_size_um(
    tif: Any, ome: str | None, *, inch: bool = True
) -> tuple[float, float] | None:
    """``(y, x)`` µm of an open ``tifffile.TiffFile``: OME ``PhysicalSize*``, else its tags.

    The resolution tags are pixels per ImageJ ``unit`` when that is a length, else per
    centimetre or (``inch=True`` only) per inch: a per-inch resolution is in most files a
    document's 72 or 300 dpi, not a microscope's.
    """
    size = ome_pixel_size_um(ome)
    if size is not None:
        return size
    ij = tif.imagej_metadata or {}
    try:
        page = tif.pages[0]
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        if xres is None or yres is None:
            return None
        resunit = page.tags.get("ResolutionUnit")
        per = {2: 25400.0 if inch else None, 3: 10000.0}.get(int(resunit.value) if resunit else 0)
        unit_um = to_um(1.0, ij["unit"]) if isinstance(ij.get("unit"), str) else None
        if unit_um is not None:
            per = unit_um
        if per is None:
            return None
        x = xres.value[1] / xres.value[0] * per
        y = yres.value[1] / yres.value[0] * per
        return (y, x) if x > 0 and y > 0 and x != per else None
    except (ZeroDivisionError, TypeError, AttributeError, KeyError):
        return None


def _tiff_path(source: Any) -> Path | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    return path if path.suffix.lower() in _TIFF and path.is_file() else None


def read_pixel_size_um(path: str | os.PathLike) -> tuple[float, float] | None:
    """The (y, x) pixel size in µm recorded in a TIFF file, without reading its pixels.

    Same sources as :func:`napari_mpt_deblur._io.read_image` (OME ``PhysicalSizeX/Y``, ImageJ
    ``unit``, centimetre resolution tags), except a per-inch resolution: that is what image
    editors and screenshots write (72 or 300 dpi, i.e. 353 or 85 µm "pixels"), not a
    microscope. ``None`` for other file types, unreadable files and files that record no size.
    """
    path = _tiff_path(path)
    if path is None:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size_um(tif, tif.ome_metadata if tif.is_ome else None, inch=False)
    except Exception:  # not a readable TIFF: no size, not an error
        logger.debug("could not read the pixel size of %s", path, exc_info=True)
        return None


def read_ome_xml(path: Any) -> str | None:
    """The OME-XML of an OME-TIFF file; ``None`` for anything else (never raises)."""
    path = _tiff_path(path)
    if path is None:
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.ome_metadata if tif.is_ome else None
    except Exception:  # unreadable file: no hints, not an error
        logger.debug("could not read OME metadata of %s", path, exc_info=True)
        return None


# ------------------------------------------------------------------------------------------
# Layers (described by plain values)
# ------------------------------------------------------------------------------------------
def layer_pixel_size_um(
    scale: Iterable[float] | None,
    units: Iterable[Any] | None = None,
    source_path: str | os.PathLike | None = None,
) -> tuple[float, float] | None:
    """The (y, x) pixel size in µm of an image layer, from its scale or from its file.

    A layer's Y/X ``scale`` in length ``units`` is what it says. A layer at napari's default
    scale (1, 1, in pixels) may still come from a TIFF that records its pixel size: napari's
    built-in reader, which opens dropped TIFFs, ignores that metadata. Then the size is read
    from ``source_path`` (``layer.source.path``) with :func:`read_pixel_size_um`. A scale set
    without length units, or anything unreadable, gives ``None``.

    Parameters
    ----------
    scale, units : sequence, optional
        ``layer.scale`` and ``layer.units`` (pint units or strings); the last two entries are
        Y and X.
    source_path : path, optional
        The file the layer was opened from.
    """
    scale = [float(v) for v in scale] if scale is not None else []
    units = list(units) if units is not None else []
    if len(scale) >= 2 and len(units) >= 2:
        sizes = [to_um(abs(v), unit) for v, unit in zip(scale[-2:], units[-2:], strict=True)]
        if all(s is not None and math.isfinite(s) and s > 0 for s in sizes):
            return sizes[0], sizes[1]  # type: ignore[return-value]
    if scale[-2:] not in ([], [1.0], [1.0, 1.0]) or source_path is None:
        return None  # a scale in unknown units: not ours to override
    if not isinstance(source_path, (str, os.PathLike)):
        return None
    return read_pixel_size_um(source_path)


def isotropic_pixel_size_um(
    scale: Iterable[float] | None,
    units: Iterable[Any] | None = None,
    source_path: str | os.PathLike | None = None,
) -> float | None:
    """One pixel size in µm for a layer (:func:`layer_pixel_size_um`), ``None`` when unknown.

    Anisotropic pixels give their geometric mean: the nucleus detector assumes round nuclei.
    """
    sizes = layer_pixel_size_um(scale, units, source_path)
    if sizes is None:
        return None
    size = math.sqrt(sizes[0] * sizes[1])
    return size if size > 0 and math.isfinite(size) else None


def _from_mapping(mapping: Mapping[str, Any], found: dict[str, float]) -> None:
    lowered = {str(k).lower(): v for k, v in mapping.items()}
    for name, keys in _KEYS.items():
        if name in found:
            continue
        for key in keys:
            value = _positive(lowered.get(key))
            if value is not None:
                found[name] = value
                break


def optics_from_metadata(
    metadata: Mapping[str, Any] | None,
    *,
    scale: Sequence[float] | None = None,
    units: Sequence[Any] | None = None,
    source_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Optical hints for the re-blur operator found in what napari knows about a layer.

    Microscope files often record the optics; using them makes the re-blur kernels match the
    user's microscope instead of the model's training optics. Looked up, in order: plain keys in
    ``metadata`` (``pixel_size_um``, ``numerical_aperture``/``na``, ``wavelength_nm``,
    ``refractive_index``/``immersion_index``), the same keys in its ``"simulation"``,
    ``"optics"`` or ``"microscope"`` dicts (the plugin's sample data), OME-XML
    (``metadata["ome_xml"]`` or the OME-TIFF named by ``metadata["source"]`` or by
    ``source_path``), and finally the layer's X pixel size (:func:`layer_pixel_size_um`: its
    scale when the units are lengths, else, at the default scale, what the TIFF at
    ``source_path`` records).

    Parameters
    ----------
    metadata : mapping or None
        ``layer.metadata`` (or the metadata dict of :func:`napari_mpt_deblur._io.read_image`).
    scale, units : sequence, optional
        ``layer.scale`` and ``layer.units`` (pint units or strings).
    source_path : path, optional
        ``layer.source.path``: the file napari opened the layer from (its built-in TIFF reader
        drops the pixel size and OME-XML, so they are read from the file).

    Returns
    -------
    dict
        Any of :data:`OPTICS_FIELDS`, each a positive float; missing ones were not found.
    """
    found: dict[str, float] = {}
    metadata = metadata or {}
    _from_mapping(metadata, found)
    for key in ("simulation", "optics", "microscope"):
        nested = metadata.get(key)
        if isinstance(nested, Mapping):
            _from_mapping(nested, found)
    xml = metadata.get("ome_xml")
    if not isinstance(xml, str):
        xml = read_ome_xml(metadata.get("source")) or read_ome_xml(source_path)
    for name, value in optics_from_ome(xml).items():
        found.setdefault(name, value)
    if "pixel_size_um" not in found:
        size = layer_pixel_size_um(scale, units, source_path)
        if size is not None:
            found["pixel_size_um"] = size[1]
    return found

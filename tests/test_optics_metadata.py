"""The one module that reads optics from metadata and converts lengths to µm (no Qt, no napari)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mpt_deblur import optics_metadata as om

OME = """<?xml version="1.0"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
  <Instrument ID="Instrument:0">
    <Objective ID="Objective:0" LensNA="1.4" Immersion="Oil"/>
  </Instrument>
  <Image ID="Image:0">
    <ObjectiveSettings ID="Objective:0" RefractiveIndex="1.518"/>
    <Pixels DimensionOrder="XYZCT" Type="uint16" SizeX="8" SizeY="8" SizeZ="3" SizeC="1"
            SizeT="1" PhysicalSizeX="65" PhysicalSizeY="70" PhysicalSizeXUnit="nm"
            PhysicalSizeZ="0.0005" PhysicalSizeZUnit="mm">
      <Channel ID="Channel:0:0" EmissionWavelength="0.52" EmissionWavelengthUnit="µm"/>
    </Pixels>
  </Image>
</OME>"""


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (1.0, "µm", 1.0), (2.0, "um", 2.0), (3.0, "micron", 3.0), (65.0, "nm", 0.065),
    (65.0, "NM", 0.065), (1.5, "mm", 1500.0), (1e-6, "m", 1.0), (5000.0, "Å", 0.5),
    (0.1, " Micrometer ", 0.1),
])
def test_to_um_converts_every_length_name(value, unit, expected):
    assert om.to_um(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("unit", ["pixel", "", "s", None])
def test_to_um_refuses_what_is_not_a_length(unit):
    assert om.to_um(1.0, unit) is None


def test_to_um_takes_pint_units():
    pint = pytest.importorskip("pint")
    ureg = pint.UnitRegistry()
    assert om.to_um(2.0, ureg.micrometer) == pytest.approx(2.0)
    assert om.to_um(3.0, ureg.inch) == pytest.approx(76200.0)
    assert om.to_um(3.0, ureg.second) is None


def test_ome_xml_gives_pixel_size_z_step_and_optics_in_package_units():
    assert om.ome_pixel_size_um(OME) == pytest.approx((0.070, 0.065))
    assert om.ome_z_spacing_um(OME) == pytest.approx(0.5)
    # the objective settings' index wins over the medium's; emission converted to nm
    assert om.optics_from_ome(OME) == pytest.approx(
        {"numerical_aperture": 1.4, "immersion_index": 1.518, "wavelength_nm": 520.0})


def test_malformed_or_empty_ome_xml_gives_nothing():
    for xml in (None, "", "<OME><unclosed>"):
        assert om.ome_pixel_size_um(xml) is None
        assert om.ome_z_spacing_um(xml) is None
        assert om.optics_from_ome(xml) == {}


def test_ome_units_that_are_not_lengths_are_read_as_micrometres_or_skipped():
    xml = ('<OME><Image><Pixels PhysicalSizeX="0.2" PhysicalSizeY="0.3" '
           'PhysicalSizeXUnit="furlong" PhysicalSizeZ="2" PhysicalSizeZUnit="furlong">'
           '<Channel EmissionWavelength="500" EmissionWavelengthUnit="Hz"/>'
           '<Channel EmissionWavelength="600"/></Pixels></Image></OME>')
    assert om.ome_pixel_size_um(xml) == pytest.approx((0.3, 0.2))  # OME's default, µm
    assert om.ome_z_spacing_um(xml) is None
    assert om.optics_from_ome(xml) == {"wavelength_nm": 600.0}  # the next channel, nm default


def test_optics_from_metadata_order_of_sources():
    hints = om.optics_from_metadata({"NA": "0.75", "wavelength_nm": 610,
                                     "pixel_size_um": (0.2, 0.25)})
    assert hints == {"numerical_aperture": 0.75, "wavelength_nm": 610.0, "pixel_size_um": 0.25}
    # plain keys win over nested dicts, which win over OME-XML, which wins over the scale
    hints = om.optics_from_metadata(
        {"na": 0.5, "optics": {"na": 0.9, "immersion_index": 1.33}, "ome_xml": OME},
        scale=(1.0, 0.1), units=("µm", "µm"))
    assert hints == pytest.approx({"numerical_aperture": 0.5, "immersion_index": 1.33,
                                   "wavelength_nm": 520.0, "pixel_size_um": 0.1})
    assert om.optics_from_metadata(None, scale=(1.0, 65.0), units=("nm", "nm")) == {
        "pixel_size_um": pytest.approx(0.065)}
    assert om.optics_from_metadata({"na": -1, "wavelength_nm": "n/a", "pixel_size": float("nan")},
                                   scale=(1.0, 1.0), units=("pixel", "pixel")) == {}


def test_layer_pixel_size_from_scale_or_file(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    image = np.zeros((8, 8), np.uint16)
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(ome, image, ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 120, "PhysicalSizeY": 120,
        "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    imagej_nm = tmp_path / "imagej_nm.tif"
    tifffile.imwrite(imagej_nm, image, imagej=True, resolution=(1 / 108, 1 / 108),
                     metadata={"unit": "nm"})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image)

    assert om.layer_pixel_size_um((2.0, 0.5, 0.25), ("µm", "nm", "mm")) == pytest.approx(
        (0.0005, 250.0))
    assert om.read_pixel_size_um(ome) == pytest.approx((0.12, 0.12))
    assert om.layer_pixel_size_um((1.0, 1.0), ("pixel", "pixel"), ome) == pytest.approx(
        (0.12, 0.12))
    assert om.read_pixel_size_um(imagej_nm) == pytest.approx((0.108, 0.108))
    assert om.read_pixel_size_um(plain) is None
    assert om.read_pixel_size_um(tmp_path / "missing.tif") is None
    assert om.read_pixel_size_um(tmp_path) is None
    assert om.layer_pixel_size_um((3.0, 3.0), ("pixel", "pixel"), ome) is None  # not overridden
    assert om.optics_from_metadata({}, source_path=ome)["pixel_size_um"] == pytest.approx(0.12)


def test_isotropic_pixel_size_is_the_geometric_mean():
    assert om.isotropic_pixel_size_um((0.1, 0.4), ("µm", "µm")) == pytest.approx(0.2)
    assert om.isotropic_pixel_size_um((0.1, 0.4), ("pixel", "pixel")) is None


def test_the_file_reader_and_the_napari_reader_use_the_same_conversion(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from napari_mpt_deblur._io import read_image
    from napari_mpt_deblur._reader import tiff_layer_data

    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint16), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 65, "PhysicalSizeY": 65, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"})
    array, meta = read_image(path)
    assert meta["pixel_size_um"] == pytest.approx((0.065, 0.065))
    [(_, kwargs, _)] = tiff_layer_data(array, meta)
    assert kwargs["scale"] == pytest.approx((0.5, 0.065, 0.065))
    assert kwargs["units"] == ("µm", "µm", "µm")

"""Physically based widefield defocus simulation: PSFs, camera noise, 3-D haze, training pairs.

NumPy/SciPy only (no torch), so it is cheap to import and safe to use in data-loader workers.
See :mod:`napari_mpt_deblur.simulate.pairs` for the intensity convention of simulated pairs, and
:mod:`napari_mpt_deblur.simulate.parameters` for the ranges their optics and camera are drawn from.
"""

from __future__ import annotations

from .camera import (
    CameraConfig,
    apply_camera,
    as_generator,
    camera_response,
    camera_to_float,
)
from .mixture import (
    SimulationMixture,
    canonical_simulation_spec,
    describe_simulation,
    parse_simulation,
    simulation_from_header,
)
from .optics import (
    OpticsConfig,
    OpticsHints,
    blur,
    clear_psf_cache,
    defocus_psf,
    depth_of_field_um,
    geometric_blur_radius_um,
    psf_cache_info,
    psf_stack,
)
from .pairs import SimulatedPair, make_pair, write_pairs
from .parameters import (
    SIMULATION_PRESETS,
    SimulationConfig,
    camera_from_params,
    get_simulation_preset,
    list_simulation_presets,
    optics_from_params,
    sample_parameters,
)
from .volume import (
    apply_haze_layer,
    pseudo_volume,
    sample_haze_layers,
    widefield_image,
    widefield_stack,
)

__all__ = [
    "SIMULATION_PRESETS",
    "CameraConfig",
    "OpticsConfig",
    "OpticsHints",
    "SimulatedPair",
    "SimulationConfig",
    "SimulationMixture",
    "apply_camera",
    "apply_haze_layer",
    "as_generator",
    "blur",
    "camera_from_params",
    "camera_response",
    "camera_to_float",
    "canonical_simulation_spec",
    "clear_psf_cache",
    "defocus_psf",
    "depth_of_field_um",
    "describe_simulation",
    "geometric_blur_radius_um",
    "get_simulation_preset",
    "list_simulation_presets",
    "make_pair",
    "optics_from_params",
    "parse_simulation",
    "pseudo_volume",
    "psf_cache_info",
    "psf_stack",
    "sample_haze_layers",
    "sample_parameters",
    "simulation_from_header",
    "widefield_image",
    "widefield_stack",
    "write_pairs",
]

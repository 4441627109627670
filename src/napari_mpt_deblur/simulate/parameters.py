"""What the microscope and camera of a simulated pair are drawn from, and the draw.

:class:`SimulationConfig` holds ranges (NA, wavelength, defocus, photon budget, camera, intensity
jitter, haze); the presets name the ranges of known setups. :func:`sample_parameters` draws one
concrete microscope + camera from them, as a JSON-serialisable dict that reproduces a pair
exactly; :func:`optics_from_params` and :func:`camera_from_params` turn that dict back into the
configs of :mod:`~napari_mpt_deblur.simulate.optics` and :mod:`~napari_mpt_deblur.simulate.camera`.
:mod:`~napari_mpt_deblur.simulate.pairs` makes the images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._dataclass_io import DictRoundTrip
from .camera import CameraConfig, as_generator
from .optics import OpticsConfig
from .volume import sample_haze_layers

__all__ = [
    "SIMULATION_PRESETS",
    "SimulationConfig",
    "camera_from_params",
    "get_simulation_preset",
    "list_simulation_presets",
    "optics_from_params",
    "sample_parameters",
]

_DEFOCUS_SIDES = ("both", "positive", "negative")
# Switches of the training target; a parameter record holds each only when it is on.
_TARGET_OPTIONS = ("target_keeps_noise", "target_in_focus", "target_noise_passband",
                   "target_passband_blend")


def _range(value: Any, name: str, *, minimum: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of numbers; got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"{name} must be a finite (low, high) pair with low <= high; got {value!r}"
        )
    if minimum is not None and lo < minimum:
        raise ValueError(f"{name} must not go below {minimum}; got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class SimulationConfig(DictRoundTrip):
    """Ranges from which each simulated pair's microscope and camera are drawn.

    Every ``*_range`` is ``(low, high)``; equal ends fix the value. Draws are quantised
    (``na_step``, ``defocus_step_um``, 1 nm) so that PSFs repeat and hit the PSF cache.

    Parameters
    ----------
    name : str
        Label recorded with every pair and checkpoint.
    numerical_aperture_range : (float, float)
        Objective NA.
    wavelength_nm_choices : tuple of float
        Emission wavelengths to pick from (e.g. 460 Hoechst, 620 Alexa 594 / actin). Empty to
        draw from ``wavelength_nm_range`` instead.
    wavelength_nm_range : (float, float)
        Used only when ``wavelength_nm_choices`` is empty.
    immersion_index, sample_index : float
        Refractive indices (``sample_index=None``: matched).
    depth_um_range : (float, float)
        Emitter depth below the coverslip (matters only with an index mismatch).
    pixel_size_um : float
        Camera pixel in the sample plane.
    defocus_um_range : (float, float)
        Nominal defocus magnitude, µm.
    near_focus_probability : float
        Share of pairs whose nominal defocus is drawn from ``near_focus_um_range`` instead: a
        deblurrer must leave a sharp input sharp, and it only learns that from in-focus and
        slightly defocused examples (a model trained on 2-16 µm alone invents structure on
        in-focus images). 0 (the default) keeps the plain uniform draw.
    near_focus_um_range : (float, float)
        Nominal defocus magnitude of near-focus pairs, µm (0 = in focus, camera noise only).
    soft_content_probability : float
        Share of pairs whose specimen is made smoother before imaging: the source is filtered
        with a Gaussian of ``soft_content_sigma_px_range`` (output pixels) and that smoother
        image is both the target and what the microscope blurs. Real specimens (diffuse DNA
        stain, large flat nuclei, 8-bit rescaled exports) are often softer than the training
        sources; a blind model that only ever saw crisp sources takes softness itself for
        defocus and sharpens soft in-focus images into compact blobs
        (docs/results/selection_stage13.md, the U2OS set). 0 (the default) leaves sources as
        they are.
    soft_content_sigma_px_range : (float, float)
        Gaussian standard deviation of that smoothing, in output pixels.
    target_keeps_noise : bool
        Add the input's own camera noise (the very realisation in ``blurred``) to the target,
        so a model learns to deblur without denoising. A real in-focus image carries its own
        acquisition noise and fine texture, which a blind model cannot tell from camera noise;
        with clean targets it learns to erase both, and costs 4-7 dB on sharp, low-noise
        inputs (docs/results/selection_noise_target.md). With this on, the noise is visible
        in the input and wanted in the output: a well-posed task whose in-focus answer is the
        input itself. False (the default) keeps the clean target.
    target_in_focus : bool
        Make the target what this microscope records *in focus* (the specimen through the
        in-focus PSF), not the specimen itself: the model removes defocus and leaves the
        diffraction limit alone. At 20x (0.645 µm pixels) the in-focus PSF is under a pixel
        wide, yet undoing it triples the power of the noise at Nyquist, which costs an
        in-focus image more than the sharpening gains (docs/results/selection_noise_target.md).
        With ``target_keeps_noise`` the in-focus target is the input itself. False (the
        default) keeps the specimen as the target.
    target_noise_passband : bool
        With ``target_keeps_noise``, keep only the share of the input's noise that the defocus
        has not already exposed as noise: the noise filtered by
        ``W(f) = min(1, |OTF_defocus(f)| / |OTF_in_focus(f)|)``. In focus W = 1 and the target
        is the input (no harm to sharp images); far out of focus W ≈ 0 above the blur's
        passband, where the input's texture can only be camera noise, so the model still
        denoises there. Keeping all of the noise (``target_keeps_noise`` alone) cost ~1 dB at
        4-8 µm (docs/results/selection_noise_target.md). False (the default) keeps all of it.
    target_passband_blend : bool
        With ``target_in_focus`` and ``target_noise_passband``: blend the target per frequency
        between the in-focus image (where W = 1) and the specimen itself (where W = 0), i.e.
        add ``(1 - W)``-filtered ``specimen - in-focus image``. In focus the target stays the
        input; out of focus it becomes the specimen wherever the defocus has erased what focus
        records, as with the default's clean targets. The in-focus target alone capped the
        2-4 µm gain at the in-focus image's distance to the specimen, which scoring against
        the specimen counts (docs/results/selection_noise_target.md). False (the default).
    defocus_sides : {"both", "positive", "negative"}
        Sign of the defocus (both: 50/50).
    defocus_scale_range : (float, float)
        Effective defocus = nominal × scale (BBBC006's real defocus is 1.0-1.3× the nominal).
    defocus_step_um, na_step : float
        Quantisation of the effective defocus and the NA.
    photons_per_unit_range : (float, float)
        Photo-electrons at full scale, drawn log-uniformly (the photon budget).
    read_noise_e_range : (float, float)
        Read noise, electrons rms.
    offset_adu_range : (float, float)
        Camera offset, ADU (drawn as an integer).
    bit_depth_choices : tuple of int
        ADC bit depths to pick from.
    full_scale_fraction_range : (float, float)
        Fraction of the ADU range above offset that full scale occupies; sets the gain, so
        values above ``1/fraction`` saturate.
    intensity_scale_range, intensity_gamma_range : (float, float)
        Intensity jitter ``scale·x**gamma`` (gamma drawn log-uniformly).
    background_range : (float, float)
        Uniform background (autofluorescence) added to the signal, in full-scale units.
    haze_probability : float
        Probability that a pair gets out-of-focus haze layers (3-D widefield model).
    haze_layers_range : (int, int)
        Number of haze layers when it does.
    haze_distance_um_range, haze_weight_range : (float, float)
        Distance of haze layers from the in-focus plane, and their relative brightness.
    source_percentiles : (float, float)
        Percentiles of the source mapped to 0 and 1.
    """

    name: str = "custom"
    numerical_aperture_range: tuple[float, float] = (0.40, 0.60)
    wavelength_nm_choices: tuple[float, ...] = (460.0, 620.0)
    wavelength_nm_range: tuple[float, float] = (450.0, 650.0)
    immersion_index: float = 1.0
    sample_index: float | None = None
    depth_um_range: tuple[float, float] = (0.0, 0.0)
    pixel_size_um: float = 0.645
    defocus_um_range: tuple[float, float] = (2.0, 32.0)
    near_focus_probability: float = 0.0
    near_focus_um_range: tuple[float, float] = (0.0, 2.0)
    soft_content_probability: float = 0.0
    soft_content_sigma_px_range: tuple[float, float] = (0.5, 2.0)
    target_keeps_noise: bool = False
    target_in_focus: bool = False
    target_noise_passband: bool = False
    target_passband_blend: bool = False
    defocus_sides: str = "both"
    defocus_scale_range: tuple[float, float] = (1.0, 1.3)
    defocus_step_um: float = 0.25
    na_step: float = 0.01
    photons_per_unit_range: tuple[float, float] = (300.0, 5000.0)
    read_noise_e_range: tuple[float, float] = (1.0, 8.0)
    offset_adu_range: tuple[float, float] = (100.0, 120.0)
    bit_depth_choices: tuple[int, ...] = (12, 16)
    full_scale_fraction_range: tuple[float, float] = (0.3, 0.85)
    intensity_scale_range: tuple[float, float] = (0.8, 1.1)
    intensity_gamma_range: tuple[float, float] = (0.8, 1.25)
    background_range: tuple[float, float] = (0.0, 0.05)
    haze_probability: float = 0.0
    haze_layers_range: tuple[int, int] = (1, 2)
    haze_distance_um_range: tuple[float, float] = (4.0, 16.0)
    haze_weight_range: tuple[float, float] = (0.1, 0.4)
    source_percentiles: tuple[float, float] = (0.5, 99.9)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        positive = dict(
            numerical_aperture_range=0.0,
            wavelength_nm_range=0.0,
            defocus_scale_range=0.0,
            photons_per_unit_range=0.0,
            full_scale_fraction_range=0.0,
            intensity_scale_range=0.0,
            intensity_gamma_range=0.0,
        )
        for name in (
            "numerical_aperture_range", "wavelength_nm_range", "depth_um_range",
            "defocus_um_range", "near_focus_um_range", "soft_content_sigma_px_range",
            "defocus_scale_range", "photons_per_unit_range", "read_noise_e_range",
            "offset_adu_range",
            "full_scale_fraction_range",
            "intensity_scale_range", "intensity_gamma_range", "background_range",
            "haze_distance_um_range", "haze_weight_range", "source_percentiles",
        ):  # fmt: skip
            lo, hi = _range(getattr(self, name), name, minimum=0.0)
            if name in positive and lo <= 0:
                raise ValueError(f"{name} must be positive; got {(lo, hi)}")
            set_(name, (lo, hi))
        if self.numerical_aperture_range[1] >= self.immersion_index:
            raise ValueError(
                f"numerical_aperture_range {self.numerical_aperture_range} must stay below "
                f"immersion_index {self.immersion_index}"
            )
        if self.full_scale_fraction_range[1] > 1:
            raise ValueError(
                "full_scale_fraction_range must lie in (0, 1]; "
                f"got {self.full_scale_fraction_range}"
            )
        p_lo, p_hi = self.source_percentiles
        if p_hi > 100 or p_lo >= p_hi:
            raise ValueError(
                "source_percentiles must be (low, high) with 0 <= low < high <= 100; "
                f"got {self.source_percentiles}"
            )
        set_("wavelength_nm_choices", tuple(float(v) for v in self.wavelength_nm_choices))
        if any(not v > 0 for v in self.wavelength_nm_choices):
            raise ValueError(
                f"wavelength_nm_choices must be positive; got {self.wavelength_nm_choices}"
            )
        set_("bit_depth_choices", tuple(int(v) for v in self.bit_depth_choices))
        if not self.bit_depth_choices or any(not 8 <= v <= 16 for v in self.bit_depth_choices):
            raise ValueError(
                f"bit_depth_choices must be non-empty, each in 8..16; got {self.bit_depth_choices}"
            )
        lo, hi = (int(v) for v in self.haze_layers_range)
        if not 0 <= lo <= hi:
            raise ValueError(f"haze_layers_range must be 0 <= low <= high; got {(lo, hi)}")
        set_("haze_layers_range", (lo, hi))
        for name in ("near_focus_probability", "soft_content_probability", "haze_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        for name in _TARGET_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if self.target_noise_passband and not self.target_keeps_noise:
            raise ValueError("target_noise_passband filters the noise that target_keeps_noise "
                             "adds to the target; set target_keeps_noise too")
        if self.target_passband_blend and not (self.target_noise_passband
                                               and self.target_in_focus):
            raise ValueError("target_passband_blend blends the in-focus target with the "
                             "specimen; set target_in_focus and target_noise_passband too")
        if self.defocus_sides not in _DEFOCUS_SIDES:
            raise ValueError(
                f"defocus_sides must be one of {', '.join(map(repr, _DEFOCUS_SIDES))}; "
                f"got {self.defocus_sides!r}"
            )
        for name in ("immersion_index", "pixel_size_um", "defocus_step_um", "na_step"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if self.sample_index is not None and not self.sample_index > 0:
            raise ValueError(f"sample_index must be positive or None; got {self.sample_index!r}")

    def replace(self, **overrides: Any) -> SimulationConfig:
        """Copy with some fields replaced (lists accepted for ranges, as from JSON/YAML)."""
        return SimulationConfig.from_dict({**self.to_dict(), **overrides})


SIMULATION_PRESETS: dict[str, SimulationConfig] = {
    # BBBC006 (Broad): 20x dry widefield, 2x2 binning, 0.645 µm/px, z planes every 2 µm up to
    # ±32 µm, 12-bit camera with offset ≈110. NA and defocus scale are randomised because the
    # real pair fits NA 0.45-0.55 / 1.0-1.25x nominal defocus (data/README.md).
    "bbbc006": SimulationConfig(
        name="bbbc006",
        numerical_aperture_range=(0.40, 0.60),
        wavelength_nm_choices=(460.0, 620.0),
        immersion_index=1.0,
        pixel_size_um=0.645,
        defocus_um_range=(2.0, 32.0),
        defocus_scale_range=(1.0, 1.3),
        photons_per_unit_range=(300.0, 5000.0),
        read_noise_e_range=(2.0, 10.0),
        offset_adu_range=(100.0, 120.0),
        bit_depth_choices=(12,),
        full_scale_fraction_range=(0.4, 0.9),
    ),
    # Generic dry widefield (10x-40x), for users whose optics are not BBBC006.
    "widefield-dry": SimulationConfig(
        name="widefield-dry",
        numerical_aperture_range=(0.25, 0.80),
        wavelength_nm_choices=(),
        wavelength_nm_range=(450.0, 680.0),
        immersion_index=1.0,
        pixel_size_um=0.325,
        defocus_um_range=(1.0, 16.0),
        defocus_scale_range=(1.0, 1.0),
        photons_per_unit_range=(200.0, 10000.0),
        read_noise_e_range=(1.0, 8.0),
        offset_adu_range=(0.0, 500.0),
        bit_depth_choices=(12, 16),
    ),
    # Oil immersion NA 1.2 at 0.1 µm/px and small defocus: the domain-shift benchmark (a
    # model trained on "bbbc006" has never seen PSFs like these).
    "oil-1.2": SimulationConfig(
        name="oil-1.2",
        numerical_aperture_range=(1.2, 1.2),
        wavelength_nm_choices=(),
        wavelength_nm_range=(450.0, 650.0),
        immersion_index=1.515,
        pixel_size_um=0.1,
        defocus_um_range=(0.5, 4.0),
        defocus_scale_range=(1.0, 1.0),
        defocus_step_um=0.05,
        haze_distance_um_range=(1.0, 4.0),
        photons_per_unit_range=(300.0, 5000.0),
        read_noise_e_range=(1.0, 3.0),
        offset_adu_range=(90.0, 110.0),
        bit_depth_choices=(16,),
    ),
    # High-NA oil widefield for *training* (issue #26): 60x-100x / NA 1.25-1.45 oil objectives
    # (n 1.515, index-matched mounting: effective = nominal defocus), chosen from common
    # instruments, not from any evaluation result. Pixel 0.1 µm: a 6.5 µm sCMOS pixel behind 60x
    # plus relay, and about Nyquist for NA 1.4 (λ/4NA ≈ 0.09 µm at 520 nm); other pixel sizes
    # (e.g. 0.065 µm at 100x) are mixture members with `pixel_size_um` overrides, one value per
    # config. Emission: DAPI/Hoechst, GFP, mCherry, Cy5. Defocus 0-3 µm: the axial depth of
    # field λn/NA² is ~0.4 µm, so 3 µm is ~7 depths of field (a blur disc of ~7 µm radius), and
    # at NA 1.45 its PSF still fits the simulator's 255-px cap; a quarter of the pairs lie
    # within one depth of field (0-0.4 µm) so that sharp inputs stay sharp. Step 0.05 µm, as
    # "oil-1.2". A fifth of the pairs get out-of-focus haze from planes 1-4 µm away (the
    # cell's other planes, which dominate real high-NA widefield images). Camera: sCMOS
    # (1-2 e-) to cooled CCD (~6 e-) read noise, 12/16-bit.
    "oil-high-na": SimulationConfig(
        name="oil-high-na",
        numerical_aperture_range=(1.25, 1.45),
        wavelength_nm_choices=(460.0, 520.0, 610.0, 670.0),
        immersion_index=1.515,
        pixel_size_um=0.1,
        defocus_um_range=(0.0, 3.0),
        near_focus_probability=0.25,
        near_focus_um_range=(0.0, 0.4),
        defocus_scale_range=(1.0, 1.0),
        defocus_step_um=0.05,
        haze_probability=0.2,
        haze_distance_um_range=(1.0, 4.0),
        photons_per_unit_range=(200.0, 5000.0),
        read_noise_e_range=(1.0, 6.0),
        offset_adu_range=(90.0, 120.0),
        bit_depth_choices=(12, 16),
    ),
}


def list_simulation_presets() -> list[str]:
    """Names of the simulation presets, sorted."""
    return sorted(SIMULATION_PRESETS)


def get_simulation_preset(name: str) -> SimulationConfig:
    """The preset called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return SIMULATION_PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown simulation preset {name!r}; choose one of "
            f"{', '.join(map(repr, list_simulation_presets()))}"
        ) from None


def _as_config(cfg: SimulationConfig | str) -> SimulationConfig:
    if isinstance(cfg, str):
        return get_simulation_preset(cfg)
    if not isinstance(cfg, SimulationConfig):
        raise TypeError(f"cfg must be a SimulationConfig or preset name; got {type(cfg).__name__}")
    return cfg


def _quantise(value: float, step: float) -> float:
    return round(round(value / step) * step, 6)


def _log_uniform(gen: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(gen.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def sample_parameters(
    cfg: SimulationConfig | str,
    rng: np.random.Generator | int | None = None,
    *,
    defocus_um: float | None = None,
    defocus_scale: float | None = None,
) -> dict[str, Any]:
    """Draw one concrete microscope + camera from the ranges of ``cfg``.

    Parameters
    ----------
    cfg : SimulationConfig or str
        Ranges (or a preset name).
    rng : numpy.random.Generator, int or None
        Same seed, same parameters.
    defocus_um : float, optional
        Fix the *nominal* signed defocus (µm) instead of drawing it, e.g. the 4/8/16/24 µm
        levels of the evaluation table.
    defocus_scale : float, optional
        Fix the nominal-to-effective defocus factor (1.0 for exact defocus levels).

    Returns
    -------
    dict
        JSON-serialisable; keys named after :class:`OpticsConfig` / :class:`CameraConfig`
        fields plus ``defocus_nominal_um``, ``defocus_scale``, ``full_scale_fraction``,
        ``intensity_scale``, ``intensity_gamma``, ``background``, ``haze_layers``,
        ``source_percentiles`` and ``preset``. ``defocus_um`` is the effective defocus.
    """
    cfg = _as_config(cfg)
    gen = as_generator(rng)
    # Every draw happens in a fixed order whatever is fixed, so fixing one parameter does not
    # change the others for the same seed.
    na = _quantise(gen.uniform(*cfg.numerical_aperture_range), cfg.na_step)
    na = min(max(na, cfg.numerical_aperture_range[0]), cfg.numerical_aperture_range[1])
    if cfg.wavelength_nm_choices:
        wavelength = float(cfg.wavelength_nm_choices[gen.integers(len(cfg.wavelength_nm_choices))])
    else:
        wavelength = float(round(gen.uniform(*cfg.wavelength_nm_range)))
    depth = round(float(gen.uniform(*cfg.depth_um_range)), 2)
    magnitude = float(gen.uniform(*cfg.defocus_um_range))
    sign_draw = gen.random()
    scale_draw = float(gen.uniform(*cfg.defocus_scale_range))
    if cfg.defocus_sides == "both":
        sign = 1.0 if sign_draw < 0.5 else -1.0
    else:
        sign = 1.0 if cfg.defocus_sides == "positive" else -1.0
    nominal = sign * magnitude if defocus_um is None else float(defocus_um)
    scale = scale_draw if defocus_scale is None else float(defocus_scale)
    if not (math.isfinite(nominal) and math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"defocus_um must be finite and defocus_scale positive; got {defocus_um!r}, "
            f"{defocus_scale!r}"
        )

    photons = _log_uniform(gen, *cfg.photons_per_unit_range)
    read_noise = float(gen.uniform(*cfg.read_noise_e_range))
    offset = float(round(gen.uniform(*cfg.offset_adu_range)))
    bit_depth = int(cfg.bit_depth_choices[gen.integers(len(cfg.bit_depth_choices))])
    fraction = float(gen.uniform(*cfg.full_scale_fraction_range))
    gain = CameraConfig.at_full_scale(
        photons_per_unit=photons, read_noise_e=read_noise, offset_adu=offset,
        bit_depth=bit_depth, full_scale_fraction=fraction,
    ).gain_adu_per_e

    intensity_scale = float(gen.uniform(*cfg.intensity_scale_range))
    gamma = _log_uniform(gen, *cfg.intensity_gamma_range)
    background = float(gen.uniform(*cfg.background_range))
    haze: list[dict[str, Any]] = []
    if gen.random() < cfg.haze_probability:
        n_layers = int(gen.integers(cfg.haze_layers_range[0], cfg.haze_layers_range[1] + 1))
        haze = sample_haze_layers(
            gen,
            n_layers=n_layers,
            distance_um_range=cfg.haze_distance_um_range,
            weight_range=cfg.haze_weight_range,
        )
        for layer in haze:  # on the defocus grid, so haze PSFs repeat and hit the cache
            layer["z_um"] = _quantise(layer["z_um"], cfg.defocus_step_um)
    # Drawn last and only when enabled, so every other draw (and every existing seed's
    # parameters) stays what it was.
    if cfg.near_focus_probability > 0 and gen.random() < cfg.near_focus_probability:
        near = float(gen.uniform(*cfg.near_focus_um_range))
        if defocus_um is None:
            nominal = math.copysign(near, nominal)
    content_sigma = 0.0
    if cfg.soft_content_probability > 0 and gen.random() < cfg.soft_content_probability:
        content_sigma = round(float(gen.uniform(*cfg.soft_content_sigma_px_range)), 3)

    params = {
        "preset": cfg.name,
        "numerical_aperture": na,
        "wavelength_nm": wavelength,
        "immersion_index": float(cfg.immersion_index),
        "sample_index": None if cfg.sample_index is None else float(cfg.sample_index),
        "depth_um": depth,
        "pixel_size_um": float(cfg.pixel_size_um),
        "defocus_nominal_um": round(nominal, 4),
        "defocus_scale": round(scale, 4),
        "defocus_um": _quantise(nominal * scale, cfg.defocus_step_um),
        "photons_per_unit": round(photons, 2),
        "read_noise_e": round(read_noise, 3),
        "offset_adu": offset,
        "bit_depth": bit_depth,
        "full_scale_fraction": round(fraction, 4),
        "gain_adu_per_e": gain,
        "intensity_scale": round(intensity_scale, 4),
        "intensity_gamma": round(gamma, 4),
        "background": round(background, 5),
        "haze_layers": haze,
        "content_sigma_px": content_sigma,
        "source_percentiles": list(cfg.source_percentiles),
    }
    # Only when on, so every earlier parameter record stays as it was.
    for name in _TARGET_OPTIONS:
        if getattr(cfg, name):
            params[name] = True
    return params


_OPTICS_KEYS = ("numerical_aperture", "wavelength_nm", "immersion_index", "sample_index",
                "depth_um", "pixel_size_um", "defocus_um")  # fmt: skip
_CAMERA_KEYS = ("photons_per_unit", "read_noise_e", "offset_adu", "gain_adu_per_e", "bit_depth")


def _require(params: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"simulation parameters lack {missing}; use sample_parameters() output")


def optics_from_params(params: Mapping[str, Any]) -> OpticsConfig:
    """The :class:`OpticsConfig` of a parameter dict from :func:`sample_parameters`."""
    _require(params, _OPTICS_KEYS)
    return OpticsConfig(**{k: params[k] for k in _OPTICS_KEYS})


def camera_from_params(params: Mapping[str, Any]) -> CameraConfig:
    """The :class:`CameraConfig` of a parameter dict from :func:`sample_parameters`."""
    _require(params, _CAMERA_KEYS)
    return CameraConfig(**{k: params[k] for k in _CAMERA_KEYS})

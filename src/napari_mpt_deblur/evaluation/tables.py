"""The quality table as Markdown, with the protocol stated in notes under it.

The docs' tables (``docs/results/quality*.md``), ``mpt-deblur evaluate``'s ``results.md`` and
the benchmark all print :func:`to_markdown` of an :class:`~.results.EvalResult`, so a number
and the conditions it was measured under travel together. The JSON form of the same results
is :meth:`EvalResult.to_dict <napari_mpt_deblur.evaluation.EvalResult.to_dict>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .protocol import IMAGE_SETS
from .results import EvalResult

__all__ = ["to_markdown"]


def _cells(values: Mapping[str, tuple[float, float] | None], digits: int) -> list[str]:
    """Format ``mean ± std`` cells, bold where the rounded mean is the row's best."""
    rounded = {m: round(v[0], digits) for m, v in values.items() if v is not None}
    best = max(rounded.values()) if rounded else None
    cells = []
    for method, value in values.items():
        if value is None:
            cells.append("–")
            continue
        text = f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
        cells.append(f"**{text}**" if len(rounded) > 1 and rounded[method] == best else text)
    return cells


def _table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _level_rows(
    summary: Mapping[str, Mapping[str, Any]], methods: Sequence[str], prefix: Sequence[str] = ()
) -> list[list[str]]:
    rows = []
    for row_key, per_method in summary.items():
        level = row_key.split("/")[-1]
        for metric, label, digits in (("psnr_db", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
            values = {m: per_method[m][metric] if m in per_method else None for m in methods}
            rows.append([*prefix, f"{level} µm", label, *_cells(values, digits)])
    return rows


def to_markdown(result: EvalResult, *, title: str | None = "Deblurring quality") -> str:
    """The quality table(s) as Markdown, with the protocol stated in notes under them.

    Cells are mean ± sample standard deviation over images; the best mean of each row is bold.
    """
    methods = list(result.methods)
    counts = {k: len(v) for k, v in result.images.items()}
    n_total = sum(counts.values())
    sets_text = ", ".join(
        f"{IMAGE_SETS[k].description} ({n})" for k, n in counts.items() if k in IMAGE_SETS
    )
    out: list[str] = []
    if title:
        out += [f"## {title}", ""]
    header_methods = [m.replace("|", "\\|") for m in methods]
    if result.scores:
        noun = "image" if n_total == 1 else "images"
        out += [f"### Simulated defocus: {n_total} real in-focus eval {noun}", "",
                f"Images: {sets_text}.", ""]  # fmt: skip
        out.append(_table(
            ["defocus", "metric", *header_methods],
            ["---:", "---", *(["---:"] * len(methods))],
            _level_rows(result.summary(), methods),
        ))  # fmt: skip
        out.append("")
        if len(counts) > 1:
            by_set = result.summary(by_set=True)
            rows: list[list[str]] = []
            for key in counts:
                part = {k: v for k, v in by_set.items() if k.split("/")[0] == key}
                rows += _level_rows(part, methods, prefix=[f"{key} (n={counts[key]})"])
            out += ["#### Per image set", ""]
            out.append(_table(
                ["set", "defocus", "metric", *header_methods],
                ["---", "---:", "---", *(["---:"] * len(methods))],
                rows,
            ))  # fmt: skip
            out.append("")
    if result.real_pair:
        real_methods = [s.method for s in result.real_pair]
        first = result.real_pair[0]
        out += [f"### Real defocus: BBBC006 pair ({first.image}, {first.defocus_um:g} µm "
                "below focus, vs in focus)", ""]  # fmt: skip
        rows = []
        for metric, label, digits in (("psnr_db", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
            values = {s.method: getattr(s, metric) for s in result.real_pair}
            best = max(round(v, digits) for v in values.values())
            rows.append([label, *(
                f"**{v:.{digits}f}**" if round(v, digits) == best and len(values) > 1
                else f"{v:.{digits}f}" for v in values.values()
            )])  # fmt: skip
        out.append(_table(["metric", *[m.replace("|", "\\|") for m in real_methods]],
                          ["---", *(["---:"] * len(real_methods))], rows))  # fmt: skip
        out.append("")
    out += ["**Notes**", ""]
    out += [f"- {note}" for note in _notes(result)]
    return "\n".join(out) + "\n"


def _notes(result: EvalResult) -> list[str]:
    cfg = result.config
    wavelengths = ", ".join(
        f"{k} {IMAGE_SETS[k].wavelength_nm:g} nm" for k in result.images if k in IMAGE_SETS
    )
    val_files = [f["name"] for f in result.rl_settings.get("val_files", []) if "name" in f]
    val_text = f"the {len(val_files)} images of `val/`" if val_files else "`val/`"
    notes = [
        "Metrics: PSNR and SSIM (Gaussian window σ = 1.5) with both images normalised by the "
        "reference's min–max range (data range 1), `napari_mpt_deblur.metrics`. Cells: mean ± "
        "sample standard deviation over images; bold: best mean of the row.",
        f"Simulation (`napari_mpt_deblur.simulate.make_pair`): scalar pupil-function defocus "
        f"PSF, NA {cfg.numerical_aperture:g} "
        f"{'dry' if cfg.immersion_index == 1 else f'immersion n = {cfg.immersion_index:g}'}, "
        f"{cfg.pixel_size_um:g} µm/px, emission "
        f"{wavelengths}, defocus exactly the level (scale 1.0), no intensity jitter or haze; "
        f"camera {cfg.photons_per_unit:g} photo-electrons at full scale (the source's "
        f"{cfg.source_percentiles[1]:g}th percentile), shot noise, {cfg.read_noise_e:g} e⁻ read "
        f"noise, offset {cfg.offset_adu:g} ADU, {cfg.bit_depth}-bit; noise seed {cfg.seed} "
        "(per image and level). "
        + ("Whole images." if cfg.crop_px is None else
           f"Central {cfg.crop_px}×{cfg.crop_px} crops."),
        "Reference: the simulator's noise-free in-focus target in the same units as the input.",
        "Richardson–Lucy: `skimage.restoration.richardson_lucy` with the true PSF, clip=False, "
        "on the image minus its minimum, mirror-padded by the PSF radius. Iterations chosen "
        f"on {val_text} only (best mean {cfg.rl_criterion.upper()} over validation images "
        "simulated like the eval images), "
        "per emission wavelength and level: " + "; ".join(
            f"{wl} nm: " + ", ".join(f"{dz} µm → {n}" for dz, n in levels.items())
            for wl, levels in result.rl_iterations.items()
        ) + ".",
    ]  # fmt: skip
    if result.real_pair:
        notes.append(
            "Real pair: the in-focus (z=16) and defocused (z=00) recordings have different "
            "intensity scales, so every method's output, the blurred input included, is mapped "
            "onto the in-focus image by a least-squares affine fit (gain, offset) before PSNR/SSIM"
            f". Its true PSF is unknown: RL uses the simulated PSF at NA "
            f"{cfg.numerical_aperture:g}, {cfg.real_pair_wavelength_nm:g} nm, "
            f"{cfg.real_pair_defocus_um:g} µm."
        )
    for name, info in result.models.items():
        source = info.get("source", "in memory")
        sha = info.get("sha256")
        views = info.get("ensemble", 1)
        notes.append(f"Model `{name}`: {source}" + (f" (SHA-256 {sha[:12]}…)" if sha else "")
                     + (f", test-time augmentation: mean of {views} rotated/mirrored views"
                        if views > 1 else "") + ".")  # fmt: skip
    if not result.models:
        notes.append("No models evaluated (baselines only).")
    env = result.environment
    if env:
        versions = ", ".join(
            f"{k} {env[k]}" for k in ("napari_mpt_deblur", "torch", "scikit-image", "numpy")
            if k in env
        )
        notes.append(f"Run {env.get('date', '?')} on {env.get('cpu_count', '?')} CPUs; "
                     f"{versions}; {result.seconds:.0f} s in total.")  # fmt: skip
    return notes

"""The model card (``README.md``), citations and licence of an exported bioimage.io package."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..engine.normalize import IntensityNormalization
from .network import ARCHITECTURE_CALLABLE, ARCHITECTURE_MODULE

if TYPE_CHECKING:
    from .export import ExportReport

__all__ = ["CITATIONS", "DEFAULT_AUTHORS", "DEFAULT_LICENSE"]


CITATIONS = (
    {
        "text": "Zhang et al., \"A Unified Framework for Microscopy Defocus Deblur with "
        "Multi-Pyramid Transformer and Contrastive Learning\", CVPR 2024 (arXiv:2403.02611)",
        "doi": "10.48550/arXiv.2403.02611",
    },
    {
        "text": "J. Wang and B. Han, \"Defocus Deblur Microscopy via Head-to-Tail Cross-Scale "
        "Fusion\", IEEE ICIP 2022, pp. 2081-2086 (arXiv:2201.02876)",
        "doi": "10.48550/arXiv.2201.02876",
    },
)
DEFAULT_AUTHORS = ("napari-mpt-deblur developers",)
DEFAULT_LICENSE = "Apache-2.0"


def _bundled_card(header: dict[str, Any], sha256: str | None) -> str | None:
    """The shipped model card when the weights are exactly a bundled model's (same SHA-256)."""
    from ..models.pretrained import list_pretrained

    match = [e for e in list_pretrained() if sha256 is not None and e.sha256 == sha256]
    if not match:
        return None
    card = match[0].path.with_suffix(".md")
    return card.read_text(encoding="utf-8") if card.is_file() else None


def _citations(arch: str) -> list[dict[str, str]]:
    """The paper of the exported architecture first, then the other one (the project's)."""
    return list(CITATIONS) if arch == "mpt" else [CITATIONS[1], CITATIONS[0]]


def _license(header: dict[str, Any]) -> str:
    text = str(header.get("license") or DEFAULT_LICENSE)
    return text.split()[0]  # "Apache-2.0 (weights trained by ...)" -> the SPDX id


def _model_card(
    name: str,
    header: dict[str, Any],
    report: ExportReport,
    pixel: float | None,
    bundled_card: str | None,
) -> str:
    norm = IntensityNormalization.from_dict(header.get("normalization"))
    lines = [
        f"# napari-mpt-deblur: `{name}`",
        "",
        str(header.get("description") or "A defocus deblurring network."),
        "",
        "## Model",
        "",
        f"- Architecture: `{header['arch']}`"
        + (f", `{header['routing']}` routing" if header.get("routing") else "")
        + f"; config `{json.dumps(header['config'])}`.",
        f"- Exported by napari-mpt-deblur {__version__} (`mpt-deblur export-bioimageio`); "
        f"weights: {', '.join(report.weight_formats)}"
        + "".join(f"; no {k}: {v}" for k, v in report.skipped.items()) + ".",
        f"- Source checkpoint SHA-256: `{header.get('sha256', 'unknown')}`.",
        f"- Pixel size: {pixel} µm (of the training simulation)." if pixel
        else "- Pixel size: not recorded.",
        "",
        "## Inputs and outputs",
        "",
        "- Input `raw`: axes (batch, channel, y, x), float32 in the camera's units; y and x "
        f"multiples of {_multiple_text(header)}; "
        + ("batch size 1 (the traced torchscript model has the batch size built in)."
           if report.batch_size == 1 else "any batch size."),
        "- Output `deblurred`: same shape and units.",
        f"- Normalisation is inside the network (`{ARCHITECTURE_MODULE}.{ARCHITECTURE_CALLABLE}`):"
        f" per sample and channel, `lo`/`hi` = the {norm.low_percentile} and "
        f"{norm.high_percentile} percentiles ({norm.method}) of the input, the network sees "
        "`(x - lo) / (hi - lo)` and its output is mapped back by `y * (hi - lo) + lo`. "
        "The spec has no postprocessing op for that inverse, hence the wrapper. Tools that "
        "tile large images normalise each tile by its own percentiles; napari-mpt-deblur itself "
        "normalises whole planes, so give whole planes where memory allows.",
        "",
        "## Validation",
        "",
        "The package's test input is a crop of a real widefield image with simulated defocus; "
        "its test output is `napari_mpt_deblur.deblur` on it (whole plane, CPU, fp32). "
        "Validation metrics recorded in the checkpoint:",
        "",
        f"```json\n{json.dumps(header.get('metrics'), indent=1)[:3000]}\n```"
        if header.get("metrics") else "None recorded (untrained or custom model).",
        "",
        "## Citation",
        "",
        *[f"- {c['text']}, doi:{c['doi']}" for c in _citations(header["arch"])],
        "",
        "## Licence",
        "",
        str(header.get("license") or DEFAULT_LICENSE),
        "",
    ]
    if bundled_card:
        lines += ["## Bundled model card", "", bundled_card.replace("\n# ", "\n### "), ""]
    return "\n".join(lines)


def _multiple_text(header: dict[str, Any]) -> str:
    from ..models.checkpoint import config_from_header

    return str(config_from_header(header).size_multiple)

"""bioimage.io model-zoo packages: export our models, and load them back.

A bioimage.io package (``bioimageio.spec`` 0.5 format) is a zip of an ``rdf.yaml`` description,
weights, a test input with its expected output and a model card. careamics, deepImageJ, ilastik
and the bioimage.io tools read it, so a model trained or fine-tuned here can be used there.

Why the network is wrapped (:class:`DeblurNetwork`)
---------------------------------------------------
Our engine maps each plane and channel to model units with ``(x - lo) / (hi - lo)``, where
``lo``/``hi`` are low/high percentiles of *that input image*, and maps the network's output back
with the inverse, ``y * (hi - lo) + lo``, using the same ``lo``/``hi``. The spec's preprocessing
op ``scale_range`` can express the first step, but no postprocessing op applies the inverse of
another tensor's percentile scaling (``scale_linear`` needs fixed numbers, ``scale_mean_variance``
matches mean and variance, which is a different map). So both steps live in a small wrapper module
around the network: the package takes the raw image and returns the deblurred image in the same
units, exactly as :func:`napari_mpt_deblur.deblur` does for a whole plane. The only spec op used
is ``ensure_dtype`` (float32) on the input.

Loading needs no ``bioimageio`` package: :func:`load_bioimageio` reads the description with
PyYAML and the weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .engine.normalize import IntensityNormalization

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import ModelDescr

logger = logging.getLogger(__name__)

__all__ = [
    "DeblurNetwork",
    "ExportReport",
    "build_model_description",
    "export_bioimageio",
    "is_bioimageio_package",
    "load_bioimageio",
]

#: The key under the description's ``config`` that holds our checkpoint header.
CONFIG_KEY = "napari_mpt_deblur"
ARCHITECTURE_CALLABLE = "DeblurNetwork"
ARCHITECTURE_MODULE = __name__
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_MAX_SAMPLES = 2_000_000  # the engine's percentile subsampling threshold (percentile_range)
_MAX_WEIGHTS_BYTES = 2 * 1024**3

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


# --------------------------------------------------------------------------------------------
# The packaged network
# --------------------------------------------------------------------------------------------
class DeblurNetwork(nn.Module):
    """One of our networks with the engine's intensity mapping built in.

    ``forward`` maps a raw ``(N, C, H, W)`` image (``H``, ``W`` multiples of
    ``size_multiple``) to the deblurred image in the input's units: per sample and channel, the
    percentile range of the input maps it to model units and back, as in
    :func:`napari_mpt_deblur.deblur` on a whole plane. bioimage.io tools build it from the
    description's ``architecture.kwargs``, so the arguments are plain data.

    Parameters
    ----------
    arch : {"mpt", "htcsf"}
        Architecture family (the checkpoint header's ``arch``).
    config : dict
        The architecture config (``MPTConfig.to_dict()`` or ``HTCSFConfig.to_dict()``).
    normalization : dict, optional
        :class:`~napari_mpt_deblur.engine.normalize.IntensityNormalization` as a dict.
    """

    def __init__(
        self, arch: str, config: dict[str, Any], normalization: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        from .models.checkpoint import build_model, config_from_header

        self.net = build_model(config_from_header({"arch": arch, "config": dict(config)}))
        norm = IntensityNormalization.from_dict(normalization)
        if norm.method not in ("percentile", "minmax"):
            raise ValueError(f"unknown normalisation method {norm.method!r}")
        self.method = norm.method
        self.low_percentile = float(norm.low_percentile)
        self.high_percentile = float(norm.high_percentile)

    @property
    def size_multiple(self) -> int:
        return int(self.net.size_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.intensity_range(x)
        scale = hi - lo
        normed = ((x.double() - lo) * (1.0 / scale)).float()
        y = self.net(normed)
        return (y.double() * scale + lo).float()

    def intensity_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` per sample and channel, shape ``(N, C, 1, 1)``, float64.

        Mirrors :func:`~napari_mpt_deblur.engine.normalize.percentile_range` (numpy's linear
        percentile, stride subsampling of large planes, the same fallbacks for flat images)
        with tensor operations only, so a traced copy works at any image size.
        """
        flat = x.flatten(2).double()
        n_pixels = flat.shape[-1]
        if not torch.jit.is_tracing() and n_pixels > _MAX_SAMPLES:
            flat = flat[..., :: math.ceil(n_pixels / _MAX_SAMPLES)]
        smallest, largest = flat.amin(-1), flat.amax(-1)
        if self.method == "minmax":
            lo, hi = smallest, largest
        else:
            ordered = flat.sort(-1).values
            count = ordered.new_ones(()).expand_as(ordered).sum(-1, keepdim=True)
            lo = _linear_percentile(ordered, count, self.low_percentile)
            hi = _linear_percentile(ordered, count, self.high_percentile)
        flat_range = ~(hi > lo)
        lo = torch.where(flat_range, smallest, lo)
        hi = torch.where(flat_range, largest, hi)
        hi = torch.where(~(hi > lo), lo + (lo.abs() * 1e-6).clamp(min=1.0), hi)
        return lo[..., None, None], hi[..., None, None]


def _linear_percentile(ordered: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default (``linear``) percentile of sorted rows, including its lerp rounding."""
    position = (count - 1) * (q / 100.0)
    below = position.floor()
    frac = position - below
    below_i = below.long()
    above_i = torch.minimum(below_i + 1, (count - 1).long())
    a, b = ordered.gather(-1, below_i), ordered.gather(-1, above_i)
    diff = b - a
    value = torch.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)
    return value[..., 0]


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
@dataclass
class ExportReport:
    """What :func:`export_bioimageio` wrote (paths, weight formats, why any were skipped)."""

    path: Path
    model_name: str
    weight_formats: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    test_shape: tuple[int, ...] = ()
    max_abs_error: float = 0.0
    batch_size: int | None = None


def _load(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from .models.pretrained import canonical_name
    from .models.resolve import load_model

    return load_model(canonical_name(model) if isinstance(model, str) else model, device="cpu")


def _header_of(net: nn.Module) -> dict[str, Any]:
    """The checkpoint header a model would be saved with (JSON types only)."""
    from .models.checkpoint import _json_default
    from .models.info import model_info

    info = model_info(net).to_dict()
    header = {
        k: v for k, v in info.items() if k not in ("source", "authors_checkpoint", "config")
    }
    header.update(
        arch=info.get("arch") or type(net).__name__.lower(),
        config=net.config.to_dict(),
        routing=getattr(net.config, "routing", None),
        in_channels=net.config.in_channels,
        out_channels=net.config.out_channels,
        normalization=info.get("normalization") or IntensityNormalization().to_dict(),
        package_version=info.get("package_version", __version__),
    )
    return json.loads(json.dumps(header, default=_json_default))


def default_test_image(side: int, channels: int = 1) -> np.ndarray:
    """A ``(1, C, side, side)`` float32 crop of the bundled defocused sample.

    The sample is real data (BBBC006 actin with simulated defocus), so the package's test is
    run on the kind of image the models are meant for. Sides beyond the sample are mirrored.
    """
    from ._sample_data import load_sample

    image = np.asarray(load_sample().blurred, dtype=np.float32)
    h, w = image.shape
    if side > min(h, w):
        image = np.pad(image, [(0, max(0, side - h)), (0, max(0, side - w))], mode="symmetric")
        h, w = image.shape
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = image[y0 : y0 + side, x0 : x0 + side]
    return np.ascontiguousarray(np.broadcast_to(crop, (1, channels, side, side)))


def _engine_output(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """The test output as our engine computes it: whole plane, CPU, fp32, no ensembling."""
    from .engine.predict import deblur

    return deblur(image[0], net, axes="CYX", device="cpu", tile=0, amp=False)[None]


def _pixel_size(header: dict[str, Any], override: float | None) -> float | None:
    if override is not None:
        return float(override)
    value = (header.get("simulation") or {}).get("pixel_size_um")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _bundled_card(header: dict[str, Any], sha256: str | None) -> str | None:
    """The shipped model card when the weights are exactly a bundled model's (same SHA-256)."""
    from .models.pretrained import list_pretrained

    match = [e for e in list_pretrained() if sha256 is not None and e.sha256 == sha256]
    if not match:
        return None
    card = match[0].path.with_suffix(".md")
    return card.read_text(encoding="utf-8") if card.is_file() else None


def _trace(
    wrapper: DeblurNetwork, image: np.ndarray, expected: np.ndarray
) -> tuple[Any, str, bool]:
    """A traced copy of ``wrapper`` checked against the eager module: ``(traced, reason,
    batches)``; ``traced`` is ``None`` (and ``reason`` says why) when tracing does not
    reproduce the eager output.

    Tracing records one execution, so code that branches on the input's shape or caches
    shape-bound tensors gives a graph that is only right for the traced shape. The trace is
    therefore compared with the eager module on the test image, on a larger valid size and on a
    batch of two; ``batches`` is ``False`` when only the batch of two fails (MPT's window
    attention bakes the batch size into the trace), and the package then fixes the batch to 1.
    """
    import warnings

    x = torch.from_numpy(image)
    m = wrapper.size_multiple
    larger = torch.from_numpy(
        np.pad(image, [(0, 0), (0, 0), (0, m), (0, 2 * m)], mode="symmetric")
    )
    pair = torch.cat([x, x.flip(-1)])

    def matches(traced: Any, inp: torch.Tensor, ref: torch.Tensor) -> bool:
        try:
            out = traced(inp)
        except RuntimeError:
            return False
        tol = 1e-5 * max(1.0, float(ref.abs().max()))
        return out.shape == ref.shape and float((out - ref).abs().max()) <= tol

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks are expected
            traced = torch.jit.trace(wrapper, x, check_trace=False)
            for inp, ref in ((x, torch.from_numpy(expected)), (larger, wrapper(larger))):
                if not matches(traced, inp, ref):
                    return None, (
                        f"the traced model differs from the eager one at input shape "
                        f"{tuple(inp.shape)} (shape-dependent code is baked into the trace)"
                    ), False
            batches = matches(traced, pair, wrapper(pair))
    except Exception as exc:  # tracing fails in many ways; any failure only skips the format
        return None, f"tracing failed: {type(exc).__name__}: {exc}", False
    return traced, "", batches


def build_model_description(
    model: Any,
    folder: str | os.PathLike,
    *,
    authors: list[str] | tuple[str, ...] | None = None,
    license: str | None = None,
    pixel_size_um: float | None = None,
    test_image: np.ndarray | None = None,
    torchscript: bool = True,
) -> tuple[ModelDescr, ExportReport]:
    """Write the package files into ``folder`` and describe them as a ``ModelDescr`` (v0.5).

    ``model`` is a loaded model, a bundled model name or a checkpoint path. ``test_image`` is a
    ``(1, C, H, W)`` array with ``H`` and ``W`` multiples of the model's size multiple (default:
    a crop of the bundled sample). Raises ``ValueError`` if the wrapped network does not
    reproduce the engine's output on the test image (the package would then be wrong).
    """
    from bioimageio.spec.model import v0_5 as spec

    net = _load(model).cpu().eval()
    header = _header_of(net)
    if net.config.in_channels != net.config.out_channels:
        raise ValueError("only models with as many output as input channels can be exported")
    name = str(header.get("name") or getattr(net, "preset_name", None) or header["arch"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    channels, multiple = int(net.config.in_channels), int(net.size_multiple)

    if test_image is None:
        test_image = default_test_image(multiple * math.ceil(128 / multiple), channels)
    test_image = np.asarray(test_image, dtype=np.float32)
    if test_image.ndim != 4 or test_image.shape[:2] != (1, channels) or any(
        s % multiple for s in test_image.shape[2:]
    ):
        raise ValueError(
            f"the test image must have shape (1, {channels}, H, W) with H and W multiples of "
            f"{multiple}; got {test_image.shape}"
        )
    expected = _engine_output(net, test_image).astype(np.float32)

    wrapper = DeblurNetwork(header["arch"], header["config"], header["normalization"])
    wrapper.net.load_state_dict(net.state_dict())
    wrapper.eval()
    with torch.no_grad():
        packaged = wrapper(torch.from_numpy(test_image)).numpy()
    error = float(np.abs(packaged - expected).max())
    if error > 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise ValueError(
            f"the packaged network differs from the engine by {error:.3g} on the test image"
        )
    report = ExportReport(folder, name, test_shape=test_image.shape, max_abs_error=error)

    np.save(folder / "test_input.npy", test_image)
    np.save(folder / "test_output.npy", expected)
    _save_sample(folder / "sample_input.tif", test_image)
    _save_sample(folder / "sample_output.tif", expected)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in wrapper.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    torch_version = spec.Version(torch.__version__.split("+")[0])
    arch_kwargs = {
        "arch": header["arch"],
        "config": header["config"],
        "normalization": header["normalization"],
    }
    weights: dict[str, Any] = {
        "pytorch_state_dict": spec.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            sha256=_sha256(folder / "weights.pt"),
            architecture=spec.ArchitectureFromLibraryDescr(
                callable=ARCHITECTURE_CALLABLE,
                import_from=ARCHITECTURE_MODULE,
                kwargs=arch_kwargs,
            ),
            pytorch_version=torch_version,
            comment=f"needs napari-mpt-deblur>={__version__} (pip install napari-mpt-deblur)",
        )
    }
    report.weight_formats.append("pytorch_state_dict")
    batch_size = None  # any batch
    if torchscript:
        traced, reason, batches = _trace(wrapper, test_image, expected)
        if traced is None:
            logger.warning("no torchscript weights for %s: %s", name, reason)
            report.skipped["torchscript"] = reason
        else:
            torch.jit.save(traced, str(folder / "weights_torchscript.pt"))
            weights["torchscript"] = spec.TorchscriptWeightsDescr(
                source=folder / "weights_torchscript.pt",
                sha256=_sha256(folder / "weights_torchscript.pt"),
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
            )
            report.weight_formats.append("torchscript")
            if not batches:
                batch_size = 1
                logger.info("%s: the traced model needs one image per batch; the package "
                            "declares a batch size of 1", name)
    else:
        report.skipped["torchscript"] = "not requested"

    report.batch_size = batch_size
    pixel = _pixel_size(header, pixel_size_um)
    space = {"unit": "micrometer", "scale": pixel} if pixel else {}
    channel_names = (
        [spec.Identifier("gray")] if channels == 1 else [spec.Identifier(c) for c in "rgb"]
        if channels == 3 else [spec.Identifier(f"c{i}") for i in range(channels)]
    )
    input_id, output_id = spec.TensorId("raw"), spec.TensorId("deblurred")
    inputs = [
        spec.InputTensorDescr(
            id=input_id,
            description="defocused image in camera units (any range); percentiles are taken "
            "per sample and channel inside the network",
            axes=[
                spec.BatchAxis(size=batch_size),
                spec.ChannelAxis(channel_names=channel_names),
                spec.SpaceInputAxis(
                    id=spec.AxisId("y"), size=spec.ParameterizedSize(min=multiple, step=multiple),
                    **space,
                ),
                spec.SpaceInputAxis(
                    id=spec.AxisId("x"), size=spec.ParameterizedSize(min=multiple, step=multiple),
                    **space,
                ),
            ],
            test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
            preprocessing=[
                spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))
            ],
        )
    ]
    outputs = [
        spec.OutputTensorDescr(
            id=output_id,
            description="deblurred image in the input's units",
            axes=[
                spec.BatchAxis(size=batch_size),
                spec.ChannelAxis(channel_names=channel_names),
                spec.SpaceOutputAxis(
                    id=spec.AxisId("y"),
                    size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId("y")),
                    **space,
                ),
                spec.SpaceOutputAxis(
                    id=spec.AxisId("x"),
                    size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId("x")),
                    **space,
                ),
            ],
            test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
        )
    ]

    sha = header.get("sha256")
    readme = folder / "README.md"
    readme.write_text(
        _model_card(name, header, report, pixel, _bundled_card(header, sha)), encoding="utf-8"
    )
    arch = header["arch"]
    tags = [
        "deblurring", "defocus", "image-restoration", "microscopy",
        "fluorescence-light-microscopy", "2d", "pytorch", "napari-mpt-deblur",
        "transformer" if arch == "mpt" else "cnn", arch,
    ]
    description = str(header.get("description") or f"{arch} defocus deblurring network").strip()
    descr = spec.ModelDescr(
        name=f"napari-mpt-deblur {name}",
        description=description[:1024],
        authors=[spec.Author(name=a) for a in (authors or DEFAULT_AUTHORS)],
        cite=[spec.CiteEntry(**c) for c in _citations(arch)],
        license=license or _license(header),
        tags=tags,
        documentation=spec.FileDescr(source=readme),
        inputs=inputs,
        outputs=outputs,
        weights=spec.WeightsDescr(**weights),
        version=__version__,
        config=spec.Config(
            bioimageio=spec.BioimageioConfig(
                reproducibility_tolerance=[
                    spec.ReproducibilityTolerance(relative_tolerance=1e-4, absolute_tolerance=1e-4)
                ],
            ),
            **{CONFIG_KEY: header},
        ),
    )
    return descr, report


def _save_sample(path: Path, array: np.ndarray) -> None:
    """A TIFF of the test tensor (the spec's ``sample_tensor``: a file people can open)."""
    import tifffile

    tifffile.imwrite(path, np.asarray(array, dtype=np.float32))


def _citations(arch: str) -> list[dict[str, str]]:
    """The paper of the exported architecture first, then the other one (the project's)."""
    return list(CITATIONS) if arch == "mpt" else [CITATIONS[1], CITATIONS[0]]


def _license(header: dict[str, Any]) -> str:
    text = str(header.get("license") or DEFAULT_LICENSE)
    return text.split()[0]  # "Apache-2.0 (weights trained by ...)" -> the SPDX id


def _sha256(path: Path) -> str:
    from .models.checkpoint import file_sha256

    return file_sha256(path)


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
    from .models.checkpoint import config_from_header

    return str(config_from_header(header).size_multiple)


def export_bioimageio(
    model: Any,
    output: str | os.PathLike,
    *,
    authors: list[str] | tuple[str, ...] | None = None,
    license: str | None = None,
    pixel_size_um: float | None = None,
    test_image: np.ndarray | None = None,
    torchscript: bool = True,
) -> ExportReport:
    """Write ``model`` as a bioimage.io package (zip), validated by ``bioimageio.spec``.

    Parameters
    ----------
    model : torch.nn.Module, str or path
        A loaded model, a bundled model name or a checkpoint file (what ``load_model`` takes).
    output : path
        The ``.zip`` to write (a ``.zip`` suffix is added when missing).
    authors, license, pixel_size_um, test_image, torchscript
        See :func:`build_model_description`; defaults come from the checkpoint header.

    Returns
    -------
    ExportReport
        The package path, the weight formats written and why any were skipped.
    """
    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "exporting needs bioimageio.spec: pip install 'napari-mpt-deblur[bioimageio]'"
        ) from exc
    output = Path(output)
    if output.suffix != ".zip":
        output = output.with_name(output.name + ".zip")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpt-bioimageio-") as tmp:
        descr, report = build_model_description(
            model, tmp, authors=authors, license=license, pixel_size_um=pixel_size_um,
            test_image=test_image, torchscript=torchscript,
        )
        partial = output.with_name(f".{output.name}.partial.zip")
        try:
            save_bioimageio_package(descr, output_path=partial)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    report.path = output
    return report


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------
def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or folder with an ``rdf.yaml``
    (or ``bioimageio.yaml``), or that file itself."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
        return path.is_file()
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n in zf.namelist() for n in RDF_NAMES)
    return False


class _PackageReader:
    """Files of a package, from a zip or a folder, with size limits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.suffix == ".zip" else None
        self.root = path.parent if path.is_file() and self.zip is None else path
        names = self.zip.namelist() if self.zip else [p.name for p in self.root.iterdir()]
        if path.is_file() and self.zip is None:
            self.rdf = path.name
        else:
            found = [n for n in RDF_NAMES if n in names]
            if not found:
                raise ValueError(f"{path} has no rdf.yaml: not a bioimage.io package")
            self.rdf = found[0]

    def read(self, name: str) -> bytes:
        if "/" in name.strip("./") or ".." in name or "://" in name:
            raise ValueError(f"refusing to read {name!r}: only files inside the package are used")
        if self.zip is not None:
            info = self.zip.getinfo(name)
            if info.file_size > _MAX_WEIGHTS_BYTES:
                raise ValueError(f"{name} in {self.path} is too large ({info.file_size} bytes)")
            return self.zip.read(name)
        file = self.root / name
        if file.stat().st_size > _MAX_WEIGHTS_BYTES:
            raise ValueError(f"{file} is too large")
        return file.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def load_bioimageio(
    path: str | os.PathLike, device: str | torch.device | None = "auto"
) -> nn.Module:
    """Our model back from a bioimage.io package exported by :func:`export_bioimageio`.

    Returns the bare network (not the wrapper), like ``load_model``: ``model.info`` holds the
    checkpoint header stored in the package, so ``deblur`` normalises as before. Only packages
    whose ``pytorch_state_dict`` architecture is ours can be loaded; weights are read with
    ``torch.load(weights_only=True)`` and checked against the SHA-256 in the description.
    """
    import yaml

    from ._device import get_device
    from .models.checkpoint import CheckpointError, model_from_state_dict
    from .models.info import ModelInfo, attach_info

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bioimage.io package not found: {path}")
    reader = _PackageReader(path)
    try:
        rdf = yaml.safe_load(reader.read(reader.rdf))
        entry = ((rdf or {}).get("weights") or {}).get("pytorch_state_dict") or {}
        arch = entry.get("architecture") or {}
        if (arch.get("import_from"), arch.get("callable")) != (
            ARCHITECTURE_MODULE, ARCHITECTURE_CALLABLE
        ):
            raise CheckpointError(
                f"{path} does not hold a napari-mpt-deblur network (its pytorch_state_dict "
                f"architecture is {arch.get('import_from')}.{arch.get('callable')})"
            )
        header = dict(((rdf.get("config") or {}).get(CONFIG_KEY)) or {})
        kwargs = arch.get("kwargs") or {}
        header.update(arch=kwargs.get("arch"), config=kwargs.get("config"),
                      normalization=kwargs.get("normalization"))
        data = reader.read(str(entry.get("source", "")))
    finally:
        reader.close()
    digest = hashlib.sha256(data).hexdigest()
    if entry.get("sha256") and entry["sha256"] != digest:
        raise CheckpointError(f"{path}: the weights do not match their SHA-256 (corrupt package)")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    prefix = "net."
    if not all(k.startswith(prefix) for k in state):
        raise CheckpointError(f"{path}: unexpected weight names (expected {prefix!r} prefixes)")
    net = model_from_state_dict({k[len(prefix):]: v for k, v in state.items()}, header)
    attach_info(net, ModelInfo.from_header(
        {k: v for k, v in header.items() if k != "config"},
        config=net.config.to_dict(),
        name=header.get("name") or rdf.get("name"),
        source=str(path),
        sha256=digest,
        routing=getattr(net.config, "routing", None),
        authors_checkpoint=False,
        bioimageio={"name": rdf.get("name"), "format_version": rdf.get("format_version")},
    ))
    return net.eval().to(get_device(device))

"""Export one of our models as a bioimage.io package (zip) that ``bioimageio.spec`` validates.

The package holds the wrapped network (:class:`~.network.DeblurNetwork`) as a state dict and, when
tracing reproduces it, as torchscript; a test input with the engine's own output on it; sample
TIFFs; and the model card (:mod:`.card`). Writing needs ``bioimageio.spec``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..engine.normalize import IntensityNormalization
from ..models.info import DeblurModel, preset_name
from .card import DEFAULT_AUTHORS, _bundled_card, _citations, _license, _model_card
from .network import ARCHITECTURE_CALLABLE, ARCHITECTURE_MODULE, CONFIG_KEY, DeblurNetwork

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import ModelDescr

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "build_model_description", "default_test_image", "export_bioimageio"]


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


def _load(model: DeblurModel | str | os.PathLike) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..models.pretrained import canonical_name
    from ..models.resolve import load_model

    return load_model(canonical_name(model) if isinstance(model, str) else model, device="cpu")


def _header_of(net: nn.Module) -> dict[str, Any]:
    """The checkpoint header a model would be saved with (JSON types only)."""
    from ..models.checkpoint import _json_default
    from ..models.info import model_info

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
    from .._sample_data import load_sample

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
    from ..engine.predict import deblur

    return deblur(image[0], net, axes="CYX", device="cpu", tile=0, amp=False)[None]


def _pixel_size(header: dict[str, Any], override: float | None) -> float | None:
    if override is not None:
        return float(override)
    value = (header.get("simulation") or {}).get("pixel_size_um")
    return float(value) if isinstance(value, int | float) and value > 0 else None


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
    model: DeblurModel | str | os.PathLike,
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
    name = str(header.get("name") or preset_name(net) or header["arch"])
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


def _sha256(path: Path) -> str:
    from ..models.checkpoint import file_sha256

    return file_sha256(path)


def export_bioimageio(
    model: DeblurModel | str | os.PathLike,
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

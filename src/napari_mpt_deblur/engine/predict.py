"""The inference engine: any size, dtype and layout in; same shape and dtype out.

``deblur`` normalises each 2-D plane by robust percentiles, pads it by reflection to the model's
size multiple, runs the model on the whole plane when it fits in memory and on overlapping,
smoothly blended tiles otherwise, and maps the result back to the input's range and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._axes import infer_axes, validate_axes
from .._validation import check_image_array
from ..models.info import (
    DeblurModel,
    in_channels,
    inference_bytes_per_pixel,
    model_info,
    optics_conditioned,
    size_multiple,
)
from . import ENSEMBLE_SIZES  # the test-time augmentation sizes (defined torch-free there)
from ._allocator import retain_freed_memory
from .normalize import IntensityNormalization, denormalize, normalize, percentile_range
from .tiling import Tile, blend_window, pad_to_multiple, tile_grid

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from torch import nn

    from ..simulate.optics import OpticsHints

logger = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE_SIZES",
    "Cancelled",
    "DeblurReport",
    "deblur",
    "default_overlap",
    "estimate_tile",
    "parse_memory",
]

MIN_SIDE = 8
# The views as (quarter turns, mirror); the first N are used, so 2 and 4 already mix mirrored
# and turned views.
_VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False),
          (3, True))
_BYTES_PER_PIXEL_PER_CHANNEL = 300  # ~2x the measured MPT peak (150 B/px per level-1 channel)


class Cancelled(RuntimeError):
    """Raised by :func:`deblur` when its ``cancel`` event is set; no output is produced."""


@dataclass
class DeblurReport:
    """What a :func:`deblur` call did (for provenance in napari layer metadata and logs).

    ``optics`` is the microscope the caller described (``OpticsHints`` fields, ``None`` when
    none was given); ``optics_used`` says whether the model was told about it: only an
    optics-conditioned model is, and only when pixel size and NA are known.
    """

    model: str = ""
    device: str = ""
    tile: int | None = None
    overlap: int = 0
    n_tiles: int = 0
    planes: int = 0
    seconds: float = 0.0
    clipped_low: int = 0
    clipped_high: int = 0
    retries: list[str] = field(default_factory=list)
    ensemble: int = 1
    precision: str = "float32"
    optics: dict[str, float | None] | None = None
    optics_used: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _resolve_model(model: DeblurModel | str | None,
                   device: torch.device) -> nn.Module:
    """A name, path or network -> a network, through the package's one resolver and cache."""
    from ..models.resolve import resolve_model

    return resolve_model(model, device)


def _available_bytes(device: torch.device) -> int:
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.5)
    except ImportError:  # pragma: no cover - psutil ships with napari
        return 4 * 1024**3


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"([0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)([KMGT]?)(?:I?B)?")


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``8e9``, ``"8G"``, ``"8 GB"``, ``"512MiB"`` (binary units); ``None`` stays."""
    if value is None or isinstance(value, int | float):
        if value is not None and not value > 0:
            raise ValueError(f"a memory limit must be positive; got {value!r}")
        return None if value is None else int(value)
    match = _SIZE.fullmatch(str(value).strip().upper().replace(" ", ""))
    amount = float(match[1]) if match else 0.0
    if not amount > 0:
        raise ValueError(
            f"cannot read the memory limit {value!r}: use a number of bytes or a size such as "
            "'8G', '8GB' or '512MiB'"
        )
    return int(amount * _UNITS[match[2]])


def _plane_buffer_bytes(height: int, width: int, channels: int) -> int:
    """Host memory the engine holds for one plane besides the model: normalised and padded
    copies, the blend accumulator and its weights, the de-normalised result and the output."""
    return (6 * channels + 1) * 4 * height * width


def estimate_tile(
    model: DeblurModel,
    height: int,
    width: int,
    device: torch.device,
    max_memory: int | None = None,
) -> int | None:
    """Largest square tile (multiple of the model's size multiple) that fits in memory.

    Returns ``None`` when the whole (padded) plane fits. ``max_memory`` (bytes) caps what the
    model may use per tile on top of what is free; on the CPU it also pays for the plane's own
    buffers, so that the whole job stays within it.
    """
    per_pixel = inference_bytes_per_pixel(model, _BYTES_PER_PIXEL_PER_CHANNEL)
    budget = _available_bytes(device)
    multiple = size_multiple(model)
    if max_memory is not None:
        limit = int(max_memory)
        if device.type == "cpu":
            buffers = _plane_buffer_bytes(height, width, in_channels(model))
            smallest = multiple * multiple * per_pixel
            limit -= buffers
            if limit < smallest:
                gib = 2**30
                raise MemoryError(
                    f"max_memory {max_memory / gib:.2f} GiB is too small for a {height}x{width} "
                    f"plane: its buffers alone take {buffers / gib:.2f} GiB and the smallest "
                    f"tile needs {smallest / gib:.2f} GiB more. Raise the limit, or pass a "
                    "dask/zarr array to process the image chunk by chunk."
                )
        budget = min(budget, limit)
    if height * width * per_pixel <= budget:
        return None
    side = int(math.sqrt(budget / per_pixel)) // multiple * multiple
    return max(side, multiple)


def default_overlap(tile: int) -> int:
    """Overlap between tiles: a quarter of the tile, at least 32 pixels."""
    return max(32, tile // 4)


def deblur(
    image: Any,
    model: DeblurModel | str | None = None,
    *,
    axes: str | None = None,
    device: str | torch.device | None = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    amp: bool | str | None = "auto",
    intensity_range: tuple[float, float] | None = None,
    report: DeblurReport | None = None,
    max_memory: int | str | None = None,
    ensemble: int = 1,
    optics: OpticsHints | Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Remove defocus blur from an image, a stack or a multi-channel image.

    Parameters
    ----------
    image : array_like, shape ``(..., M, N)`` with optional channel axis
        uint8/uint16/other integer or floating-point data; dask and zarr arrays give a lazy
        dask result (see :func:`napari_mpt_deblur.engine.lazy.deblur_dask`).
    model : torch.nn.Module or str, optional
        A loaded model, a bundled model name or a checkpoint path; default: the shipped model.
    axes : str, optional
        Layout such as ``"YX"``, ``"ZYX"``, ``"TZYX"``, ``"YXC"``, ``"CYX"``. Planes along T/Z
        (and any other non-YXC axis) are processed one by one; channels go through a
        multi-channel model together, or one by one through a 1-channel model. Inferred from
        the shape when omitted.
    device : str
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    tile : int, optional
        Tile side in pixels (rounded up to the model's multiple, 128 for MPT). ``None`` runs
        whole planes when they fit in memory and picks a tile otherwise. ``0`` forces whole
        planes.
    overlap : int, optional
        Tile overlap in pixels (default: :func:`default_overlap`).
    progress : callable, optional
        ``progress(done, total)`` after each tile (or plane).
    cancel : threading.Event or callable, optional
        Checked between tiles; when set, :class:`Cancelled` is raised and nothing is returned.
    amp : {"auto", True, "bf16", False}
        Mixed precision. ``"auto"`` (or ``True``/``"bf16"``) uses bf16 autocast on CUDA (fp16
        where bf16 is unsupported) and on CPUs that compute bf16 in hardware (AVX-512 BF16,
        AMX): about 1.3x faster on such a CPU, PSNR within 0.05 dB of float32
        (docs/performance.md). Other CPUs and MPS run float32. ``False``: float32 everywhere.
    intensity_range : (float, float), optional
        Fixed normalisation ``(lo, hi)`` instead of per-plane percentiles (used by the lazy
        dask path so every chunk is normalised alike).
    report : DeblurReport, optional
        Filled with what was done (tiles, device, time, clipping).
    max_memory : int or str, optional
        Memory the job may use (bytes, or ``"8G"``, ``"512MiB"``): tiles are chosen so that the
        model's working set (and, on the CPU, the plane's buffers) fit. Default: half of the free
        RAM, or 80 % of the free GPU memory. Ignored when ``tile`` is given.
    ensemble : {1, 2, 4, 8}
        Test-time augmentation: each tile is deblurred in this many orientations (identity,
        mirror, and the rotations by 90°, 180°, 270° with their mirrors) and the results,
        turned back, are averaged. ``8`` costs 8x the time for about +0.3 dB PSNR
        (docs/engine.md); memory use does not grow. Default ``1``: off.
    optics : OpticsHints or mapping, optional
        The microscope: ``pixel_size_um``, ``numerical_aperture``, ``wavelength_nm``,
        ``immersion_index`` (each may be missing or ``None``: unknown). An optics-conditioned
        model (``model.info.optics_conditioned``) gets their
        :func:`~napari_mpt_deblur.models.conditioning.optics_vector` with every tile and plane;
        other models ignore them. ``None``: unknown (a conditioned model runs blind).
        ``report.optics_used`` says whether they were used.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``image``. Integer outputs are rounded and clipped to the dtype's
        range; the number of clipped pixels is logged as a warning and stored in ``report``.

    Raises
    ------
    TypeError
        Unsupported dtype (bool, complex, object).
    ValueError
        NaN/Inf values, empty or too small images, bad axes, or channels that do not fit the
        model.
    Cancelled
        ``cancel`` was set.
    """
    from ..models.conditioning import BLIND_OPTICS, as_optics_hints, hints_vector
    from .lazy import is_lazy_array

    memory_limit = parse_memory(max_memory)
    ensemble = check_ensemble(ensemble)
    hints = as_optics_hints(optics)
    if is_lazy_array(image):
        from .lazy import deblur_dask

        return deblur_dask(image, model, axes=axes, device=device, tile=tile, overlap=overlap,
                           max_memory=memory_limit, ensemble=ensemble, optics=hints)

    from .._device import get_device

    started = time.perf_counter()
    array = check_image_array(image)
    explicit_axes = axes is not None
    import torch

    # a torch.device is already resolved (the widgets resolve the user's choice once per run)
    torch_device = device if isinstance(device, torch.device) else get_device(device)
    net = _resolve_model(model, torch_device)
    net.eval()
    _move_model(net, torch_device)
    info = model_info(net)
    channels = in_channels(net)
    axes = (
        validate_axes(axes, array.ndim) if explicit_axes else infer_axes(array.shape, channels)
    )
    _check_channels(array.shape, axes, channels, explicit_axes)
    h, w = array.shape[axes.index("Y")], array.shape[axes.index("X")]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(
            f"image planes are {h}x{w} pixels; at least {MIN_SIDE}x{MIN_SIDE} are needed to deblur"
        )

    planes, restore = _to_planes(array, axes, channels)  # (P, Cm, H, W)
    norm = IntensityNormalization.from_dict(info.normalization)
    multiple = size_multiple(net)
    if tile is None:
        ph, pw = (math.ceil(s / multiple) * multiple for s in (h, w))
        tile = estimate_tile(net, ph, pw, torch_device, memory_limit)
    elif tile:
        tile = max(multiple, math.ceil(int(tile) / multiple) * multiple)
    tile = tile or None
    ov = default_overlap(tile) if (tile and overlap is None) else int(overlap or 0)
    rep = report if report is not None else DeblurReport()
    rep.model = info.name or type(net).__name__
    rep.device = str(torch_device)
    rep.planes = planes.shape[0]
    rep.ensemble = ensemble
    amp_dtype = _amp_dtype(torch_device, amp)
    rep.precision = (
        "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.") + " autocast"
    )
    rep.optics = None if hints is None else dataclasses.asdict(hints)
    vector = None
    if optics_conditioned(net):
        vector = hints_vector(hints)  # the blind vector when the optics are unknown
        rep.optics_used = vector != BLIND_OPTICS
    elif hints is not None:
        logger.info("the model %s is not optics-conditioned; the optics given are ignored",
                    rep.model)

    work = _work_dtype(array.dtype)
    out = np.empty(planes.shape, dtype=work)
    done, total = 0, None
    # CPU activations are large: keep freed blocks for reuse instead of re-faulting them
    # from the kernel (engine/_allocator.py).
    keep = retain_freed_memory() if torch_device.type == "cpu" else contextlib.nullcontext()
    with keep:
        for index, plane in enumerate(planes):
            while True:
                try:
                    result, n_tiles = _run_plane(
                        net,
                        plane,
                        norm,
                        intensity_range,
                        tile,
                        ov,
                        torch_device,
                        amp_dtype,
                        work,
                        ensemble,
                        vector,
                        progress_state=(done, total, planes.shape[0]),
                        progress=progress,
                        cancel=cancel,
                    )
                    break
                except Cancelled:
                    raise
                except (MemoryError, RuntimeError) as exc:
                    if not _is_oom(exc):
                        raise
                    tile, ov = _smaller_tile(tile, h, w, multiple, exc)
                    rep.retries.append(f"out of memory; retrying with {tile}px tiles")
                    logger.warning("out of memory on %s; retrying with %d px tiles",
                                   torch_device, tile)
            if total is None:
                total = n_tiles * planes.shape[0]
            done += n_tiles
            out[index] = result
    rep.tile, rep.overlap, rep.n_tiles = tile, ov if tile else 0, done
    result = _cast_like(restore(out), array, rep)
    rep.seconds = time.perf_counter() - started
    return result


def _move_model(net: nn.Module, device: torch.device) -> None:
    param = next(net.parameters(), None)
    if param is not None and param.device != device:
        net.to(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _smaller_tile(tile: int | None, h: int, w: int, multiple: int, exc: BaseException) -> tuple:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    current = tile or math.ceil(max(h, w) / multiple) * multiple
    smaller = (current // 2) // multiple * multiple
    if smaller < multiple:
        raise MemoryError(
            f"out of memory even with the smallest tile ({multiple} px): {exc}"
        ) from exc
    return smaller, default_overlap(smaller)


def _check_channels(shape: tuple[int, ...], axes: str, in_channels: int, explicit: bool) -> None:
    if "C" not in axes:
        if in_channels > 1:
            raise ValueError(
                f"the model expects {in_channels}-channel (e.g. RGB) images but the image has no "
                f"channel axis (axes {axes!r}, shape {shape})"
            )
        return
    channels = shape[axes.index("C")]
    if in_channels > 1 and channels != in_channels:
        raise ValueError(
            f"the model expects {in_channels} channels but the image has {channels} "
            f"(axes {axes!r}, shape {shape})"
        )
    if in_channels == 1 and channels in (3, 4) and not explicit and axes.endswith("C"):
        raise ValueError(
            f"the image looks like RGB{'A' if channels == 4 else ''} (shape {shape}) but the model "
            "has 1 channel. Pass axes='YXC' to deblur each channel separately, or load a "
            "3-channel model."
        )


def _to_planes(array: np.ndarray, axes: str, in_channels: int):
    """Reorder to ``(planes, model channels, Y, X)`` and return the inverse mapping."""
    order = [i for i, a in enumerate(axes) if a not in "CYX"]
    if "C" in axes:
        order.append(axes.index("C"))
    order += [axes.index("Y"), axes.index("X")]
    moved = np.transpose(array, order)
    moved_shape = moved.shape
    group = in_channels if ("C" in axes and in_channels > 1) else 1
    planes = moved.reshape(-1, group, *moved_shape[-2:])
    inverse = np.argsort(order)

    def restore(out: np.ndarray) -> np.ndarray:
        return np.transpose(out.reshape(moved_shape), inverse)

    return planes, restore


def _work_dtype(dtype: np.dtype) -> type:
    """float64 where float32 cannot hold the input's values exactly enough."""
    if dtype == np.float64 or (dtype.kind in "ui" and dtype.itemsize >= 4):
        return np.float64
    return np.float32


def check_ensemble(ensemble: Any) -> int:
    """The number of test-time views, validated (a clear error before any work starts)."""
    if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or (
        int(ensemble) not in ENSEMBLE_SIZES
    ):
        raise ValueError(
            f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))} (views averaged per "
            f"tile), not {ensemble!r}"
        )
    return int(ensemble)


def _run_plane(
    net, plane, norm, fixed_range, tile, overlap, device, amp_dtype, work, ensemble=1,
    optics=None, *, progress_state, progress, cancel,
):
    """Deblur one ``(C, H, W)`` plane; returns ``(float32 result, n_tiles)``."""
    done, total, n_planes = progress_state
    if fixed_range is not None:
        ranges = [tuple(map(float, fixed_range))] * plane.shape[0]
    else:
        ranges = [percentile_range(channel, norm) for channel in plane]
    normed = np.stack([normalize(c, lo, hi) for c, (lo, hi) in zip(plane, ranges)])
    h, w = normed.shape[-2:]
    multiple = size_multiple(net)
    padded, (top, left) = pad_to_multiple(normed, multiple)
    ph, pw = padded.shape[-2:]
    tiles = (
        tile_grid(ph, pw, tile, overlap)
        if tile and (tile < ph or tile < pw)
        else [Tile(0, ph, 0, pw)]
    )
    if total is None:
        total = len(tiles) * n_planes
    acc = np.zeros(padded.shape, dtype=np.float32)
    weight = np.zeros((ph, pw), dtype=np.float32)
    for i, t in enumerate(tiles):
        if _is_cancelled(cancel):
            raise Cancelled("deblurring was cancelled; no output was produced")
        patch = padded[(slice(None), *t.slices)]
        result = _forward_views(net, patch, device, amp_dtype, ensemble, cancel, optics)
        win = (
            blend_window(t, ph, pw, overlap)
            if len(tiles) > 1
            else np.ones((t.y1 - t.y0, t.x1 - t.x0), np.float32)
        )
        acc[(slice(None), *t.slices)] += result * win
        weight[t.slices] += win
        if progress is not None:
            progress(done + i + 1, total)
    if _is_cancelled(cancel):
        raise Cancelled("deblurring was cancelled; no output was produced")
    out = acc[:, top : top + h, left : left + w] / weight[top : top + h, left : left + w]
    out = np.stack([denormalize(c, lo, hi, work) for c, (lo, hi) in zip(out, ranges)])
    return out, len(tiles)


def _forward_views(net: DeblurModel, patch: np.ndarray, device, amp_dtype, ensemble: int, cancel,
                   optics=None) -> np.ndarray:
    """The model's output for ``patch``, averaged over ``ensemble`` orientations (the optics,
    a property of the microscope, are the same for every view)."""
    if ensemble == 1:
        return _forward(net, patch, device, amp_dtype, optics)
    total = None
    for turns, mirror in _VIEWS[:ensemble]:
        if _is_cancelled(cancel):
            raise Cancelled("deblurring was cancelled; no output was produced")
        view = np.rot90(patch, turns, axes=(-2, -1))
        view = view[..., ::-1] if mirror else view
        out = _forward(net, view, device, amp_dtype, optics)
        out = out[..., ::-1] if mirror else out
        out = np.rot90(out, -turns, axes=(-2, -1))
        total = out.copy() if total is None else total + out
    return total / ensemble


def _forward(net: DeblurModel, patch: np.ndarray, device, amp_dtype, optics=None) -> np.ndarray:
    """One forward; ``amp_dtype`` is resolved once per call of :func:`deblur` (``_amp_dtype``),
    so every tile runs, and the report names, the same precision. ``optics`` (an optics
    vector) is passed only to an optics-conditioned model, so any other network is called as
    before."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(patch))[None].to(device, non_blocking=True)
    kwargs = {} if optics is None else {
        "optics": torch.tensor([optics], dtype=torch.float32, device=device)}
    with torch.inference_mode():
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                y = net(x, **kwargs)
        else:
            y = net(x, **kwargs)
    return y[0].float().cpu().numpy()


def _amp_dtype(device, amp):
    import torch

    if amp is False or amp is None:
        return None
    if device.type == "cpu":
        # bf16 autocast only where the CPU computes bf16 in hardware (AVX-512 BF16, AMX):
        # emulated bf16 is slower than float32 (docs/performance.md, "bf16 on the CPU").
        from .._device import cpu_has_native_bf16

        if amp in ("auto", True, "bf16") and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if device.type == "cuda":
        if amp in ("auto", True, "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "mps" and amp in (True, "fp16"):
        return torch.float16
    return None


def _cast_like(result: np.ndarray, like: np.ndarray, rep: DeblurReport) -> np.ndarray:
    """Cast to the input's dtype, saturating (and reporting) values outside its range."""
    if like.dtype.kind == "f":
        info = np.finfo(like.dtype)
        values = result
    else:
        info = np.iinfo(like.dtype)
        values = np.rint(result)
    lo, hi = float(info.min), float(info.max)
    low, high = int((values < lo).sum()), int((values > hi).sum())
    rep.clipped_low, rep.clipped_high = low, high
    if low or high:
        logger.warning(
            "%d pixels fell below %s and %d above %s (the %s range) and were clipped "
            "(%.3f%% of the image)",
            low,
            info.min,
            high,
            info.max,
            like.dtype,
            100.0 * (low + high) / result.size,
        )
    # float(info.max) of int64 rounds up to 2**63: saturate with masks, never through astype.
    at_top, at_bottom = values >= hi, values <= lo
    out = np.where(at_top | at_bottom, 0, values).astype(like.dtype)
    out[at_top] = info.max
    out[at_bottom] = info.min
    return out

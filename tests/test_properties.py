"""Property-based tests of the inference engine (hypothesis).

Most properties run a deterministic stand-in for the network, :class:`Sharpen`:
``y = x + a·(4x − sum of the four neighbours)`` with replicate padding. It honours the engine's
contract (``size_multiple``, ``in_channels``) and has properties a test can predict exactly:

* a constant image is a fixed point (the Laplacian of a constant is zero), and
* ``|y − x| ≤ 4·a·(max − min)`` in the input's own units, because the engine's affine
  normalisation, reflection padding, tile blending (a convex combination) and integer clipping
  never leave the hull of the input values.

So over random shapes, dtypes, value patterns, axes and tile sizes the engine must return the
same shape and dtype, finite values, constants unchanged and everything within that bound. A few
examples also go through the real (untrained) ``mpt-test`` network. Inputs with NaN/Inf must be
rejected before any work, with counts in the message. The bounds are those of float32
arithmetic, so every call passes ``amp=False`` (bf16 autocast, the default on CPUs with native
bf16, rounds the stand-in's whole output; its accuracy is tested on a real model in
tests/engine/test_predict.py).

The strategies stay inside moderate value ranges; the extremes (wide integers near their
limits, huge constants, floats beyond float32, float16 overshoot) have their own tests below,
each added for a defect these properties found and that is now fixed. The last section
feeds checkpoints with crafted JSON headers to ``load_model``: each must be refused with a
``CheckpointError`` before a model of the header's (possibly huge) size is built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_mpt_deblur import create_model, deblur
from napari_mpt_deblur.engine.predict import DeblurReport

STRENGTH = 0.05  # a in the docstring: the stand-in's sharpening strength
EPS32 = float(np.finfo(np.float32).eps)

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout; failures print their example
    suppress_health_check=[HealthCheck.too_slow],
)


class Sharpen(torch.nn.Module):
    """Cheap deterministic stand-in network with a predictable output (module docstring)."""

    size_multiple = 128
    in_channels = 1

    def __init__(self, strength: float = STRENGTH) -> None:
        super().__init__()
        laplacian = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
        self.register_buffer("kernel", (strength * laplacian)[None, None])
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype))


# ---------------------------------------------------------------------------------- strategies
# Value limits per dtype for the generated images (the extremes have dedicated tests below).
_LIMITS = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "int32": (-(2**24), 2**24),  # exact in float32; near 2**31 see test_wide_integers...
    "uint32": (0, 2**24),
    "int64": (-(2**24), 2**24),
    "float16": (-16384.0, 16384.0),  # room for overshoot below 65504, see test_float16...
    # Constants beyond 2**53 crash (test_huge_constant_images...), so floats stay below 1e15.
    "float32": (-1e15, 1e15),
    "float64": (-1e15, 1e15),
}
PATTERNS = ("noise", "constant", "zeros", "saturated", "negative", "huge", "spikes", "ramp",
            "offset")


def make_image(shape: tuple[int, ...], dtype: str, pattern: str, seed: int) -> np.ndarray:
    """A test image of ``pattern`` within the dtype's handled limits (``_LIMITS``)."""
    rng = np.random.default_rng(seed)
    lo, hi = _LIMITS[dtype]
    is_float = np.dtype(dtype).kind == "f"
    scale = float(rng.choice([1.0, 1e3, 1e-3])) if is_float else 1.0
    if pattern == "noise":
        a, b = sorted(rng.uniform(max(lo, -1000.0), min(hi, 1000.0), 2))
        values = rng.uniform(a, b, shape) * scale
    elif pattern == "constant":
        values = np.full(shape, rng.uniform(lo, hi))
    elif pattern == "zeros":
        values = np.zeros(shape)
    elif pattern == "saturated":  # a clipped camera image: a plateau at the top of the range
        values = rng.uniform(hi * 0.5, hi, shape)
        values[rng.random(shape) < 0.3] = hi
    elif pattern == "negative" and lo < 0:
        values = -rng.uniform(1.0, -lo, shape)
    elif pattern == "negative":  # unsigned: the bottom of the range instead
        values = rng.integers(0, 3, shape).astype(np.float64)
    elif pattern == "huge":  # the whole handled range at once
        values = rng.uniform(lo, hi, shape)
    elif pattern == "spikes":  # hot pixels on a dark background
        values = np.full(shape, float(max(lo, 0)))
        values[rng.random(shape) < 0.002] = hi
    elif pattern == "ramp":
        values = np.broadcast_to(np.linspace(lo / 2, hi / 2, shape[-1]), shape).copy()
    else:  # "offset": a small signal on a large pedestal (float32 precision matters)
        values = hi / 4 + rng.uniform(0.0, 10.0, shape)
    values = np.clip(values, lo, hi)
    if not is_float:
        values = np.rint(values)
    return values.astype(dtype)


@st.composite
def layouts(draw, max_side: int = 300) -> tuple[str, tuple[int, ...]]:
    """An axes string (Y, X and up to two of T/Z/C/Q, in any order) and a matching shape."""
    extra = draw(st.lists(st.sampled_from("TZCQ"), unique=True, max_size=2))
    letters = draw(st.permutations(["Y", "X", *extra]))
    height = draw(st.integers(8, max_side))
    width = draw(st.integers(8, max_side))
    sizes = {"Y": height, "X": width}
    for letter in extra:
        sizes[letter] = draw(st.integers(1, 3))
    return "".join(letters), tuple(sizes[a] for a in letters)


tiles = st.one_of(
    st.just(0),  # whole planes
    st.tuples(st.sampled_from([128, 200, 256]), st.one_of(st.none(), st.integers(16, 64))),
)


def _tolerance(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    span = float(x.max() - x.min())
    magnitude = float(np.abs(x).max())
    tol = 4 * STRENGTH * span + 8 * EPS32 * (magnitude + span)  # engine computes in float32
    if image.dtype.kind in "ui":
        tol += 1.0  # rounding to the integer grid
    else:
        tol += 2 * float(np.finfo(image.dtype).eps) * (magnitude + span)
    return tol


def _tile_kwargs(tile) -> dict:
    if tile == 0:
        return {"tile": 0}
    size, overlap = tile
    return {"tile": size, "overlap": overlap}


# -------------------------------------------------------------------------------- properties
@PROPERTY_SETTINGS
@given(
    layout=layouts(),
    dtype=st.sampled_from(sorted(_LIMITS)),
    pattern=st.sampled_from(PATTERNS),
    seed=st.integers(0, 2**32 - 1),
    tile=tiles,
)
def test_output_has_input_shape_dtype_and_stays_in_the_predicted_bound(layout, dtype, pattern,
                                                                       seed, tile):
    axes, shape = layout
    image = make_image(shape, dtype, pattern, seed)
    before = image.copy()
    model = Sharpen()
    report = DeblurReport()
    out = deblur(image, model, axes=axes, device="cpu", amp=False, report=report,
                 **_tile_kwargs(tile))

    assert out.shape == image.shape
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(image, before)  # the input is never modified
    y, x = out.astype(np.float64), image.astype(np.float64)
    assert np.isfinite(y).all()
    assert np.abs(y - x).max() <= _tolerance(image)
    if x.min() == x.max():  # constant images are a fixed point of the stand-in
        np.testing.assert_allclose(y, x, rtol=4 * EPS32, atol=0)
    if image.dtype.kind in "ui":
        info = np.iinfo(image.dtype)
        assert info.min <= y.min() and y.max() <= info.max
    planes = int(np.prod([n for a, n in zip(axes, shape) if a not in "YX"]))
    assert report.planes == planes and model.calls == report.n_tiles >= planes


@PROPERTY_SETTINGS
@given(
    height=st.integers(129, 300),
    width=st.integers(129, 300),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    pattern=st.sampled_from(["noise", "ramp", "spikes", "saturated"]),
    seed=st.integers(0, 2**32 - 1),
    tile=st.sampled_from([128, 256]),
    overlap=st.one_of(st.none(), st.integers(16, 64)),
)
def test_tiled_result_matches_the_whole_plane(height, width, dtype, pattern, seed, tile,
                                              overlap):
    # The stand-in only looks at 3x3 neighbourhoods, so with smoothly blended overlapping tiles
    # any seam would come from the tiling itself (tile placement, windows, normalisation).
    image = make_image((height, width), dtype, pattern, seed)
    whole = deblur(image, Sharpen(), device="cpu", amp=False, tile=0).astype(np.float64)
    tiled = deblur(image, Sharpen(), device="cpu", amp=False, tile=tile, overlap=overlap)
    span = float(image.max()) - float(image.min())
    slack = 1.0 if image.dtype.kind in "ui" else 16 * EPS32 * float(np.abs(image).max())
    assert np.abs(tiled.astype(np.float64) - whole).max() <= 0.01 * span + slack


@PROPERTY_SETTINGS
@given(
    shape=st.tuples(st.integers(8, 64), st.integers(8, 64)),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    n_nan=st.integers(0, 5),
    n_pos_inf=st.integers(0, 3),
    n_neg_inf=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_nan_and_inf_are_rejected_with_counts_before_any_work(shape, dtype, n_nan, n_pos_inf,
                                                              n_neg_inf, seed):
    bad = n_nan + n_pos_inf + n_neg_inf
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(dtype)
    flat = image.reshape(-1)
    positions = rng.choice(flat.size, size=min(bad, flat.size), replace=False)
    values = [np.nan] * n_nan + [np.inf] * n_pos_inf + [-np.inf] * n_neg_inf
    flat[positions] = values[: positions.size]
    model = Sharpen()
    if bad == 0:
        assert deblur(image, model, device="cpu", amp=False).shape == shape
        return
    n_inf = n_pos_inf + n_neg_inf
    with pytest.raises(ValueError, match=rf"{n_nan} NaN and {n_inf} infinite") as info:
        deblur(image, model, device="cpu", amp=False)
    assert "nan_to_num" in str(info.value)  # says how to fix it
    assert model.calls == 0


@pytest.fixture(scope="module")
def mpt_test():
    torch.manual_seed(0)
    return create_model("mpt-test").eval()


@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    layout=layouts(max_side=200),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]),
    pattern=st.sampled_from(PATTERNS),
    seed=st.integers(0, 2**32 - 1),
    tile=st.sampled_from([0, 128]),
)
def test_real_tiny_network_keeps_shape_dtype_and_finiteness(mpt_test, layout, dtype, pattern,
                                                            seed, tile):
    axes, shape = layout
    # Keep the real network cheap: at most two planes.
    shape = tuple(min(n, 2) if a not in "YX" else n for a, n in zip(axes, shape))
    image = make_image(shape, dtype, pattern, seed)
    out = deblur(image, mpt_test, axes=axes, device="cpu", amp=False, tile=tile)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.isfinite(out.astype(np.float64)).all()
    if image.dtype.kind in "ui":
        info = np.iinfo(image.dtype)
        assert info.min <= int(out.min()) and int(out.max()) <= info.max


# ------------------------------------------------------------- known defects (owner: engine)
def _near_top(dtype: str, shape=(40, 48)) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    return rng.integers(int(info.max) - 1000, int(info.max), shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", ["int32", "uint32", "int64", "uint64"])
def test_wide_integers_near_their_maximum_saturate_instead_of_wrapping(dtype):
    image = _near_top(dtype)
    out = deblur(image, Sharpen(), device="cpu", amp=False)
    assert out.dtype == image.dtype
    # Within the stand-in's bound (float32 precision included), i.e. never near the bottom.
    assert np.abs(out.astype(np.float64) - image.astype(np.float64)).max() <= _tolerance(image)


@pytest.mark.parametrize(("dtype", "value"), [("float32", 1e20), ("float64", -3e17),
                                              ("int64", 2**62)])
def test_huge_constant_images_are_returned_unchanged(dtype, value):
    image = np.full((32, 40), value, dtype=dtype)
    out = deblur(image, Sharpen(), device="cpu", amp=False)
    np.testing.assert_allclose(out.astype(np.float64), image.astype(np.float64), rtol=1e-6)


@pytest.mark.parametrize("case", ["float64-1e300", "float64-1e-300", "float32-full-range"])
def test_float_values_beyond_float32_are_processed_or_rejected_clearly(case):
    rng = np.random.default_rng(0)
    if case == "float64-1e300":
        image = 1e300 * (1.0 + rng.random((32, 40)))
    elif case == "float64-1e-300":
        image = 1e-300 * rng.random((32, 40))
    else:
        image = (rng.uniform(-1, 1, (32, 40)) * 3e38).astype(np.float32)
    try:
        out = deblur(image, Sharpen(), device="cpu", amp=False)
    except ValueError as exc:  # a clear refusal is acceptable
        assert "range" in str(exc)
        return
    assert np.isfinite(out).all()
    assert np.abs(out - image).max() <= _tolerance(image)


def test_float16_near_its_maximum_stays_finite():
    rng = np.random.default_rng(0)
    image = (60000 + 5000 * rng.random((32, 40))).astype(np.float16)
    out = deblur(image, Sharpen(), device="cpu", amp=False)
    assert np.isfinite(out.astype(np.float32)).all()


# ------------------------------------------ crafted checkpoint headers (owner: checkpoint.py)
def _with_header(source, target, change) -> None:
    """Copy a safetensors checkpoint with its JSON header edited (tensors untouched)."""
    import json
    import struct

    from napari_mpt_deblur.models.checkpoint import HEADER_KEY

    raw = source.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    table = json.loads(raw[8 : 8 + size])
    header = json.loads(table["__metadata__"][HEADER_KEY])
    table["__metadata__"] = {HEADER_KEY: json.dumps(change(header))}
    blob = json.dumps(table).encode()
    blob += b" " * (-len(blob) % 8)
    target.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + size :])


def _config_change(**fields):
    return lambda h: {**h, "config": {**h["config"], **fields}}




@pytest.mark.parametrize("change", [
    pytest.param(lambda h: {**h, "arch": "resnet"}, id="unknown-arch"),
    pytest.param(_config_change(dim=16), id="config-disagrees-with-tensors"),
    pytest.param(lambda h: {k: v for k, v in h.items() if k != "config"}, id="no-config"),
    pytest.param(lambda h: {**h, "config": 5}, id="config-not-a-dict"),
    pytest.param(lambda h: [h], id="header-not-a-dict"),
    pytest.param(_config_change(dim=-8), id="negative-dim"),
    pytest.param(_config_change(surprise=1), id="unknown-config-field"),
    pytest.param(_config_change(dim=4096), id="huge-dim"),
])
def test_crafted_checkpoint_headers_are_refused_before_building(tiny_checkpoint, tmp_path,
                                                                 monkeypatch, change):
    from napari_mpt_deblur import load_model
    from napari_mpt_deblur.models import checkpoint
    from napari_mpt_deblur.models.checkpoint import CheckpointError

    build = checkpoint.build_model

    def guarded_build(config):
        # A model much larger than the file's tensors must never be allocated: the header
        # would let a 1 MB file ask for gigabytes.
        if getattr(config, "dim", 0) > 64:
            raise AssertionError(f"built a dim={config.dim} model before checking the tensors")
        return build(config)

    monkeypatch.setattr(checkpoint, "build_model", guarded_build)
    path = tmp_path / "crafted.safetensors"
    _with_header(tiny_checkpoint, path, change)
    with pytest.raises(CheckpointError):
        load_model(path, device="cpu")


def test_oversized_checkpoint_files_are_refused_before_reading(tiny_checkpoint, monkeypatch):
    from napari_mpt_deblur import load_model
    from napari_mpt_deblur.models import checkpoint
    from napari_mpt_deblur.models.checkpoint import CheckpointError

    def must_not_read(*args, **kwargs):
        raise AssertionError("the file was opened before its size was checked")

    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", tiny_checkpoint.stat().st_size - 1)
    monkeypatch.setattr(checkpoint, "file_sha256", must_not_read)
    monkeypatch.setattr("safetensors.safe_open", must_not_read)
    monkeypatch.setattr("safetensors.torch.load_file", must_not_read)
    with pytest.raises(CheckpointError, match="larger than any supported model"):
        load_model(tiny_checkpoint, device="cpu")

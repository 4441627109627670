"""Lazy (dask/zarr) path: chunks blend seamlessly and match the in-memory engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mpt_deblur import deblur

da = pytest.importorskip("dask.array")


def test_dask_input_gives_a_lazy_result_matching_numpy(tiny_model, rng):
    image = (rng.random((2, 300, 260)) * 1000).astype(np.float32)
    lazy = deblur(da.from_array(image, chunks=(1, 150, 130)), tiny_model, axes="ZYX", device="cpu")
    assert isinstance(lazy, da.Array) and lazy.shape == image.shape and lazy.dtype == image.dtype
    result = lazy.compute(scheduler="synchronous")
    assert np.isfinite(result).all()
    # Same model on the same data: chunk borders must not add visible error.
    direct = deblur(image, tiny_model, axes="ZYX", device="cpu")
    assert np.abs(result - direct).mean() < 0.1 * np.abs(direct - image).mean() + 1e-3


def test_zarr_input(tiny_model, rng, tmp_path):
    zarr = pytest.importorskip("zarr")
    z = zarr.open(
        str(tmp_path / "x.zarr"), mode="w", shape=(200, 200), chunks=(100, 100), dtype="uint16"
    )
    z[:] = (rng.random((200, 200)) * 4000).astype(np.uint16)
    out = deblur(z, tiny_model, device="cpu")
    assert out.shape == (200, 200) and out.dtype == np.uint16
    assert np.asarray(out.compute(scheduler="synchronous")).max() > 0


def test_local_cluster_of_two_workers(tiny_checkpoint, rng):
    distributed = pytest.importorskip("distributed")
    image = (rng.random((256, 384)) * 1000).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            # A checkpoint path (not a model object) so each worker loads the model itself.
            lazy = deblur(da.from_array(image, chunks=(128, 192)), str(tiny_checkpoint),
                          device="cpu")
            result = client.compute(lazy).result()
            assert len(client.scheduler_info()["workers"]) == 2
    assert result.shape == image.shape and np.isfinite(result).all()
    # dask's nanny starts workers with OMP_NUM_THREADS=1; float32 sums depend on how the
    # threads split them, so the local run uses one thread too to compare like with like.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = lazy.compute(scheduler="synchronous")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(result, local, rtol=1e-5, atol=1e-4)


def test_lazy_path_checks_and_forwards_the_memory_limit(tiny_model, rng):
    image = da.from_array((rng.random((256, 256)) * 1000).astype(np.float32), chunks=(128, 128))
    with pytest.raises(ValueError, match="memory limit"):
        deblur(image, tiny_model, device="cpu", max_memory="lots")  # refused before any graph
    with pytest.raises(MemoryError, match="too small"):  # each chunk's job honours it
        deblur(image, tiny_model, device="cpu", max_memory=1024).compute(scheduler="synchronous")


def test_lazy_path_checks_and_forwards_the_ensemble(tiny_model, rng):
    image = (rng.random((200, 200)) * 1000).astype(np.float32)
    lazy = da.from_array(image, chunks=(200, 200))
    with pytest.raises(ValueError, match="ensemble must be one of"):
        deblur(lazy, tiny_model, device="cpu", ensemble=5)  # refused before any graph
    from napari_mpt_deblur.engine.lazy import deblur_dask

    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.8]))
    out = deblur_dask(lazy, tiny_model, device="cpu", ensemble=2, depth=0)
    expected = deblur(image, tiny_model, device="cpu", ensemble=2, intensity_range=(lo, hi))
    np.testing.assert_allclose(out.compute(scheduler="synchronous"), expected, atol=1e-5)

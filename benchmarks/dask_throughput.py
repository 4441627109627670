"""Throughput of the lazy dask path on a ``dask.distributed`` LocalCluster, by number of workers.

A random uint16 image (``--size``², chunks of ``--chunk`` px with the engine's 64 px halo) is
deblurred with a bundled model passed *by name*, so every worker process loads it once. Each
worker has one thread (one torch thread); the first computation on a fresh cluster is a warm-up
(model loading) and is not timed. On a machine with N cores, throughput can scale at most to N
single-thread workers; on a real cluster, add workers (``dask-jobqueue``, ``dask-kubernetes``) and
pass the same client.

    python benchmarks/dask_throughput.py --workers 1 2 --size 2048
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _machine import machine_line


def run(workers: int, size: int, chunk: int, model: str) -> tuple[float, int]:
    import dask.array as da
    import distributed

    from napari_mpt_deblur import deblur

    rng = np.random.default_rng(0)
    image = da.from_array(rng.integers(100, 4000, (size, size), dtype=np.uint16),
                          chunks=(chunk, chunk))
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        warm = deblur(image[:chunk, :chunk], model, device="cpu")
        client.compute(warm).result()
        lazy = deblur(image, model, device="cpu")
        started = time.perf_counter()
        out = client.compute(lazy).result()
        seconds = time.perf_counter() - started
    assert out.shape == (size, size)
    return seconds, lazy.npartitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024, help="the engine's default chunk")
    parser.add_argument("--model", default="mpt-tiny")
    args = parser.parse_args()
    print(machine_line("cpu", 1) + "\n")
    print("| model | image | chunks | workers × threads | time (s) | MPix/s | scaling |")
    print("|---|---|---:|---|---:|---:|---:|")
    first = None
    for workers in args.workers:
        seconds, chunks = run(workers, args.size, args.chunk, args.model)
        mpix = args.size**2 / 1e6 / seconds
        first = first or mpix
        print(f"| {args.model} | {args.size}² | {chunks} | {workers} × 1 | {seconds:.1f} "
              f"| {mpix:.3f} | {mpix / first:.2f}× |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# One-shot GPU benchmark (docs/performance.md, "GPU benchmark"): results into $OUT, else benchmarks/results/.
cd "$(dirname "$0")/.." && PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec "${PYTHON:-python}" benchmarks/gpu.py --out "${OUT:-benchmarks/results}" "$@"

#!/usr/bin/env bash
# Every GPU check of the project in one command, on a machine with a CUDA GPU and the
# project installed (pip install -e '.[dev,train]'): the gpu-marked tests (nvJPEG decode
# vs Pillow, bf16 vs fp32 agreement, the pinned/non-blocking path, fused attention, CUDA
# rendering), then bench/gpu_suite.py (its table on stdout, its JSON in the file named by
# the first argument). Under 10 minutes in all; the exit status is non-zero if either
# part failed, but the suite runs even when a test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_suite.json}"
timeout 150 python -m pytest -m gpu -q -p no:cacheprovider tests
tests=$?
timeout 540 python bench/gpu_suite.py --json "$out"
suite=$?
echo "gpu tests: exit $tests; gpu suite: exit $suite (JSON in $out)"
[ "$tests" -eq 0 ] && [ "$suite" -eq 0 ]

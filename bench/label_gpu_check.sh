#!/usr/bin/env bash
# Issue 24's GPU check, after bench/gpu_check.sh, on a machine with a CUDA GPU and the
# project installed (pip install -e '.[dev,train]'): clipseg-label's local engine on the
# full-size model (random rd64-refined, bf16 by dtype=auto) against the model-only figure
# of bench/gpu_suite.py at the same batch size (8). Target: the engine's steady images/s
# within 80% of the model-only bf16 batch-8 row. Under 5 minutes; prints both tables.
set -uo pipefail
cd "$(dirname "$0")/.."
images="${1:-1024}"
timeout 150 python bench/gpu_suite.py --sections 1 --budget-s 120 --json label_model_only.json
suite=$?
timeout 240 python bench/label.py --device cuda --variant rd64-refined --images "$images" \
    --batch-images 8 --repeat 2 --skip predict --skip http --skip ray-1 --skip ray-2
label=$?
echo "model only: exit $suite; label: exit $label"
[ "$suite" -eq 0 ] && [ "$label" -eq 0 ]

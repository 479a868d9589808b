#!/usr/bin/env bash
# GPU checks for one CUDA device, in under 5 minutes; writes bench/results/gpu.json.
#
#   bash bench/gpu.sh            # from the repository root, in the venv (PY=... to override)
#
# 1. the CUDA tests (every test with "cuda" in its name; they skip on a machine without CUDA),
# 2. bench/gpu.py: gibbs spin updates/s for 200+200 at 1k/10k/100k chains, the negative phase,
#    AIS/bracket cost, a CUDA-graph experiment,
# 3. bench/train_step.py --device cuda: ms per step for every structure at K = 1, 5, 25 and the
#    projected wall time of a 1M-step cell, merged into the JSON (or the reason it is missing).
# Without a CUDA device it says so, runs nothing on the CPU in its place, and still writes the
# JSON (with "cuda": false), so a missing GPU is never mistaken for a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-bench/results/gpu.json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout, not another install

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device here; writing $OUT with cuda=false" >&2
    "$PY" bench/gpu.py --out "$OUT"
    exit 0
fi

timeout 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/samplers/test_samplers.py tests/samplers/test_samplers_contract.py tests/evaluation/test_logz.py
tests_status=$?

# the training step on the GPU: every structure at K = 1, 5, 25
train_json=$(mktemp --suffix=.json)
timeout 120 "$PY" bench/train_step.py --device cuda --ks 1 5 25 --out "$train_json" || train_json=""

timeout 90 "$PY" bench/gpu.py --out "$OUT" --tests-exit-status "$tests_status" \
    ${train_json:+--train-step "$train_json"}
bench_status=$?
echo "CUDA tests exit status $tests_status, bench exit status $bench_status; results in $OUT"
exit $(( tests_status != 0 || bench_status != 0 ))

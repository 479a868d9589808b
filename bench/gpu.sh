#!/usr/bin/env bash
# The GPU's one call: at most 8 minutes on one CUDA device; writes bench/results/gpu.json.
#
#   bash bench/gpu.sh            # from the repository root, in the venv (PY=... to override)
#   bash bench/gpu.sh --quick    # the same script, small, on the CPU: checks it end to end
#                                # (bench/results/gpu_quick_cpu.json; CPU figures only)
#
# 1. the CUDA tests (every test with "cuda" in its name; they skip on a machine without CUDA),
#    at most 90 s;
# 2. bench/gpu.py with the rest of the 8 minutes: gibbs spin updates/s at 1k/10k/100k chains,
#    eager and CUDA-graphed, against the H200's memory-bandwidth and FP32 bounds; the training
#    step of every structure at K = 1, 5, 25, eager / compiled / graphed, with the projected
#    1M-step time of each cell; a real 1-layer-nonlin K = 1 cell (1M steps if they fit, else
#    the most that fit). It saves its JSON after each part, so a cut-short call keeps them.
# Without a CUDA device (and without --quick) it says so, runs nothing on the CPU in its place,
# and still writes the JSON (with "cuda": false), so a missing GPU is never mistaken for a
# measurement. The real cell reads the datasets from $DVAEQ_DATA_DIR (default ../shared/data
# or .cache/data when either holds binarized_mnist.npz); without them it records why not.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
TOTAL_S=${TOTAL_S:-480}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout, not another install
for dir in "${DVAEQ_DATA_DIR:-}" ../shared/data .cache/data; do
    if [ -n "$dir" ] && [ -f "$dir/binarized_mnist.npz" ]; then
        export DVAEQ_DATA_DIR="$dir"
        break
    fi
done

if [ "${1:-}" = "--quick" ]; then
    timeout 300 "$PY" bench/gpu.py --quick --budget-s 240
    exit $?
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device here; writing bench/results/gpu.json with cuda=false" >&2
    "$PY" bench/gpu.py
    exit 0
fi

timeout 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/samplers/test_samplers.py tests/samplers/test_samplers_contract.py tests/evaluation/test_logz.py
tests_status=$?

# what is left of the call, less 20 s for the interpreter's start and the last write
budget=$(( TOTAL_S - SECONDS - 20 ))
timeout $(( budget + 15 )) "$PY" bench/gpu.py --budget-s "$budget" --tests-exit-status "$tests_status"
bench_status=$?
echo "CUDA tests exit status $tests_status, bench exit status $bench_status; results in bench/results/gpu.json"
exit $(( tests_status != 0 || bench_status != 0 ))

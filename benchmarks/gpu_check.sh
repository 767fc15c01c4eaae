#!/usr/bin/env bash
# Issue 3's GPU checks in one run on a machine with an NVIDIA GPU, JAX (CUDA), Numba and pandas installed
# and no package registry. Prepare, in the repository root:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl pytensor==3.3.8
#   mkdir -p .gpudata && cp DIGINETICA/diginetica_train_full.tsv.gz DIGINETICA/diginetica_test.tsv.gz .gpudata/
# then run `bash benchmarks/gpu_check.sh` there (.whl and .gpudata travel with the working tree). Every section
# has its own time limit, prints as it goes, and a failing section does not stop the others.
# SMALL=1 runs the same sections at toy sizes (a dry run of the script on a CPU; the GPU-only determinism
# section then reports the missing GPU).
# The whole script stays inside one device call: every section's time limit is cut to what is left of
# BUDGET seconds (default 560, under the 600 s a call may run), most important sections first, and a
# section with under 20 s left is skipped with a line saying so. ONLY='b32 scaling' (keys: b32 b256 parts
# scaling correctness determinism host_store) reruns chosen sections. With $OUT set, the output is also kept in
# $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
if compgen -G '.whl/*.whl' >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
TRAIN=.gpudata/diginetica_train_full.tsv.gz TEST=.gpudata/diginetica_test.tsv.gz
if [ "${SMALL:-0}" = 1 ]; then SIZE=(--events 20000 --epochs 2); SYN=(--items 2000 5000 --events 20000); PARTS=(--items 5000 500000 --steps 20)
else SIZE=(--events 0 --epochs 4); SYN=(--items 43000 2000000); PARTS=(--items 43000 500000 2000000); fi
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/gpu_check.log") 2>&1; fi
BUDGET=${BUDGET:-560}
# section KEY LIMIT TITLE: prints the title and sets T (the section's limit, cut to the time left);
# returns 1 (skip) when ONLY does not name KEY or too little time is left.
section() {
    echo; echo "=== $3 ($(date +%T), ${SECONDS}s in)"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; then echo "skipped: not in ONLY"; return 1; fi
    T=$(( BUDGET - SECONDS < $2 ? BUDGET - SECONDS : $2 ))
    if [ "$T" -lt 20 ]; then echo "skipped: ${T}s left of BUDGET=$BUDGET; rerun with ONLY=$1"; return 1; fi
}

echo "=== machine ($(date +%T))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'
$PY -c 'import jax, pytensor, numba; print("jax", jax.__version__, jax.devices(), "| pytensor", pytensor.__version__, "| numba", numba.__version__)'

section b32 240 'Diginetica, batch 32: XE + logQ and bpr-max (chunk 100, negatives drawn on the device), evaluation over the test set' &&
timeout $T $PY benchmarks/bench_cpu.py "$TRAIN" "${SIZE[@]}" --backend jax --chunk 100 --test "$TEST" 2>&1 | grep -v '^Epoch\|^Measuring\|^The dataframe\|^Negative'

section b256 120 'Diginetica, batch 256: XE + logQ (events/s)' &&
timeout $T $PY benchmarks/bench_cpu.py "$TRAIN" "${SIZE[@]}" --backend jax --chunk 100 --batch_size 256 --losses xe_logq 2>&1 | grep -v '^Epoch\|^The dataframe\|^Negative'

section parts 90 'Catalogue-sized parts of a training step (us per step in a compiled loop): repeated-row methods, sampler' &&
timeout $T $PY benchmarks/jax_parts.py "${PARTS[@]}" 2>&1

section scaling 240 'Scaling: synthetic catalogues, training and evaluation on JAX' &&
timeout $T $PY benchmarks/bench_synthetic.py "${SYN[@]}" --backend jax --eval_backends jax 2>&1 | grep -v '^Epoch\|^Measuring\|^The dataframe\|^Negative'

section correctness 240 'Correctness: JAX (GPU, highest matmul precision) vs Numba (CPU) training and evaluation' &&
JAX_DEFAULT_MATMUL_PRECISION=highest timeout $T $PY -m pytest -q -p no:cacheprovider \
    tests/test_chunked.py::test_jax_training_matches_numba tests/test_jax_backend.py tests/test_gpu_ops.py -k 'jax or JAX' 2>&1 | tail -15

if section determinism 180 'Run-to-run determinism on the GPU (repeated items are scatter-added), without and with XLA deterministic ops'; then
    timeout $((T / 2)) $PY benchmarks/repeat_check.py "$TRAIN" --events 20000 --backend jax --device cuda 2>&1 | grep 'bit-identical\|Error'
    XLA_FLAGS=--xla_gpu_deterministic_ops=true timeout $((T / 2)) $PY benchmarks/repeat_check.py "$TRAIN" --events 20000 --backend jax --device cuda 2>&1 | grep 'bit-identical\|Error'
fi
section host_store 120 'Diginetica, batch 32, XE + logQ with negatives from the host store (store_type cpu), for comparison' &&
timeout $T $PY benchmarks/bench_cpu.py "$TRAIN" "${SIZE[@]}" --backend jax --chunk 100 --losses xe_logq --store_type cpu 2>&1 | grep -v '^Epoch\|^The dataframe\|^Negative\|^Created'

echo; echo "=== done ($(date +%T), ${SECONDS}s)"

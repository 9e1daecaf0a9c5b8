#!/usr/bin/env bash
# The CUDA path of the verification pass, checked and measured in one run on a lent GPU
# machine (torch with CUDA already installed there; nothing can be downloaded):
#   the CUDA tests (tests/test_cuda.py, skipped elsewhere), the accuracy benchmark with
#   models, samples and exact references on the GPU, and the GPU cost/speed benchmark.
# Logs go to $OUT (default /tmp/archlint-gpu).
#
#     bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/archlint-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ARCHLINT_NO_CACHE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/env.txt"
$PY -c "import torch, click, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1 | tee -a "$OUT/env.txt"
# The package without its dependencies (they are there; libcst is not needed to check).
if ! $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    echo "pip install failed (see install.log); using a copy on PYTHONPATH" | tee -a "$OUT/env.txt"
    mkdir -p /tmp/archlint-site && cp -r archlint /tmp/archlint-site/ && cp -r rules /tmp/archlint-site/archlint/rules
    export PYTHONPATH=/tmp/archlint-site
fi
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name" 2>&1
    local rc=$?
    tail -n 60 "$OUT/$name"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
}
step pytest.txt 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step cuda.md 180 $PY benchmarks/bench_cuda.py --repeats 10
step accuracy.md 150 $PY benchmarks/bench_accuracy.py --device cuda

#!/usr/bin/env bash
# On a lent GPU machine: build fastalign._C with CUDA against that machine's torch, run the GPU-relevant
# tests, then benchmarks; logs and result JSON land in $OUT (then commit the JSON under
# benchmarks/results/). Usage there, from the repository root:
#   bash benchmarks/gpu_session.sh [--no-tests] [bench_infonce.py bench_rsa.py ...]   (default: every bench_*.py)
# One device call may run 10 minutes at most: split the work, e.g.
#   1) bash benchmarks/gpu_session.sh bench_norm_act.py          (build, all GPU tests, one short bench)
#   2) bash benchmarks/gpu_session.sh --no-tests bench_infonce.py
#   3) bash benchmarks/gpu_session.sh --no-tests bench_rsa.py   (fastalign on the GPU; its baselines run on
#      the host CPU and take minutes: rsatoolbox's permutation loop, scipy loops)
#   4) bash benchmarks/gpu_session.sh --no-tests bench_cornet.py
set -uo pipefail
OUT=${OUT:-/tmp/fastalign-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
tests=1
if [ "${1:-}" = "--no-tests" ]; then tests=0; shift; fi
python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
python3 -m fastalign.info | tee "$OUT/info.txt"
if [ "$tests" = 1 ]; then
  python3 -m pytest tests -q -p no:cacheprovider -m "triton or cuda" 2>&1 | tee "$OUT/tests.log" | tail -25
fi
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(benchmarks/bench_*.py)
for s in "${scripts[@]}"; do
  [ -f "$s" ] || s="benchmarks/$s"
  python3 "$s" 2>&1 | tee -a "$OUT/bench.log" | tail -40
done
cp benchmarks/results/*.json "$OUT/" 2>/dev/null

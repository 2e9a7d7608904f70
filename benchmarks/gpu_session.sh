#!/usr/bin/env bash
# On a lent GPU machine: build fastalign._C with CUDA against that machine's torch, run the GPU-relevant
# tests, then benchmarks; logs and the result JSON written in this session land in $OUT (then commit the
# JSON under benchmarks/results/). Usage there, from the repository root:
#   bash benchmarks/gpu_session.sh [--no-tests] [bench_infonce.py bench_rsa.py ...]   (default: every bench_*.py)
# One device call may run 10 minutes at most: split the work, e.g.
#   1) bash benchmarks/gpu_session.sh bench_norm_act.py          (build, all GPU tests, one short bench)
#   2) bash benchmarks/gpu_session.sh --no-tests bench_infonce.py
#   3) bash benchmarks/gpu_session.sh --no-tests bench_rsa.py   (fastalign on the GPU; its baselines run on
#      the host CPU and take minutes: rsatoolbox's permutation loop, scipy loops)
#   4) bash benchmarks/gpu_session.sh --no-tests bench_cornet.py
# Every script runs even when one fails (a failed check exits 1 and writes no result file); their exit
# statuses are printed at the end and kept in $OUT/status.txt, and the session exits 1 if any failed.
set -uo pipefail
OUT=${OUT:-/tmp/fastalign-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
tests=1
if [ "${1:-}" = "--no-tests" ]; then tests=0; shift; fi
python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
python3 -m fastalign.info | tee "$OUT/info.txt"
failed=0
: >"$OUT/status.txt"
if [ "$tests" = 1 ]; then
  python3 -m pytest tests -q -p no:cacheprovider -m "triton or cuda" 2>&1 | tee "$OUT/tests.log" | tail -25
  rc=${PIPESTATUS[0]}
  echo "tests: exit $rc" | tee -a "$OUT/status.txt"
  [ "$rc" = 0 ] || failed=1
fi
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(benchmarks/bench_*.py)
# result files written from now on are this session's; the committed ones stay where they are
since=$(mktemp)
trap 'rm -f "$since"' EXIT
for s in "${scripts[@]}"; do
  [ -f "$s" ] || s="benchmarks/$s"
  python3 "$s" 2>&1 | tee -a "$OUT/bench.log" | tail -40
  rc=${PIPESTATUS[0]}
  echo "$s: exit $rc" | tee -a "$OUT/status.txt"
  [ "$rc" = 0 ] || failed=1
done
find benchmarks/results -maxdepth 1 -name '*.json' -newer "$since" -exec cp {} "$OUT/" \;
echo "results written in this session:"
find benchmarks/results -maxdepth 1 -name '*.json' -newer "$since" -printf '  %f\n'
[ "$failed" = 0 ] || { echo "FAILED: see $OUT/status.txt"; exit 1; }

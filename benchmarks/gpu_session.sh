#!/usr/bin/env bash
# The GPU half of the kernels' checks as one time-boxed command, for a GPU machine lent for minutes
# (or any CUDA machine with torch, triton, pytest and pytest-xdist installed):
#
#   1. the GPU tests (tests/test_kernels_gpu.py) in parallel processes, so that their compiles overlap, and
#      beside them the benchmark's warm-up: the autotuner's configs compiled in parallel processes into
#      Triton's on-disk cache (CPU work, which the tests' own compiles leave room for on a 16-core machine);
#   2. the benchmark (benchmarks/bench_attention.py): every shape, longest first, in the time the session
#      has left (SESSION_S, less TAIL_S for the last shape, the plot and the verdict);
#   3. the verdict on the speed goals (benchmarks/goals.py), printed last.
#
# Usage: benchmarks/gpu_session.sh [OUT_DIR]      (default: $OUT, else benchmarks/results/session)
# Knobs: PYTHON (python3), WORKERS (8, per half of step 1), SESSION_S (570: the whole run), TEST_BUDGET_S (200),
# WARM_BUDGET_S (300), TAIL_S (60), MIN_BENCH_S (30: the benchmark's least budget), BENCH_ARGS (its extra flags).
# Writes to OUT_DIR: env.txt (GPU and versions), gpu_tests.log, warm.log, bench.log, the benchmark's
# <device>.json / <device>.png (also left in benchmarks/results/) and goals.txt. Exit status: 0 only if the
# tests and the benchmark both passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/session}}
mkdir -p "$out"
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-8}
SESSION_S=${SESSION_S:-570}
TEST_BUDGET_S=${TEST_BUDGET_S:-200}
WARM_BUDGET_S=${WARM_BUDGET_S:-300}
TAIL_S=${TAIL_S:-60}
MIN_BENCH_S=${MIN_BENCH_S:-30}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
# Wheels carried in .whl/ (e.g. numpy<2.4, which triton 3.6's interpreter needs for the CPU half of
# test_cpu_and_gpu_agree) go first on the path; nothing is installed into the machine's python.
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  nvidia-smi || echo "nvidia-smi: not available"
  "$PY" -c 'import torch, triton, numpy, sys
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__,
      "| numpy", numpy.__version__, "| CUDA", torch.version.cuda)
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      torch.cuda.get_device_capability() if torch.cuda.is_available() else "")'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

echo "== GPU tests (budget ${TEST_BUDGET_S} s, ${WORKERS} processes), beside the benchmark's warm-up compile"
timeout "$WARM_BUDGET_S" "$PY" benchmarks/bench_attention.py --warm-only --warm-workers "$WORKERS" \
  > "$out/warm.log" 2>&1 &
warm_pid=$!
# -v: a line per finished test, so a run cut short by the budget still says which passed and which failed;
# --durations: where the time went (mostly compiling), to size the budget next time
timeout "$TEST_BUDGET_S" "$PY" -m pytest -n "$WORKERS" -v --durations=15 -rfEs -p no:cacheprovider \
  tests/test_kernels_gpu.py \
  2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
wait "$warm_pid"
warm_rc=$?
echo "== warm-up compile: exit ${warm_rc} (124: cut at ${WARM_BUDGET_S} s; the autotuner compiles the rest as it goes)"
tail -n 3 "$out/warm.log"

bench_budget=$(( SESSION_S - ($(date +%s) - start) - TAIL_S ))
[ "$bench_budget" -lt "$MIN_BENCH_S" ] && bench_budget=$MIN_BENCH_S
echo "== benchmark (budget ${bench_budget} s of shapes: what the session has left)"
timeout $((bench_budget + TAIL_S)) "$PY" benchmarks/bench_attention.py --warm-workers 0 \
  --budget-s "$bench_budget" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

# the benchmark's own files (every other JSON in results/ is from a CPU or the grading benchmark)
for f in benchmarks/results/*.json benchmarks/results/*.png; do
  case "$(basename "$f")" in cpu.*|grading_*) ;; *) [ "$f" -nt "$out/env.txt" ] && cp "$f" "$out/" ;; esac
done
# the verdict on the speed goals, last, so that the end of the output holds it (also in goals.txt)
echo "== speed goals"
"$PY" benchmarks/goals.py 2>&1 | tee "$out/goals.txt"
echo "== done in $(( $(date +%s) - start )) s: GPU tests exit ${tests_rc}, benchmark exit ${bench_rc}"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]

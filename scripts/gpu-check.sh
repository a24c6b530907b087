#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one command, within a time budget:
#
#   bash scripts/gpu-check.sh --budget 540 --out DIR     # one 10-minute call on a GPU machine
#   bash scripts/gpu-check.sh                            # budget 3600 s; results in benchmarks/results/<gpu>/gpu-check/
#   bash scripts/gpu-check.sh --smoke [--budget 300]     # the same steps in their CPU / quick form (what CI runs)
#
# Steps, in the order of what a first GPU run most needs: environment; the native build (in place, MAX_JOBS
# parallel jobs); `rmtkd doctor` (every backend verified against the float64 oracle and timed: this alone proves
# or refutes each kernel); the GPU tests (`pytest -m gpu`: every backend on CUDA against the reference, bf16
# included); the kernel benchmarks at the goals' shapes against cuBLAS, with roofline fractions; compute-sanitizer
# memcheck on a few odd shapes; end to end on a BERT-base-shaped and a Llama-shaped model with random weights
# (latency and NVML energy against the uncompressed model); the static sm_80/sm_90 checks.
#
# Budget: each step's limit is its share of the time still left (what a step does not use goes to the later
# ones), and at least 10 s while the budget lasts; a step with under 10 s left is skipped. A step that fails or runs out of time is recorded and the next
# one runs. summary.md and summary.json (each step's status, seconds, limit, log) are rewritten after every
# step, so a call stopped at its limit still returns what finished. Nothing is downloaded or installed: the
# package runs from this tree (PYTHONPATH) and the build compiles its extension in place.
# Python: $PYTHON, else .venv/bin/python, else python3. Exit status: 1 if a step failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SMOKE=0
OUT=""
BUDGET=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) shift; OUT="${1:-}" ;;
    --budget) shift; BUDGET="${1:-}" ;;
    *) echo "gpu-check: unknown argument $1 (expected --smoke, --out DIR or --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
case "$BUDGET" in
  ''|*[!0-9]*) echo "gpu-check: --budget: expected a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;;
esac
if [ "$BUDGET" -lt 30 ]; then echo "gpu-check: --budget: expected at least 30 seconds, got $BUDGET" >&2; exit 2; fi
STARTED=$(date +%s)
DEADLINE=$(( STARTED + BUDGET - 5 ))  # 5 s kept for killing a step that overruns and writing the summary

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
# Automatic choice's trials run in the process that needs them (not one child process per size): each step is a
# process of its own, so a kernel that faults takes only its step with it, and the budget is not spent starting
# children. The GPU tests keep the default (they check the child-process trials themselves).
export RMTKD_TRIAL_PROCESS=0
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
SLUG=$(printf '%s' "${GPU_NAME:-no-gpu}" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
OUT="${OUT:-benchmarks/results/$SLUG/gpu-check}"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
MODE=$([ "$SMOKE" = 1 ] && echo smoke || echo full)
HEADER="# gpu-check on ${GPU_NAME:-no GPU}

$(date -u +%Y-%m-%dT%H:%M:%SZ); python $PY; mode $MODE; budget ${BUDGET} s

| step | status | seconds | limit | log |
|---|---|---|---|---|"
ROWS=""
JSON=""
FAILED=0

json_text() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\n\r\t'; }

record() {  # record NAME STATUS SECONDS LIMIT: one row in summary.md and summary.json, both rewritten now
  ROWS="$ROWS
| $1 | $2 | $3 | $4 | logs/$1.log |"
  JSON="$JSON${JSON:+,}
  {\"step\": \"$1\", \"status\": \"$(json_text "$2")\", \"seconds\": $3, \"limit\": $4, \"log\": \"logs/$1.log\"}"
  printf '%s%s\n' "$HEADER" "$ROWS" > "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
  printf '{"gpu": "%s", "mode": "%s", "budget_s": %s, "python": "%s", "steps": [%s\n]}\n' \
    "$(json_text "${GPU_NAME:-none}")" "$MODE" "$BUDGET" "$(json_text "$PY")" "$JSON" > "$OUT/summary.json.tmp" \
    && mv "$OUT/summary.json.tmp" "$OUT/summary.json"
}

# Shares of the budget, in step order; a step's limit is its share of what is left over the shares still to run.
STEPS="environment build doctor gpu-tests kernel-benchmarks sanitizer end-to-end static"
declare -A SHARE=([environment]=2 [build]=30 [doctor]=10 [gpu-tests]=18 [kernel-benchmarks]=12 [sanitizer]=8
                  [end-to-end]=16 [static]=4)
SHARES_LEFT=0
for name in $STEPS; do SHARES_LEFT=$(( SHARES_LEFT + SHARE[$name] )); done

# step NAME FUNCTION: run the (exported) function with its share of the time left, log to logs/NAME.log.
step() {
  local name=$1 fn=$2 log="$OUT/logs/$1.log" start status limit left
  start=$(date +%s)
  left=$(( DEADLINE - start ))
  limit=$(( left * SHARE[$name] / SHARES_LEFT ))
  SHARES_LEFT=$(( SHARES_LEFT - SHARE[$name] ))
  if [ "$limit" -lt 10 ]; then limit=$(( left < 10 ? left : 10 )); fi  # every step gets 10 s while they last
  if [ "$limit" -lt 10 ]; then
    echo "skipped: no time left in the budget (${left}s left)" > "$log"
    record "$name" "skipped: no time left in the budget" 0 "$limit"
    echo "== $name: skipped (no time left)" >&2
    return
  fi
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=3 "$limit" bash -c "$fn" > "$log" 2>&1
  status=$?
  local seconds=$(( $(date +%s) - start )) word=ok
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then word="TIMED OUT after ${seconds}s (its share of the budget)"
  elif [ "$status" = 77 ]; then word="skipped: $(tail -n 1 "$log")"
  elif [ "$status" != 0 ]; then word="FAILED (exit $status)"; FAILED=1; fi
  record "$name" "$word" "$seconds" "$limit"
  echo "   $word (${seconds}s)" >&2
}

skip() { echo "$1"; exit 77; }

environment() {
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("torch", "triton", "transformers", "numpy", "safetensors", "pynvml", "matplotlib", "rmtkd_kernels", "rmtkd"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "present"), getattr(module, "__file__", ""))
    except Exception as error:  # noqa: BLE001
        print(name, "MISSING:", error)
import torch
print("cuda available:", torch.cuda.is_available(), "torch CUDA", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
    if p.major < 8:
        print(f"cuda:{i} has no bf16 tensor cores (sm < 80): the Triton and CUDA kernels refuse it; the reference runs")
EOF
  command -v nvcc && nvcc --version | tail -n 2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  echo "cpu cores: $(nproc)"
}

build() {
  local want=cuda
  [ "$SMOKE" = 1 ] && want=cpu
  if "$PY" -c "import sys, rmtkd_kernels as r; sys.exit(0 if r.EXTENSION.loaded and (r.EXTENSION.with_cuda or '$want' == 'cpu') else 1)"; then
    "$PY" -c "import rmtkd_kernels as r; print('already built:', r.EXTENSION)"; return 0
  fi
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" RMTKD_BUILD_EXT=$want "$PY" setup.py build_ext --inplace \
    || { echo "the $want build failed: the package runs without its native extension (Triton + reference backends)"; return 1; }
  "$PY" -c "import rmtkd_kernels as r; print(r.EXTENSION)"
}

doctor() {
  if [ "$SMOKE" = 1 ]; then "$PY" -m rmtkd_kernels.doctor --device cpu --no-trials
  else "$PY" -m rmtkd_kernels.doctor --device cuda; fi
}

gpu_tests() { env -u RMTKD_TRIAL_PROCESS "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu --durations=10 --continue-on-collection-errors tests/kernels; }

kernel_benchmarks() {
  if [ "$SMOKE" = 1 ]; then "$PY" benchmarks/kernel_benchmark.py --quick --device cpu --out "$OUT"
  else "$PY" benchmarks/kernel_benchmark.py --brief --device cuda --out "$OUT"; fi
}

sanitizer() {
  [ "$SMOKE" = 1 ] && skip "smoke mode: compute-sanitizer needs a GPU"
  command -v compute-sanitizer >/dev/null || skip "compute-sanitizer not found"
  compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" scripts/sanitize_kernels.py --few
}

end_to_end() {
  if [ "$SMOKE" = 1 ]; then "$PY" benchmarks/synthetic_end_to_end.py --quick --device cpu --out "$OUT"
  else "$PY" benchmarks/synthetic_end_to_end.py --device cuda --out "$OUT"; fi
}

static_checks() { "$PY" benchmarks/static_gpu.py --out "$OUT/static"; }

export PY SMOKE OUT
export -f skip environment build doctor gpu_tests kernel_benchmarks sanitizer end_to_end static_checks
step environment environment
step build build
step doctor doctor
step gpu-tests gpu_tests
step kernel-benchmarks kernel_benchmarks
step sanitizer sanitizer
step end-to-end end_to_end
step static static_checks
echo "summary: $OUT/summary.md ($(( $(date +%s) - STARTED )) s of a ${BUDGET} s budget)" >&2
cat "$OUT/summary.md"
exit $FAILED

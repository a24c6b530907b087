#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one command, for a machine nobody here has seen:
#
#   bash scripts/gpu-check.sh                 # results in benchmarks/results/<gpu>/gpu-check/
#   bash scripts/gpu-check.sh --out DIR       # elsewhere
#   bash scripts/gpu-check.sh --smoke         # the same steps in their CPU / quick form (what CI runs)
#
# Steps: environment, native build, `rmtkd doctor` (every backend verified and timed on this GPU), static
# sm_80/sm_90 checks, the test suite on the GPU (every backend against the reference, bf16 included),
# compute-sanitizer (memcheck, racecheck) over every kernel, the kernel benchmarks against cuBLAS with roofline
# fractions, and an `rmtkd compress` run with the end-to-end latency and NVML energy benchmark.
# Defensive: a step that fails is recorded and the next one runs; nothing is downloaded (the machine may be
# offline); each step has a time limit. summary.md lists every step, its status, time and log.
# Python: $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) shift; OUT="${1:-}" ;;
    *) echo "gpu-check: unknown argument $1 (expected --smoke or --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if [ "$SMOKE" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
SLUG=$(printf '%s' "${GPU_NAME:-no-gpu}" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
OUT="${OUT:-benchmarks/results/$SLUG/gpu-check}"
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.md"
printf '# gpu-check on %s\n\n%s; python %s; mode %s\n\n| step | status | seconds | log |\n|---|---|---|---|\n' \
  "${GPU_NAME:-no GPU}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PY" "$([ "$SMOKE" = 1 ] && echo smoke || echo full)" \
  > "$SUMMARY"
FAILED=0

# step NAME SECONDS FUNCTION: run the (exported) function in bash with a time limit, log to logs/NAME.log, one summary row.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$OUT/logs/$name.log" start status
  start=$(date +%s)
  echo "== $name" >&2
  timeout --kill-after=30 "$limit" bash -c "$*" > "$log" 2>&1
  status=$?
  local seconds=$(( $(date +%s) - start )) word=ok
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then word="TIMED OUT after ${limit}s"; FAILED=1
  elif [ "$status" = 77 ]; then word="skipped: $(tail -n 1 "$log")"
  elif [ "$status" != 0 ]; then word="FAILED (exit $status)"; FAILED=1; fi
  printf '| %s | %s | %s | logs/%s.log |\n' "$name" "$word" "$seconds" "$name" >> "$SUMMARY"
  echo "   $word (${seconds}s)" >&2
}

skip() { echo "$1"; exit 77; }

environment() {
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("torch", "triton", "transformers", "numpy", "safetensors", "pynvml", "matplotlib"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "present"))
    except Exception as error:  # noqa: BLE001
        print(name, "MISSING:", error)
import torch
print("cuda available:", torch.cuda.is_available(), "torch CUDA", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
EOF
  command -v nvcc && nvcc --version | tail -n 2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
}

build() {
  [ "$SMOKE" = 1 ] && skip "smoke mode: the package installed by setup is used"
  if "$PY" -c "import sys, rmtkd_kernels as r; sys.exit(0 if r.EXTENSION.with_cuda else 1)" 2>/dev/null; then
    echo "rmtkd_kernels._C is already built with CUDA kernels"; return 0
  fi
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
  RMTKD_BUILD_EXT=cuda "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    || { echo "CUDA build failed; installing without the native extension (Triton + reference backends)";
         RMTKD_BUILD_EXT=0 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .; return 1; }
}

doctor() {
  if [ "$SMOKE" = 1 ]; then "$PY" -m rmtkd_kernels.doctor --device cpu --no-trials
  else "$PY" -m rmtkd_kernels.doctor --device cuda; fi
}

static_checks() { "$PY" benchmarks/static_gpu.py --out "$OUT/static"; }

test_suite() {
  if [ "$SMOKE" = 1 ]; then
    "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_projected_linear.py -k "opcheck"
  else
    "$PY" -m pytest -q -p no:cacheprovider -rs tests
  fi
}

sanitizer() {
  [ "$SMOKE" = 1 ] && skip "smoke mode: compute-sanitizer needs a GPU"
  command -v compute-sanitizer >/dev/null || skip "compute-sanitizer not found"
  compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" scripts/sanitize_kernels.py || return 3
  compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" scripts/sanitize_kernels.py --backends cuda
}

kernel_benchmarks() {
  if [ "$SMOKE" = 1 ]; then "$PY" benchmarks/kernel_benchmark.py --quick --device cpu --out "$OUT"
  else "$PY" benchmarks/kernel_benchmark.py --device cuda --out "$OUT"; fi
}

compress_and_end_to_end() {
  [ "$SMOKE" = 1 ] && skip "smoke mode: the end-to-end benchmark's CPU form runs in the test suite"
  local run="runs/gpu-check-bbc-news-minilm"
  "$PY" -m rmtkd compress --device cuda --out "$run" || return 1
  "$PY" benchmarks/end_to_end.py --run "$run" --device cuda --out "$OUT"
}

export PY SMOKE OUT
export -f skip environment build doctor static_checks test_suite sanitizer kernel_benchmarks compress_and_end_to_end
step environment 300 environment
step build 1800 build
step doctor 1200 doctor
step static 1200 static_checks
step tests 5400 test_suite
step sanitizer 3600 sanitizer
step kernel-benchmarks 3600 kernel_benchmarks
step compress-end-to-end 5400 compress_and_end_to_end
echo "summary: $SUMMARY" >&2
cat "$SUMMARY"
exit $FAILED

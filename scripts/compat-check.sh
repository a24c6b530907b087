#!/usr/bin/env bash
# The package on the GPU machines' versions, checked without a GPU: a second environment with Python 3.12 (where
# there is one; python3 otherwise), torch 2.11.0 and its Triton 3.6 (what the lent H100/H200 machines run), and
# in a fresh copy of this tree (no .venv, nothing
# installed, the way such a machine runs it):
#   1. the device protocol's dry run: scripts/gpu-check.sh --smoke --budget 300 on that environment's python
#      (its build step compiles the C++ extension in place against torch 2.11);
#   2. the Triton-interpreter kernel tests, the static sm_80/sm_90 checks and `rmtkd doctor --device cpu`.
# The environment is kept in .venv-torch2.11 and reused while its versions are right. Where pip cannot install
# it (no registry), the script says so and exits 0: nothing was checked. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ENV="$ROOT/.venv-torch2.11"
TORCH=2.11.0
TRITON=3.6.0
# Triton 3.6's interpreter converts one-element arrays with int(), which NumPy 2.4 refuses: numpy < 2.4 there.
PACKAGES=("torch==$TORCH" "triton==$TRITON" "numpy<2.4" pytest hypothesis expecttest ninja safetensors transformers
          nvidia-ml-py)

BASE=$(command -v python3.12 >/dev/null 2>&1 && python3.12 -c "" 2>/dev/null && echo python3.12 || echo python3)
WANT_PYTHON=$("$BASE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

versions_ok() {
  [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "
import sys, torch, triton, transformers, pytest
sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH' and triton.__version__ == '$TRITON'
         and '%d.%d' % sys.version_info[:2] == '$WANT_PYTHON' else 1)" 2>/dev/null
}

started=$(date +%s)
if ! versions_ok; then
  rm -rf "$ENV"
  "$BASE" -m venv "$ENV"
  if ! "$ENV/bin/python" -m pip install -q "${PACKAGES[@]}" > "$ROOT/.venv-torch2.11.log" 2>&1; then
    tail -n 5 "$ROOT/.venv-torch2.11.log"
    echo "compat-check: skipped: pip could not install torch $TORCH / triton $TRITON (log above); nothing checked"
    rm -rf "$ENV"
    exit 0
  fi
fi
PY="$ENV/bin/python"
echo "compat-check: $("$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)') ($(( $(date +%s) - started )) s to set up)"

COPY=$(mktemp -d)
trap 'rm -rf "$COPY"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$COPY"
cd "$COPY"
export PYTHONPATH="$COPY:$COPY/python"
export RMTKD_CACHE_DIR="$COPY/.cache"

echo "== 1. scripts/gpu-check.sh --smoke --budget 300 (fresh copy, torch $TORCH)"
status=0
PYTHON="$PY" bash scripts/gpu-check.sh --smoke --budget 300 --out "$COPY/gpu-check" > "$COPY/gpu-check.log" 2>&1 \
  || status=$?
cat "$COPY/gpu-check/summary.md"
"$PY" - "$COPY/gpu-check/summary.json" "$status" <<'EOF'
import json, sys
steps = json.load(open(sys.argv[1]))["steps"]
wanted = ["environment", "build", "doctor", "gpu-tests", "kernel-benchmarks", "sanitizer", "end-to-end", "static"]
problems = [] if [s["step"] for s in steps] == wanted else [f"steps {[s['step'] for s in steps]}"]
problems += [f"{s['step']}: {s['status']}" for s in steps[:-1]  # the static checks may run out of the budget
             if not (s["status"] == "ok" or s["status"].startswith("skipped: smoke mode"))]
problems += ["exit status " + sys.argv[2]] if sys.argv[2] != "0" else []
print("dry run:", "; ".join(problems) if problems else "every step as expected")
sys.exit(1 if problems else 0)
EOF

echo "== 2. Triton-interpreter kernel tests, static checks, doctor (torch $TORCH, triton $TRITON)"
TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cov_accumulate.py \
  tests/kernels/test_projected_linear.py tests/kernels/test_projected_linear_module.py \
  tests/kernels/test_covariance_accumulator.py tests/kernels/test_triton_launch.py 2>&1 | tail -n 3
"$PY" benchmarks/static_gpu.py --out "$COPY/static" > "$COPY/static.log" 2>&1 || { tail -n 20 "$COPY/static.log"; exit 1; }
echo "static checks: $(grep -c '| ok |' "$COPY/static/static.md") kernel configurations within the rules"
"$PY" -m rmtkd_kernels.doctor --device cpu | tail -n 4
echo "compat-check: passed in $(( $(date +%s) - started )) s"

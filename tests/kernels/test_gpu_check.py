"""scripts/gpu-check.sh in its CPU form (--smoke), and the static GPU checks it runs (benchmarks/static_gpu.py, no GPU
needed): every Triton configuration the launchers can pick compiles for sm_80 and sm_90 without spills, on tensor
cores where the rules require them, with unfenced fp64 atomics; the CUDA kernels of the built extension likewise
(HMMA on both architectures)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmtkd_kernels.extension import EXTENSION

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "static_gpu.py"
STEPS = ("environment", "build", "doctor", "gpu-tests", "kernel-benchmarks", "sanitizer", "end-to-end", "static")


@pytest.fixture(scope="module")
def static_gpu():
    spec = importlib.util.spec_from_file_location("static_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["static_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    ptxas, cuobjdump = module._triton_tools()
    if not (ptxas.exists() and cuobjdump.exists()):
        pytest.skip("this Triton ships no ptxas/cuobjdump (a build without the NVIDIA backend)")
    return module


@pytest.fixture(scope="module")
def gpu_check(static_gpu, tmp_path_factory):
    """A smoke run of scripts/gpu-check.sh (its own processes: the tests run Triton under the interpreter, which
    cannot compile ahead of time): (exit status, summary text, output folder)."""
    out = tmp_path_factory.mktemp("gpu-check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(out / "cache"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1800)
    return done, (out / "summary.md").read_text(), out


@pytest.fixture(scope="module")
def table(static_gpu, gpu_check):
    """The static checks' rows and their process's outcome (the static step of the smoke run)."""
    _, summary, out = gpu_check
    rows = [static_gpu.Row(**row) for row in json.loads((out / "static" / "static.json").read_text())]
    static_row = next(line for line in summary.splitlines() if line.startswith("| static |"))
    return static_row, rows


def test_gpu_check_smoke_runs_every_step_and_records_each(gpu_check):
    done, summary, out = gpu_check
    assert done.returncode == 0, summary + done.stderr[-2000:]
    statuses = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
                if line.startswith("| ") and not line.startswith("| step")}
    assert tuple(statuses) == STEPS
    assert all(status == "ok" or status.startswith("skipped: smoke mode") for status in statuses.values()), statuses
    assert statuses["doctor"] == statuses["gpu-tests"] == statuses["kernel-benchmarks"] == statuses["end-to-end"] == "ok"
    assert (out / "cpu-quick" / "kernels.json").exists() and "torch" in (out / "logs" / "environment.log").read_text()
    assert (out / "cpu-quick" / "synthetic_end_to_end.json").exists()
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps] == list(STEPS) and all(s["limit"] >= 10 for s in steps)


def test_a_budget_too_small_for_every_step_skips_the_rest_and_keeps_what_finished(tmp_path):
    """With 30 s, the early steps get their shares and the ones past the budget are skipped and recorded; the
    call ends within the budget and its summary is complete. A bad budget is refused, naming the option."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHON=sys.executable)
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--smoke", "--budget", "30",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert time.monotonic() - started < 30 + 15, done.stderr[-2000:]
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps] == list(STEPS)
    assert steps[0]["status"] == "ok" and any(s["status"] == "skipped: no time left in the budget" for s in steps)
    assert sum(s["seconds"] for s in steps) <= 30 + 5
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--budget", "soon"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--budget: expected a whole number of seconds" in bad.stderr


def test_every_triton_configuration_compiles_for_sm80_and_sm90_within_the_rules(static_gpu, table):
    static_row, rows = table
    triton_rows = [r for r in rows if not r.kernel.startswith("cuda ")]
    assert {r.arch for r in triton_rows} == {80, 90}
    assert {r.kernel.split("-")[0] for r in triton_rows} == {"cov_syrk", "colsum", "projected_linear"}
    broken = [f"{r.kernel} sm_{r.arch}: {'; '.join(static_gpu.violations(r))}" for r in rows
              if static_gpu.violations(r)]
    assert not broken, "\n".join(broken)
    assert "| ok |" in static_row, static_row  # the script exits non-zero when a rule is broken
    for r in triton_rows:
        if r.tensor_cores_required:  # HMMA on sm_80, HGMMA (wgmma) or HMMA on sm_90
            assert r.tensor_core_instructions > 0, r.kernel
        if r.kernel.startswith("cov_syrk") and "acc64" in r.kernel:
            assert r.fp64_atomics > 0, r.kernel  # the counts are really read from the SASS


@pytest.mark.skipif(not EXTENSION.with_cuda, reason="the extension was built without CUDA kernels (no nvcc)")
def test_cuda_kernels_of_the_built_extension_within_the_rules(static_gpu, table):
    _, rows = table
    syrk = [r for r in rows if r.kernel.startswith("cuda cov_syrk_kernel")]
    assert {(r.kernel, r.arch) for r in syrk} == {
        (f"cuda cov_syrk_kernel<{x},{acc}>", arch)
        for x in ("bf16", "fp16", "fp32") for acc in ("fp32", "fp64") for arch in (80, 90)}
    assert all(not static_gpu.violations(r) and r.tensor_core_instructions > 0 for r in syrk)


def test_the_rules_catch_what_they_are_for(static_gpu):
    """A row with spills, no tensor cores or a fenced atomic breaks the rules: the checks above can fail."""
    row = static_gpu.Row("k", 80, ok=True, regs=255, spill_bytes=8, tensor_cores_required=True, fenced_atomics=1)
    problems = static_gpu.violations(row)
    assert any("spills 8 bytes" in p for p in problems)
    assert any("no tensor-core" in p for p in problems) and any("fenced" in p for p in problems)
    assert static_gpu.ptx_fenced_fp64_atomics("atom.global.acq_rel.gpu.add.f64 %fd1, [%rd1], %fd2;") == 1
    assert static_gpu.ptx_fenced_fp64_atomics("red.global.relaxed.gpu.add.f64 [%rd1], %fd2;") == 0
    assert static_gpu.sass_counts("MEMBAR.SC.GPU ;\nMEMBAR.ALL.CTA ;")["membar"] == 1

"""The kernels under pytest-benchmark, for users who compare runs with its tooling:

    pytest benchmarks/test_kernel_timings.py --benchmark-only                    # full shapes
    pytest benchmarks/test_kernel_timings.py --benchmark-compare                 # against a saved run
    RMTKD_BENCH_QUICK=1 pytest benchmarks/test_kernel_timings.py --benchmark-disable   # smoke (CI)

Each case checks its result against the float64 reference once, then times it; the baselines (full GEMM Gram,
two linears) are timed beside the ops in the same session. kernel_benchmark.py writes the JSON/markdown tables.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from rmtkd_kernels import cov_accumulate, projected_linear
from rmtkd_kernels.backends import backend_names, unsupported_reasons

QUICK = os.environ.get("RMTKD_BENCH_QUICK") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
COV_SHAPES = [(96, 512)] if QUICK else [(384, 8192), (768, 8192), (1536, 8192), (768, 65536)]
PROJ_SHAPES = [(1, 96, 24), (64, 96, 24)] if QUICK else [(r, d, k) for d in (384, 768) for k in (32, 128, 512)
                                                         for r in (1, 64, 1024)]
BACKENDS = [b for b in backend_names() if not (b == "triton" and DEVICE.type == "cpu")]


def _runnable(backend: str, op: str) -> bool:
    return not unsupported_reasons(backend, op, torch.empty(1, 1, device=DEVICE))


@pytest.mark.parametrize("d,n", COV_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("candidate", ["gram: acc64 += (x.T @ x).double()"] + BACKENDS)
def test_cov_accumulate(benchmark, candidate, d, n):
    if not candidate.startswith("gram") and not _runnable(candidate, "cov_accumulate"):
        pytest.skip(f"backend {candidate} cannot run here")
    x = torch.randn(n, d, device=DEVICE) + 0.1
    gram = torch.zeros(d, d, dtype=torch.float64, device=DEVICE)
    colsum = torch.zeros(d, dtype=torch.float64, device=DEVICE)
    bad = torch.zeros((), dtype=torch.int64, device=DEVICE)
    if candidate.startswith("gram"):
        def run():
            gram.add_((x.T @ x).double())
    else:
        def run():
            cov_accumulate(x, gram, colsum, bad, backend=candidate)
    run()
    expected = x.double().T @ x.double()
    assert torch.allclose(gram.triu(), expected.triu(), rtol=1e-4, atol=1e-3 * n ** 0.5)
    benchmark(run)


@pytest.mark.parametrize("rows,d,k", PROJ_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("candidate", ["two F.linear"] + BACKENDS)
def test_projected_linear(benchmark, candidate, rows, d, k):
    if candidate != "two F.linear" and not _runnable(candidate, "projected_linear"):
        pytest.skip(f"backend {candidate} cannot run here")
    x, p = torch.randn(rows, d, device=DEVICE), torch.randn(d, k, device=DEVICE) / d ** 0.5
    w, b = torch.randn(d, k, device=DEVICE) / k ** 0.5, torch.randn(d, device=DEVICE)
    if candidate == "two F.linear":
        def run():
            return F.linear(F.linear(x, p.T), w, b)
    else:
        def run():
            return projected_linear(x, p, w, b, backend=candidate)
    with torch.inference_mode():
        expected = (x.double() @ p.double()) @ w.double().T + b.double()
        assert torch.allclose(run().double(), expected, rtol=1e-4, atol=1e-4)
        benchmark(run)

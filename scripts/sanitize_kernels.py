"""Every GPU kernel of rmtkd_kernels on small odd shapes, every layout and dtype, for compute-sanitizer.

    compute-sanitizer --tool memcheck python scripts/sanitize_kernels.py
    compute-sanitizer --tool racecheck python scripts/sanitize_kernels.py --backends cuda
    compute-sanitizer --tool memcheck python scripts/sanitize_kernels.py --few   # a few odd shapes (gpu-check)

Each call is also checked against the float64 oracle, so a run that the sanitizer passes is also a correct one.
Exits non-zero on the first wrong result; the sanitizer reports memory errors and races itself.
"""
from __future__ import annotations

import argparse
import sys

import torch

from rmtkd_kernels import cov_accumulate, projected_linear
from rmtkd_kernels.backends import unsupported_reasons

COV_SHAPES = [(1, 1), (37, 5), (203, 77), (300, 129), (130, 1000)]
PL_SHAPES = [(1, 45, 19, 70), (7, 130, 1, 33), (65, 200, 100, 129), (300, 96, 256, 40)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def layouts(t: torch.Tensor, few: bool = False) -> list[torch.Tensor]:
    """t row-major, column-major and as a strided slice (few: row-major and strided)."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    return [t.contiguous(), wide[:, ::2]] if few else [t.contiguous(), t.T.contiguous().T, wide[:, ::2]]


def check_cov(backend: str, few: bool) -> int:
    calls = 0
    for n, d in COV_SHAPES[1::2] if few else COV_SHAPES:
        for dtype in DTYPES[::2] if few else DTYPES:
            base = (torch.randn(n, d, device="cuda") + 0.5).to(dtype)
            for x in layouts(base, few):
                masks = (torch.rand(n, device="cuda") > 0.3,)
                for mask in masks if few else (None,) + masks:
                    gram = torch.zeros(d, d, dtype=torch.float64, device="cuda")
                    colsum = torch.zeros(d, dtype=torch.float64, device="cuda")
                    bad = torch.zeros((), dtype=torch.int64, device="cuda")
                    cov_accumulate(x, gram, colsum, bad, mask, backend=backend)
                    rows = x.double() if mask is None else x.double()[mask]
                    expected = torch.triu(rows.T @ rows)
                    error = (torch.triu(gram) - expected).abs().max() / expected.abs().max().clamp(min=1)
                    if not error <= 1e-4 or int(bad) != 0:
                        sys.exit(f"cov_accumulate[{backend}] {dtype} {tuple(x.shape)} strides {x.stride()}: "
                                 f"relative error {float(error):.3g}, {int(bad)} NaN/Inf rows")
                    calls += 1
    return calls


def check_projected_linear(backend: str, few: bool) -> int:
    calls = 0
    for rows, d_in, k, d_out in PL_SHAPES[::2] if few else PL_SHAPES:
        for dtype in DTYPES[::2] if few else DTYPES:
            x = torch.randn(rows, d_in, device="cuda").to(dtype)
            basis = (torch.randn(d_in, k, device="cuda") / d_in ** 0.5).to(dtype)
            weight = (torch.randn(d_out, k, device="cuda") / k ** 0.5).to(dtype)
            bias = torch.randn(d_out, device="cuda").to(dtype)
            for xs in layouts(x, few):
                y = projected_linear(xs, basis, weight, bias, backend=backend)
                expected = (xs.double() @ basis.double()) @ weight.double().T + bias.double()
                error = (y.double() - expected).abs().max() / expected.abs().max().clamp(min=1)
                if not error <= (1e-4 if dtype == torch.float32 else 3e-2):
                    sys.exit(f"projected_linear[{backend}] {dtype} {(rows, d_in, k, d_out)}: relative error "
                             f"{float(error):.3g}")
                calls += 1
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    parser.add_argument("--few", action="store_true", help="two shapes per op, fp32 and bf16, two layouts, masked")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sanitize_kernels: needs a CUDA GPU")
    probe = torch.empty(1, 1, device="cuda")
    for backend in args.backends:
        for op, check in (("cov_accumulate", check_cov), ("projected_linear", check_projected_linear)):
            reasons = unsupported_reasons(backend, op, probe)
            if reasons:
                print(f"{op}[{backend}]: skipped ({'; '.join(reasons)})")
                continue
            calls = check(backend, args.few)
            torch.cuda.synchronize()
            print(f"{op}[{backend}]: {calls} calls correct")
    return 0


if __name__ == "__main__":
    sys.exit(main())

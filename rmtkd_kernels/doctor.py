"""What rmtkd_kernels can do on this machine: versions, the native build, each backend's reasons, and fresh
verification and timing of every able backend at typical sizes (``rmtkd doctor``; ``python -m rmtkd_kernels.doctor``).

The trials are those automatic choice runs (``backends.tuning``), so the decisions they reach are also stored in
the backend cache, and what doctor prints is what the ops will do.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator, Optional

import torch

from rmtkd_kernels.backends import OPS, backend_names, unsupported_reasons
from rmtkd_kernels.backends.chooser import auto_candidates
from rmtkd_kernels.backends.problem import Problem
from rmtkd_kernels.backends.tuning import TUNER, decision_key, fingerprint
from rmtkd_kernels.extension import EXTENSION

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def typical_problems(device: torch.device) -> list[Problem]:
    """Sizes of a BERT-base-like model (MiniLM-like on the CPU, where trials are slower)."""
    width, inner, rank = (768, 3072, 128) if device.type == "cuda" else (384, 1536, 64)
    return [Problem("cov_accumulate", (8192, width)), Problem("cov_accumulate", (8192, inner)),
            *(Problem("projected_linear", (rows, width, rank, width)) for rows in (1, 64, 4096))]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def environment_lines(device: torch.device) -> Iterator[str]:
    print_fp = fingerprint(device)
    yield f"device: {print_fp['device']} ({device})"
    yield f"torch {print_fp['torch']} (CUDA {torch.version.cuda}), triton {print_fp['triton']}, " \
          f"rmtkd {print_fp['rmtkd']}, driver {print_fp['driver']}"
    build = "not built: " + str(EXTENSION.error) if not EXTENSION.loaded else \
        ("CPU and CUDA kernels" if EXTENSION.with_cuda else "CPU kernels only")
    yield f"native extension rmtkd_kernels._C: {build}"
    yield f"backend cache: {TUNER.disk_cache(device).path}"


def availability_lines(device: torch.device) -> Iterator[str]:
    yield "backends (why one cannot run an op here; not listed: it can, for every input dtype):"
    for name in backend_names():
        for op in OPS:
            reasons: dict[str, None] = {}  # ordered set over the dtypes
            for dtype in DTYPES:
                probe = torch.empty(0, 0, dtype=dtype, device="meta")
                reasons.update(dict.fromkeys(unsupported_reasons(name, op, probe, device.type)))
            if reasons:
                yield f"  {name:10s} {op:17s} {'; '.join(reasons)}"


def trial_lines(device: torch.device, problems: list[Problem]) -> Iterator[str]:
    yield "trials (each able backend against a float64 oracle on scratch inputs; time = median of one call):"
    yield f"  {'op':17s} {'dtype':9s} {'sizes':22s} {'backend':10s} {'result':8s} {'time':>10s} {'rel. error':>10s}"
    for problem in problems:
        for dtype in DTYPES:
            candidates = auto_candidates(problem.op, device.type, dtype)
            record = TUNER.tune(problem, dtype, device, candidates)
            TUNER.disk_cache(device).store(decision_key(problem, dtype, candidates), record)
            for outcome in record["outcomes"]:
                mark = "chosen" if outcome["backend"] == record["backend"] else ("ok" if outcome["ok"] else "FAILED")
                seconds = f"{outcome['seconds'] * 1e6:8.1f}µs" if outcome["seconds"] is not None else ""
                err = f"{outcome['relative_error']:.2e}" if outcome["relative_error"] is not None else ""
                sizes = "x".join(map(str, record["sizes"]))
                yield f"  {problem.op:17s} {_dtype_name(dtype):9s} {sizes:22s} {outcome['backend']:10s} " \
                      f"{mark:8s} {seconds:>10s} {err:>10s}" + (f"  {outcome['error']}" if outcome["error"] else "")


def report(device: torch.device, trials: bool = True, problems: Optional[list[Problem]] = None) -> Iterator[str]:
    """The doctor's report, line by line (trials are run as the lines are produced)."""
    yield from environment_lines(device)
    yield from availability_lines(device)
    if trials:
        yield from trial_lines(device, problems or typical_problems(device))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmtkd_kernels.doctor", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-trials", action="store_true", help="only versions, build and backend availability")
    args = parser.parse_args(argv)
    for line in report(torch.device(args.device), trials=not args.no_trials):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

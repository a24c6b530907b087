"""One trial of one backend: run it on fresh random inputs of a problem's shape, check it against float64, time it.

A trial never touches a caller's tensors: the inputs and the (mutated) accumulators are scratch buffers made
here, so the caller's accumulator is updated exactly once whatever the tuning does. Correctness is judged as
flash-attention's tests judge it: the backend's error against a float64 oracle may be at most twice the error of
the reference backend run in the same dtype, or a small floor per dtype, whichever is larger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rmtkd_kernels import reference
from rmtkd_kernels.backends.problem import Problem, in_layout
from rmtkd_kernels.backends.registry import get_backend
from rmtkd_kernels.timing import median_seconds

# Relative error (max |error| / max |oracle|) every backend may have whatever the reference does.
ERROR_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
WARMUP, REPEATS = 2, 5


def error_floor(op: str, dtype: torch.dtype) -> float:
    """cov_accumulate forms the products of 16-bit input exactly in fp32, so its floor is fp32's."""
    if op == "cov_accumulate" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return ERROR_FLOOR[dtype]


@dataclass(frozen=True)
class Outcome:
    """What a trial found: correct or not (with the error), and the median time of one call in seconds."""

    backend: str
    ok: bool
    seconds: Optional[float] = None
    error: Optional[str] = None
    relative_error: Optional[float] = None

    def as_dict(self) -> dict:
        return {"backend": self.backend, "ok": self.ok, "seconds": self.seconds, "error": self.error,
                "relative_error": self.relative_error}


def _relative_error(got: torch.Tensor, oracle: torch.Tensor) -> float:
    scale = oracle.abs().max().clamp(min=1e-30)
    return float(((got.double() - oracle).abs().max() / scale).nan_to_num(nan=float("inf")))


class _CovTrial:
    """Scratch inputs for cov_accumulate: x with a non-zero mean, masked rows, and one NaN row to be counted."""

    def __init__(self, problem: Problem, dtype: torch.dtype, device: torch.device, seed: int) -> None:
        n, d = problem.trial_sizes()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(n, d, generator=gen) * 2.0 + torch.randn(d, generator=gen)
        self.x = in_layout(x.to(device=device, dtype=dtype), problem.layout)
        self.mask = (torch.rand(n, generator=gen) > 0.1).to(device)
        self.mask[0] = True
        self.x_nan = in_layout(self.x.contiguous().clone(), problem.layout)
        self.x_nan[0, d // 2] = float("nan")
        kept = self.x.double() * self.mask[:, None]
        self.oracle = (torch.triu(kept.T @ kept), kept.sum(0))

    def _outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zeroed scratch accumulators (gram, colsum, NaN/Inf row count) for one run."""
        d, device = self.x.shape[1], self.x.device
        return (torch.zeros(d, d, dtype=torch.float64, device=device),
                torch.zeros(d, dtype=torch.float64, device=device), torch.zeros((), dtype=torch.int64, device=device))

    def run(self, kernel: Callable, x: torch.Tensor) -> tuple:
        gram, colsum, bad = self._outputs()
        kernel(x, gram, colsum, bad, self.mask)
        return torch.triu(gram), colsum, bad

    def error(self, kernel: Callable) -> float:
        """The relative error of gram and colsum; raises when NaN/Inf rows are miscounted (none in the finite
        input, exactly one in its copy with a NaN)."""
        gram, colsum, bad = self.run(kernel, self.x)
        if int(bad) != 0:
            raise AssertionError(f"counted {int(bad)} NaN/Inf rows in finite input")
        bad_nan = self.run(kernel, self.x_nan)[2]
        if int(bad_nan) != 1:
            raise AssertionError(f"counted {int(bad_nan)} NaN/Inf rows where exactly 1 row holds a NaN")
        return max(_relative_error(gram, self.oracle[0]), _relative_error(colsum, self.oracle[1]))

    def timed_call(self, kernel: Callable) -> Callable[[], None]:
        outputs = self._outputs()
        return lambda: kernel(self.x, *outputs, None)


class _ProjectedLinearTrial:
    """Scratch inputs for projected_linear: x, an orthonormal basis, weight and bias of the call's sizes."""

    def __init__(self, problem: Problem, dtype: torch.dtype, device: torch.device, seed: int) -> None:
        rows, d_in, k, d_out = problem.trial_sizes()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(d_in, k, generator=gen, dtype=torch.float64))[0]
        tensors = (torch.randn(rows, d_in, generator=gen), basis, torch.randn(d_out, k, generator=gen) / k ** 0.5,
                   torch.randn(d_out, generator=gen))
        x, *rest = (t.to(device=device, dtype=dtype) for t in tensors)
        self.args = (in_layout(x, problem.layout), *rest)
        self.oracle = reference.projected_linear_ref(*(t.double() for t in self.args))

    def error(self, kernel: Callable) -> float:
        return _relative_error(kernel(*self.args), self.oracle)

    def timed_call(self, kernel: Callable) -> Callable[[], None]:
        return lambda: kernel(*self.args)


TRIALS = {"cov_accumulate": _CovTrial, "projected_linear": _ProjectedLinearTrial}


def run_trials(problem: Problem, dtype: torch.dtype, device: torch.device, backends: list[str],
               starting: Optional[Callable[[str], None]] = None,
               report: Optional[Callable[[Outcome], None]] = None) -> list[Outcome]:
    """Verify each backend on scratch inputs of the problem's sizes against float64 and time those that pass.

    The reference backend is run first: its own error in this dtype sets the bar the others must meet.
    ``starting`` is called before and ``report`` after each backend (the trial process streams through them)."""
    trial = TRIALS[problem.op](problem, dtype, device, seed=sum(problem.sizes))
    bar = max(error_floor(problem.op, dtype), 2 * trial.error(get_backend("reference").kernel(problem.op)))
    outcomes = []
    for name in backends:
        if starting is not None:
            starting(name)
        try:
            kernel = get_backend(name).kernel(problem.op)
            err = trial.error(kernel)
            if not err <= bar:
                outcome = Outcome(name, False, error=f"relative error {err:.3g} above the bar {bar:.3g}",
                                  relative_error=err)
            else:
                outcome = Outcome(name, True, seconds=median_seconds(trial.timed_call(kernel), device, WARMUP, REPEATS),
                                  relative_error=err)
        except Exception as error:  # noqa: BLE001 - any failure disqualifies the backend, with its message
            outcome = Outcome(name, False, error=f"{type(error).__name__}: {error}"[:500])
        outcomes.append(outcome)
        if report is not None:
            report(outcome)
    return outcomes

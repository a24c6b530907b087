"""The one place that chooses which backend runs an op call.

Override, strongest first: the op's ``backend=`` argument; the environment variable RMTKD_BACKEND, either one
name for every op (``RMTKD_BACKEND=triton``) or per op (``RMTKD_BACKEND=cov_accumulate=cpu,projected_linear=triton``).
A forced backend that cannot run the call raises ValueError with its reasons; nothing silently falls back.

Automatic choice runs among the backends whose ``auto_devices`` hold the input's device type and that have no
reason against the call; the reference (every device) is always among them. With one candidate that is the
answer; with several, ``tuning`` verifies each against a float64 oracle on the user's hardware and times it, on
the first call of each (device, dtype, size bucket), and the fastest correct one is chosen (remembered in
memory and on disk). A kernel that has never run on a device is therefore never trusted there unchecked.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from rmtkd_kernels.backends.problem import Problem
from rmtkd_kernels.backends.registry import BACKENDS, ENV_VAR, OPS, unsupported_reasons
from rmtkd_kernels.backends import tuning

AUTOTUNE_ENV = "RMTKD_AUTOTUNE"  # "0": automatic choice runs no trials and takes the reference


def _parse_setting(op: str, setting: str) -> Optional[str]:
    """The backend that RMTKD_BACKEND=setting forces for ``op`` (read on every call, parsed once: _resolve)."""
    setting = setting.strip()
    if not setting:
        return None
    if "=" not in setting:
        return setting
    for item in setting.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in OPS:
            raise ValueError(f"{ENV_VAR}: unknown op {name.strip()!r} in {setting!r}; ops are {OPS}")
        if name.strip() == op:
            return value.strip()
    return None


def is_forced(op: str, backend: Optional[str]) -> bool:
    """Whether the call's backend is forced (argument or RMTKD_BACKEND), not chosen automatically."""
    forced = backend or _parse_setting(op, os.environ.get(ENV_VAR, ""))
    return forced is not None and forced != "auto"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def auto_candidates(op: str, device: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends automatic choice tries for ``op`` on ``device`` tensors of ``dtype`` (the reference first)."""
    found = _resolve(op, device, dtype, None, "", _interpreting())
    return (found,) if isinstance(found, str) else found


def report_failure(op: str, x: torch.Tensor, sizes: tuple[int, ...], backend: str, error: BaseException) -> None:
    """An automatically chosen backend raised at run time: it is demoted for this size bucket, with a warning."""
    tuning.TUNER.demote(Problem.of_call(op, x, sizes), x.dtype, x.device, auto_candidates(op, x.device.type, x.dtype),
                 backend, error)
    _forget_memo()  # the memo of exact sizes must not keep the demoted backend


def choose_backend(op: str, x: torch.Tensor, backend: Optional[str] = None,
                   sizes: Optional[tuple[int, ...]] = None) -> str:
    """The backend that runs ``op`` for input x (n, d): the forced one (checked) or the automatic choice.

    ``sizes`` are the call's sizes for tuning: (n, d) for cov_accumulate, (rows, d_in, k, d_out) for
    projected_linear (default: x's rows and width, with k = d_out = d_in)."""
    # Under torch.compile the choice is traced once per graph: the memo would only draw Dynamo warnings.
    compiling = torch.compiler.is_compiling()
    resolve = _resolve.__wrapped__ if compiling else _resolve
    decided = resolve(op, x.device.type, x.dtype, backend, os.environ.get(ENV_VAR, ""), _interpreting())
    if isinstance(decided, str):
        return decided
    if sizes is None:
        rows, width = (x.numel() // x.shape[-1], x.shape[-1]) if x.dim() and x.shape[-1] else (0, 0)
        sizes = (rows, width) if op == "cov_accumulate" else (rows, width, width, width)
    tuning_on = os.environ.get(AUTOTUNE_ENV, "1") != "0"
    key = (op, x.device, x.dtype, sizes, decided) if x.is_contiguous() else None  # other layouts: not memoised
    known = _DECIDED.get(key) if key is not None and tuning_on and not compiling else None
    if known is not None:
        return known
    problem = Problem.of_call(op, x, sizes)
    if compiling or not tuning_on or problem.sizes[0] == 0:
        # No trials inside a traced graph, when the user turned them off, or for an empty call.
        remembered = tuning.TUNER.lookup((op, str(x.device), x.dtype, problem.bucket(), decided)) if compiling else None
        return remembered or "reference"
    choice = tuning.TUNER.choose(problem, x.dtype, x.device, decided)
    if key is None:
        return choice
    if len(_DECIDED) >= 4096:  # exact sizes of calls already decided: the hot path skips the bucket arithmetic
        _DECIDED.clear()
    _DECIDED[key] = choice
    return choice


_DECIDED: dict[tuple, str] = {}


def forget_decisions() -> None:
    """Drop every memoised choice, in memory (after the registry or a decision changed; the disk cache is read
    again on next use)."""
    _resolve.cache_clear()
    _DECIDED.clear()
    tuning.TUNER.forget()


def _forget_memo() -> None:
    """The registry changed: the candidates and their memoised choices are stale."""
    _resolve.cache_clear()
    _DECIDED.clear()


BACKENDS.on_change(_forget_memo)


@functools.lru_cache(maxsize=256)
def _resolve(op: str, device: str, dtype: torch.dtype, backend: Optional[str], setting: str,
             interpreting: bool) -> str | tuple[str, ...]:
    """The forced backend (checked), the only candidate, or the tuple of candidates automatic choice tries.
    Memoised on everything the answer depends on (the call sits on every forward's hot path)."""
    forced = backend or _parse_setting(op, setting)
    probe = torch.empty((0, 0), device="meta", dtype=dtype)
    if forced is not None and forced != "auto":
        reasons = unsupported_reasons(forced, op, probe, device)
        if reasons:
            source = "backend" if backend is not None else ENV_VAR
            raise ValueError(f"{source}: backend {forced!r} cannot run {op} here: " + "; ".join(reasons))
        return forced
    candidates = tuple(b.name for b in BACKENDS.entries()
                       if device in b.auto_devices and b.name != "reference" and not b.reasons(op, device, dtype))
    return ("reference",) + candidates if candidates else "reference"

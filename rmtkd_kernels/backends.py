"""The one place that chooses which backend runs an op.

Backends: ``reference`` (pure torch, the oracle; runs anywhere), ``triton`` (Triton kernels: CUDA, or CPU under
TRITON_INTERPRET=1), ``cuda`` (CUDA C++ in rmtkd_kernels._C), ``cpu`` (C++ CPU in rmtkd_kernels._C).

Override, strongest first: the op's ``backend=`` argument; the environment variable RMTKD_BACKEND, either one
name for every op (``RMTKD_BACKEND=triton``) or per op (``RMTKD_BACKEND=cov_accumulate=cpu,projected_linear=triton``).
A forced backend that cannot run the call raises ValueError with its reasons; nothing silently falls back.

Automatic choice walks AUTO_ORDER for the input's device and takes the first backend with no reason against it.
Decision: a backend enters a device's AUTO_ORDER only after it has run on that hardware and matched the
reference there (the GPU test suite) and won its benchmark (benchmarks/results/). The Triton and CUDA kernels
have so far run only under the Triton interpreter / been compiled, so on CUDA devices the default is still the
reference; force ``triton`` or ``cuda`` to use them.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch

from rmtkd_kernels.extension import EXTENSION

BACKENDS = ("reference", "triton", "cuda", "cpu")
OPS = ("cov_accumulate", "projected_linear")
ENV_VAR = "RMTKD_BACKEND"
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpu", "reference"), "cuda": ("reference",)}
# Above this many rows the fused projected linear recomputes too much; auto mode uses two GEMMs there.
FUSED_MAX_ROWS = 256
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unsupported_reasons(backend: str, op: str, x: torch.Tensor, device: Optional[str] = None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on tensors like x (on ``device``, default x's) (empty list: it can)."""
    reasons: list[str] = []
    device = device or x.device.type
    if backend == "triton":
        if not TRITON_INSTALLED:
            reasons.append("triton is not installed")
        if device == "cpu" and not triton_interpreting():
            reasons.append("Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)")
        elif device not in ("cpu", "cuda"):
            reasons.append(f"Triton kernels do not run on device type {device!r}")
        if x.dtype not in _TRITON_DTYPES:
            reasons.append(f"the Triton kernels take float32/float16/bfloat16, not {x.dtype}")
    elif backend in ("cuda", "cpu"):
        key = backend.upper()
        if not EXTENSION.loaded:
            reasons.append(f"the native extension rmtkd_kernels._C is not built ({EXTENSION.error})")
        elif not EXTENSION.has_kernel(op, key):
            reasons.append(f"rmtkd_kernels._C has no {key} kernel for {op}")
        if device != backend:
            reasons.append(f"the {backend} backend needs {backend} tensors, got {device}")
    elif backend != "reference":
        reasons.append(f"unknown backend {backend!r}; choose from {BACKENDS}")
    return reasons


def _parse_setting(op: str, setting: str) -> Optional[str]:
    """The backend that RMTKD_BACKEND=setting forces for ``op`` (read on every call, parsed once: _choose)."""
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


def choose_backend(op: str, x: torch.Tensor, backend: Optional[str] = None) -> str:
    """The backend that runs ``op`` for input x (..., d): the forced one (checked) or the first able one in
    AUTO_ORDER."""
    # Under torch.compile the choice is traced once per graph: the memo would only draw Dynamo warnings.
    choose = _choose.__wrapped__ if torch.compiler.is_compiling() else _choose
    large = op == "projected_linear" and x.numel() > FUSED_MAX_ROWS * x.shape[-1]  # rows = numel / d
    return choose(op, x.device.type, x.dtype, large, backend, os.environ.get(ENV_VAR, ""), triton_interpreting())


@functools.lru_cache(maxsize=256)
def _choose(op: str, device: str, dtype: torch.dtype, large: bool, backend: Optional[str], setting: str,
            interpreting: bool) -> str:
    """Memoised on everything the answer depends on (one lookup: the call sits on every forward's hot path)."""
    forced = backend or _parse_setting(op, setting)
    probe = torch.empty((0, 0), device="meta", dtype=dtype)
    if forced is not None and forced != "auto":
        reasons = unsupported_reasons(forced, op, probe, device)
        if reasons:
            source = "backend" if backend is not None else ENV_VAR
            raise ValueError(f"{source}: backend {forced!r} cannot run {op} here: " + "; ".join(reasons))
        return forced
    for candidate in AUTO_ORDER.get(device, ()):
        if not (large and candidate != "reference") and not unsupported_reasons(candidate, op, probe, device):
            return candidate
    return "reference"

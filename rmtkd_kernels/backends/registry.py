"""The backend registry and the one place that chooses which backend runs an op.

A backend is one record (:class:`Backend`): its name, the device types and input dtypes it takes, why it cannot
run here (a package or build missing), its kernel per op, and where automatic choice may pick it. Adding a
backend is one file that builds its record and calls :func:`register`.

Override, strongest first: the op's ``backend=`` argument; the environment variable RMTKD_BACKEND, either one
name for every op (``RMTKD_BACKEND=triton``) or per op (``RMTKD_BACKEND=cov_accumulate=cpu,projected_linear=triton``).
A forced backend that cannot run the call raises ValueError with its reasons; nothing silently falls back.

Automatic choice takes, among the backends whose ``auto_devices`` hold the input's device type, the one with the
highest ``priority`` that has no reason against the call; the reference (priority 0, every device) is last.
Decision: a backend enters a device's automatic choice only after it has run on that hardware and matched the
reference there (the GPU test suite) and won its benchmark. The Triton and CUDA kernels have so far run only
under the Triton interpreter / been compiled, so on CUDA devices the default is still the reference; force
``triton`` or ``cuda`` to use them.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

OPS = ("cov_accumulate", "projected_linear")
ENV_VAR = "RMTKD_BACKEND"
# Above this many rows the fused projected linear recomputes too much; auto mode uses two GEMMs there.
FUSED_MAX_ROWS = 256
Kernel = Callable[..., object]


def no_reasons(op: str, device: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Backend:
    """One backend: what it runs on, and its kernel for each op it implements.

    ``kernels`` maps an op name to a loader that returns the kernel (called on first use, so that importing
    rmtkd_kernels never imports triton or touches the native build). ``unavailable(op, device)`` lists why the
    backend cannot run ``op`` on ``device`` in this environment. ``fused`` marks kernels that keep an
    intermediate on chip, which automatic choice avoids for large projected_linear calls.
    """

    name: str
    devices: frozenset[str]
    dtypes: tuple[torch.dtype, ...]
    kernels: Mapping[str, Callable[[], Kernel]]
    unavailable: Callable[[str, str], list[str]] = no_reasons
    auto_devices: frozenset[str] = frozenset()
    priority: int = 0
    fused: bool = True
    _loaded: dict[str, Kernel] = field(default_factory=dict, compare=False, repr=False)

    def kernel(self, op: str) -> Kernel:
        """The backend's implementation of ``op`` (loaded once)."""
        if op not in self._loaded:
            self._loaded[op] = self.kernels[op]()
        return self._loaded[op]

    def reasons(self, op: str, device: str, dtype: torch.dtype) -> list[str]:
        """Why this backend cannot run ``op`` on ``device`` tensors of ``dtype`` (empty: it can)."""
        reasons = list(self.unavailable(op, device))
        if op not in self.kernels:
            reasons.append(f"the {self.name} backend has no kernel for {op}")
        if device not in self.devices:
            reasons.append(f"the {self.name} backend needs {'/'.join(sorted(self.devices))} tensors, got {device}")
        if dtype not in self.dtypes:
            names = "/".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reasons.append(f"the {self.name} backend takes {names}, not {dtype}")
        return reasons


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (replacing one of the same name) and forget earlier automatic choices."""
    _REGISTRY[backend.name] = backend
    _choose.cache_clear()
    return backend


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {name!r}; choose from {backend_names()}")
    return _REGISTRY[name]


def unsupported_reasons(backend: str, op: str, x: torch.Tensor, device: Optional[str] = None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on tensors like x (on ``device``, default x's) (empty list: it can)."""
    if backend not in _REGISTRY:
        return [f"unknown backend {backend!r}; choose from {backend_names()}"]
    return _REGISTRY[backend].reasons(op, device or x.device.type, x.dtype)


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
    """The backend that runs ``op`` for input x (..., d): the forced one (checked) or the automatic choice."""
    # Under torch.compile the choice is traced once per graph: the memo would only draw Dynamo warnings.
    choose = _choose.__wrapped__ if torch.compiler.is_compiling() else _choose
    large = op == "projected_linear" and x.numel() > FUSED_MAX_ROWS * x.shape[-1]  # rows = numel / d
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return choose(op, x.device.type, x.dtype, large, backend, os.environ.get(ENV_VAR, ""), interpreting)


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
    candidates = sorted((b for b in _REGISTRY.values() if device in b.auto_devices), key=lambda b: -b.priority)
    for candidate in candidates:
        if not (large and candidate.fused) and not candidate.reasons(op, device, dtype):
            return candidate.name
    return "reference"

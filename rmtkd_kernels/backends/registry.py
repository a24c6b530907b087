"""The backend registry and the one place that chooses which backend runs an op.

A backend is one record (:class:`Backend`): its name, the device types and input dtypes it takes, why it cannot
run here (a package or build missing), its kernel per op, and where automatic choice may pick it. Adding a
backend is one file that builds its record and calls :func:`register`.

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
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

OPS = ("cov_accumulate", "projected_linear")
ENV_VAR = "RMTKD_BACKEND"
AUTOTUNE_ENV = "RMTKD_AUTOTUNE"  # "0": automatic choice runs no trials and takes the reference
Kernel = Callable[..., object]


def no_reasons(op: str, device: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Backend:
    """One backend: what it runs on, and its kernel for each op it implements.

    ``kernels`` maps an op name to a loader that returns the kernel (called on first use, so that importing
    rmtkd_kernels never imports triton or touches the native build). ``unavailable(op, device)`` lists why the
    backend cannot run ``op`` on ``device`` in this environment; ``auto_devices`` are the device types where
    automatic choice tries it.
    """

    name: str
    devices: frozenset[str]
    dtypes: tuple[torch.dtype, ...]
    kernels: Mapping[str, Callable[[], Kernel]]
    unavailable: Callable[[str, str], list[str]] = no_reasons
    auto_devices: frozenset[str] = frozenset()
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
    forget_decisions()
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


def auto_candidates(op: str, device: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends automatic choice tries for ``op`` on ``device`` tensors of ``dtype`` (the reference first)."""
    found = _resolve(op, device, dtype, None, "", os.environ.get("TRITON_INTERPRET", "0") == "1")
    return (found,) if isinstance(found, str) else found


def report_failure(op: str, x: torch.Tensor, sizes: tuple[int, ...], backend: str, error: BaseException) -> None:
    """An automatically chosen backend raised at run time: it is demoted for this size bucket, with a warning."""
    from rmtkd_kernels.backends.trials import Problem, layout_of
    from rmtkd_kernels.backends.tuning import TUNER

    TUNER.demote(Problem(op, tuple(int(s) for s in sizes), layout_of(x)), x.dtype, x.device,
                 auto_candidates(op, x.device.type, x.dtype), backend, error)


def choose_backend(op: str, x: torch.Tensor, backend: Optional[str] = None,
                   sizes: Optional[tuple[int, ...]] = None) -> str:
    """The backend that runs ``op`` for input x (n, d): the forced one (checked) or the automatic choice.

    ``sizes`` are the call's sizes for tuning: (n, d) for cov_accumulate, (rows, d_in, k, d_out) for
    projected_linear (default: x's rows and width, with k = d_out = d_in)."""
    # Under torch.compile the choice is traced once per graph: the memo would only draw Dynamo warnings.
    compiling = torch.compiler.is_compiling()
    resolve = _resolve.__wrapped__ if compiling else _resolve
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    decided = resolve(op, x.device.type, x.dtype, backend, os.environ.get(ENV_VAR, ""), interpreting)
    if isinstance(decided, str):
        return decided
    if sizes is None:
        rows, width = (x.numel() // x.shape[-1], x.shape[-1]) if x.dim() and x.shape[-1] else (0, 0)
        sizes = (rows, width) if op == "cov_accumulate" else (rows, width, width, width)
    tuning_on = os.environ.get(AUTOTUNE_ENV, "1") != "0"
    contiguous = x.is_contiguous()
    key = (op, x.device, x.dtype, sizes, decided) if contiguous else None  # other layouts: not memoised here
    known = _DECIDED.get(key) if key is not None and tuning_on and not compiling else None
    if known is not None:
        return known
    from rmtkd_kernels.backends.trials import Problem, layout_of
    from rmtkd_kernels.backends.tuning import TUNER

    problem = Problem(op, tuple(int(s) for s in sizes), layout_of(x))
    if compiling or not tuning_on or problem.sizes[0] == 0:
        # No trials inside a traced graph, when the user turned them off, or for an empty call.
        remembered = TUNER.lookup((op, str(x.device), x.dtype, problem.bucket(), decided)) if compiling else None
        return remembered or "reference"
    choice = TUNER.choose(problem, x.dtype, x.device, decided)
    if key is None:
        return choice
    if len(_DECIDED) >= 4096:  # exact sizes of calls already decided: the hot path skips the bucket arithmetic
        _DECIDED.clear()
    _DECIDED[key] = choice
    return choice


_DECIDED: dict[tuple, str] = {}


def forget_decisions() -> None:
    """Drop every memoised choice (after the registry or a decision changed)."""
    _resolve.cache_clear()
    _DECIDED.clear()


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
    candidates = tuple(b.name for b in _REGISTRY.values()
                       if device in b.auto_devices and b.name != "reference" and not b.reasons(op, device, dtype))
    return ("reference",) + candidates if candidates else "reference"

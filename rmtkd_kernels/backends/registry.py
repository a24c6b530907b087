"""The backend registry: one record per backend, and nothing about choosing between them (``chooser`` does).

A backend is one record (:class:`Backend`): its name, the device types and input dtypes it takes, why it cannot
run here (a package or build missing), its kernel per op, and where automatic choice may pick it. Adding a
backend is one file that builds its record and calls :func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

from rmtkd_kernels.registries import Registry

OPS = ("cov_accumulate", "projected_linear")
ENV_VAR = "RMTKD_BACKEND"
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


BACKENDS: Registry[Backend] = Registry("backend", "backend")


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (replacing one of the same name)."""
    return BACKENDS.add(backend.name, backend)


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order."""
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)


def unsupported_reasons(backend: str, op: str, x: torch.Tensor, device: Optional[str] = None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on tensors like x (on ``device``, default x's) (empty list: it can)."""
    if backend not in BACKENDS:
        return [BACKENDS.unknown(backend).removeprefix("backend: ")]
    return BACKENDS.get(backend).reasons(op, device or x.device.type, x.dtype)

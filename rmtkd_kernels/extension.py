"""Loads the native extension rmtkd_kernels._C if it was built; never fails the import when it was not."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class ExtensionInfo:
    loaded: bool
    with_cuda: bool
    error: Optional[str]
    kernels: frozenset[tuple[str, str]] = frozenset()  # (op, dispatch key) pairs registered by the build

    def has_kernel(self, op: str, dispatch_key: str) -> bool:
        """Whether rmtkd_C::<op> has a kernel registered for dispatch_key ("CPU" or "CUDA")."""
        return (op, dispatch_key) in self.kernels


NATIVE_OPS = ("cov_accumulate",)  # projected_linear: reference (cuBLAS) or Triton, see csrc/ops.cpp


def _load() -> ExtensionInfo:
    try:
        from rmtkd_kernels import _C
    except ImportError as error:
        return ExtensionInfo(loaded=False, with_cuda=False, error=str(error))
    kernels = frozenset(
        (op, key) for op in NATIVE_OPS for key in ("CPU", "CUDA")
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"rmtkd_C::{op}", key)
    )
    return ExtensionInfo(loaded=True, with_cuda=bool(_C.compiled_with_cuda()), error=None, kernels=kernels)


EXTENSION = _load()

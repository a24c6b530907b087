"""The native backends of rmtkd_kernels._C: ``cpu`` (C++) and ``cuda`` (CUDA C++), one record each.

The build registers each kernel per dispatch key; a backend offers only the kernels its key has in this build.
"""
from __future__ import annotations

import torch

from rmtkd_kernels.backends.registry import Backend, register
from rmtkd_kernels.extension import EXTENSION, NATIVE_OPS

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The CUDA kernel forms every product on fp32 tensor cores: float64 input would be rounded, so the cuda backend
# does not take it (the reference runs it exactly).
CUDA_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _native_backend(device: str) -> Backend:
    key = device.upper()

    def unavailable(op: str, _device: str) -> list[str]:
        if not EXTENSION.loaded:
            return [f"the native extension rmtkd_kernels._C is not built ({EXTENSION.error})"]
        if op in NATIVE_OPS and not EXTENSION.has_kernel(op, key):
            return [f"rmtkd_kernels._C has no {key} kernel for {op}"]
        return []

    return Backend(
        name=device, devices=frozenset({device}), dtypes=CUDA_INPUT_DTYPES if device == "cuda" else INPUT_DTYPES,
        kernels={op: (lambda op=op: getattr(torch.ops.rmtkd_C, op)) for op in NATIVE_OPS},
        unavailable=unavailable, auto_devices=frozenset({device}),
    )


CUDA = register(_native_backend("cuda"))
CPU = register(_native_backend("cpu"))

"""Shared test helpers: which backends can run here, devices, random inputs in several memory layouts."""
from __future__ import annotations

import pytest
import torch

from rmtkd_kernels.backends import backend_names, unsupported_reasons

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(op: str, device: str) -> list[str]:
    """Every backend that can run ``op`` on ``device`` in this environment (reference always)."""
    probe = torch.empty(1, 1, device=device)
    return [b for b in backend_names() if not unsupported_reasons(b, op, probe)]


def backend_params(op: str) -> list:
    return [pytest.param(device, backend, id=f"{device}-{backend}")
            for device in DEVICES for backend in backends_for(op, device)]


def dtypes_for(backend: str, device: str) -> list[torch.dtype]:
    """Input dtypes to test. bf16 tl.dot is wrong under the Triton CPU interpreter: GPU only there."""
    if backend == "triton" and device == "cpu":
        return [torch.float32, torch.float16]
    return [torch.float32, torch.float16, torch.bfloat16]


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t, stored contiguous, transposed (column-major) or as a strided slice."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        return t.T.contiguous().T
    if layout == "strided":
        wide = torch.randn(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
        wide[:, ::2] = t
        return wide[:, ::2]
    raise ValueError(layout)

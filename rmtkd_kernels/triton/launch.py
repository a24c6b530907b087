"""What every Triton launch needs: the launch made on the input's GPU and its current stream, and how fp32
input is multiplied."""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch


def device_of(x: torch.Tensor) -> ContextManager:
    """Make x's CUDA device the current one for the launch (Triton launches on the current device's current
    stream; a tensor on cuda:1 launched from cuda:0 would be read from the wrong GPU). A no-op on the CPU."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


FP32_PRECISION_ENV = "RMTKD_TRITON_FP32"


def fp32_precision() -> str:
    """How the kernels multiply fp32 input: ``tf32x3`` (three TF32 tensor-core products that recover near-fp32
    accuracy; the default) or exact ``ieee`` FMAs (RMTKD_TRITON_FP32=ieee). Plain TF32 is never used: its 10-bit
    mantissa would fail the verification against the reference."""
    setting = os.environ.get(FP32_PRECISION_ENV, "tf32x3")
    if setting not in ("tf32x3", "ieee"):
        raise ValueError(f"{FP32_PRECISION_ENV}: expected tf32x3 or ieee, got {setting!r}")
    return setting

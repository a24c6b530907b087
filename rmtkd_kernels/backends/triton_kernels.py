"""The Triton backend: rmtkd_kernels/triton/*.py, on CUDA, or on the CPU under TRITON_INTERPRET=1.

Automatic choice tries it on CUDA; on the CPU only when RMTKD_TUNE_INTERPRETER=1 is set at import (the
interpreter is for testing: it is far slower than the CPU backends, and trials would only cost time).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import torch

from rmtkd_kernels.backends.registry import Backend, register

INSTALLED = importlib.util.find_spec("triton") is not None


def _kernel(module: str, fn: str) -> Callable[[], Callable]:
    # Imported on first use: importing triton is slow and must follow TRITON_INTERPRET being set.
    return lambda: getattr(importlib.import_module(f"rmtkd_kernels.triton.{module}"), fn)


def _unavailable(op: str, device: str) -> list[str]:
    if not INSTALLED:
        return ["triton is not installed"]
    if device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return ["Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"]
    return []


TRITON = register(Backend(
    name="triton",
    devices=frozenset({"cpu", "cuda"}),
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    kernels={"cov_accumulate": _kernel("cov_accumulate", "cov_accumulate_triton"),
             "projected_linear": _kernel("projected_linear", "projected_linear_triton")},
    unavailable=_unavailable,
    auto_devices=frozenset({"cuda", "cpu"} if os.environ.get("RMTKD_TUNE_INTERPRETER") == "1" else {"cuda"}),
))

"""What every Triton launch needs: the launch made on the input's GPU and its current stream."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def device_of(x: torch.Tensor) -> ContextManager:
    """Make x's CUDA device the current one for the launch (Triton launches on the current device's current
    stream; a tensor on cuda:1 launched from cuda:0 would be read from the wrong GPU). A no-op on the CPU."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()

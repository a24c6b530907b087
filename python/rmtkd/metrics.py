"""What the loop and the reports measure besides the adapter's metric: parameters, forward FLOPs, latency."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Forward = Callable[[nn.Module, dict], torch.Tensor]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_flops(model: nn.Module, forward: Forward, batch: dict) -> int:
    """FLOPs of one forward over ``batch``, as torch's FlopCounterMode counts them."""
    counter = FlopCounterMode(display=False)
    with counter:
        forward(model, batch)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(model: nn.Module, run: Callable[[nn.Module], object], repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of run(model) in milliseconds, after warm-up (synchronised on CUDA)."""
    model.eval()
    device = next(model.parameters()).device
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)

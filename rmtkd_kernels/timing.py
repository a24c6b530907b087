"""Timing one call on its device: what kernel trials, benchmarks and ``rmtkd compress``'s latency probe use."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def call_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events on a GPU (what the GPU spent), the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median time of one call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(call_seconds(fn, device) for _ in range(repeats))

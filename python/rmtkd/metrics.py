"""What the loop and the reports measure besides the adapter's metric: parameters, forward FLOPs, latency."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rmtkd_kernels.timing import call_seconds

Forward = Callable[[nn.Module, dict], torch.Tensor]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, forward: Forward, batch: dict) -> int:
    """FLOPs of one forward over ``batch``, as torch's FlopCounterMode counts them."""
    return flops_by_module(model, forward, batch)[0]


@torch.no_grad()
def flops_by_module(model: nn.Module, forward: Forward, batch: dict) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward over ``batch``: the total, and each module's (its submodules' included) by name."""
    counter = FlopCounterMode(display=False)
    with counter:
        forward(model, batch)
    root = type(model).__name__ + "."  # the counter names modules from the root's class name
    by_module = {name[len(root):]: sum(counts.values()) for name, counts in counter.get_flop_counts().items()
                 if name.startswith(root)}
    return int(counter.get_total_flops()), by_module


BLOCK_SECONDS = 0.1  # one block of timed calls of one run before the next run's block


def paired_times(runs: dict[str, Callable[[], object]], device: torch.device, min_time: float,
                 min_calls: int = 5) -> dict[str, list[float]]:
    """Seconds of every timed call of each run, timed in alternating blocks (A, B, A, B, …) until each has had
    ``min_time`` seconds, so that a slow stretch of a shared machine falls on all of them alike.

    The first call of each block is not counted: it refills the caches after the other run.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    started = time.perf_counter()
    while min(len(t) for t in times.values()) < min_calls or time.perf_counter() - started < min_time * len(runs):
        for name, run in runs.items():
            run()
            block_started = time.perf_counter()
            while time.perf_counter() - block_started < BLOCK_SECONDS:
                times[name].append(call_seconds(run, device))
    return times


def paired_medians(runs: dict[str, Callable[[], object]], device: torch.device, min_time: float,
                   min_calls: int = 5) -> dict[str, float]:
    """Median seconds per call of each run, from :func:`paired_times`."""
    return {name: statistics.median(t) for name, t in paired_times(runs, device, min_time, min_calls).items()}


@torch.no_grad()
def paired_latency(models: dict[str, nn.Module], run: Callable[[nn.Module], object],
                   min_time: float = 2.0) -> dict[str, object]:
    """Batch latency of each model (in eval mode), as :func:`paired_call_latency` reports it."""
    for model in models.values():
        model.eval()
    device = next(next(iter(models.values())).parameters()).device
    return paired_call_latency({name: (lambda m=model: run(m)) for name, model in models.items()}, device, min_time)


@torch.no_grad()
def paired_call_latency(runs: dict[str, Callable[[], object]], device: torch.device,
                        min_time: float = 2.0) -> dict[str, object]:
    """Latency of each call, measured as the end-to-end benchmark measures it (:func:`paired_times`): per run
    the median and quartiles in milliseconds and the number of calls, and how it was measured."""
    times = paired_times(runs, device, min_time)
    result: dict[str, object] = {
        "method": f"alternating blocks of {BLOCK_SECONDS:g} s per model, >= {min_time:g} s each, median per call"}
    for name, seconds in times.items():
        q1, _, q3 = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else (seconds[0],) * 3
        result[name] = 1e3 * statistics.median(seconds)
        result[f"{name}_quartiles"] = [1e3 * q1, 1e3 * q3]
        result[f"{name}_calls"] = len(seconds)
    return result

"""Baselines in the RMT-KD harness: what the rank rule and the distillation each buy.

- ``weight_svd``: data-free truncated SVD of each site's weights (``Site.weight_basis``) at RMT-KD's per-site ranks.
- ``activation_pca``: the same projections RMT-KD makes (activation eigenvectors, mean folded in, shallow to
  deep with re-calibration) at RMT-KD's ranks, without any distillation.
- ``fixed_fraction_pca``: activation PCA keeping one fraction f of every site's dimension, f chosen so the total
  parameter count matches RMT-KD's; sites where that rank saves nothing are left alone, as in the loop.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from rmtkd.calibration import SelectionConfig, calibrate_and_select
from rmtkd.distributed import SINGLE, Workers
from rmtkd.metrics import count_parameters
from rmtkd.records import Action, Outcome
from rmtkd.surgery import rewrite_site
from rmtkd.task import Task


def compress_at_ranks(task: Task, ranks: dict[str, int], basis: str,
                      progress: Callable[[Iterable, int, str], Iterable] = lambda it, total, desc: it,
                      workers: Workers = SINGLE) -> nn.Module:
    """A copy of task.model with each named site projected to its rank, bases from "weights" or "activations"
    (calibrated on every rank's shard; rank 0's basis is used everywhere)."""
    if basis not in ("weights", "activations"):
        raise ValueError(f"basis: expected 'weights' or 'activations', got {basis!r}")
    model = copy.deepcopy(task.model)
    sites = [s for s in task.sites(model) if s.name in ranks]
    rewritten: set[str] = set()
    for site in sites:
        if rewritten & set(site.names):  # a narrowing Linear is projected on one side only, the first listed
            continue
        rewritten.update(site.names)
        k = ranks[site.name]
        if basis == "weights":
            vectors, mean = site.weight_basis(model, k), torch.zeros(site.dim, dtype=torch.float64)
        else:
            [chosen] = calibrate_and_select(
                model, [site], task.calibration_batches, task.adapter, SelectionConfig(), workers=workers,
                ranks={site.name: k},
                progress=lambda it: progress(it, len(task.calibration_batches), f"calibrating {site.name}"))
            vectors, mean = chosen.selection.basis.float(), chosen.selection.mean
        rewrite_site(model, site, vectors.cpu(), mean.cpu())
    return model.eval()


def fixed_fraction_ranks(task: Task, target_parameters: int) -> dict[str, int]:
    """Per-site ranks ⌈f·d⌉ (only where they save parameters), f bisected to meet target_parameters."""
    model = task.model
    sites = task.sites(model)
    total = count_parameters(model)

    def ranks_for(fraction: float) -> tuple[dict[str, int], int]:
        ranks, params, taken = {}, total, set()
        for site in sites:
            k = max(1, int(round(fraction * site.dim)))
            before, after = site.parameters(model, k)
            if after < before and not taken & set(site.names):
                ranks[site.name] = k
                params += after - before
                taken.update(site.names)
        return ranks, params

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if ranks_for(mid)[1] > target_parameters:
            hi = mid
        else:
            lo = mid
    return ranks_for(lo)[0]


def rmtkd_ranks(report: dict[str, Any]) -> dict[str, int]:
    """Per-site ranks that a finished RMT-KD run kept."""
    return {site["site"]: site["k"] for step in report["steps"] if step["outcome"] == Outcome.KEPT
            for site in step["sites"] if site["action"] == Action.PROJECTED}


def run_baselines(task: Task, report: dict[str, Any],
                  progress: Callable[[Iterable, int, str], Iterable] = lambda it, total, desc: it,
                  group: Optional[Any] = None) -> list[dict]:
    """Rows {method, parameters, <metric>} for the three baselines at RMT-KD's size (over every rank's shard with
    ``group``, as in rmtkd.loop.compress)."""
    workers = Workers(group)
    ranks = rmtkd_ranks(report)
    candidates = {
        "weight_svd (same ranks, no data)": lambda: compress_at_ranks(task, ranks, "weights", workers=workers),
        "activation_pca (same ranks, no distillation)": lambda: compress_at_ranks(
            task, ranks, "activations", progress, workers),
        "fixed_fraction_pca (matched parameters, no distillation)": lambda: compress_at_ranks(
            task, fixed_fraction_ranks(task, report["final"]["parameters"]), "activations", progress, workers),
    }
    rows = []
    metric = task.adapter.metric.name
    for method, make in candidates.items():
        model = make()
        rows.append({"method": method, "parameters": count_parameters(model), metric: task.evaluate(model, workers)})
    return rows

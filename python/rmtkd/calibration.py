"""Calibration: stream the inputs of a model's Linear layers into covariance accumulators.

Linears that read the same tensor (a transformer's query, key and value) form one site with one accumulator:
they will share one projection. Sharing is detected on the first batch by tensor identity, so it works for
any architecture without a table of layer names. Padding tokens are masked out with the batch's attention
mask; nothing but the O(d²) statistics is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from rmtkd.spectral import DesignEffectEstimator
from rmtkd_kernels import CovarianceAccumulator


@dataclass
class LinearSite:
    """Linears that read one input: ``names`` in model order, ``dim`` the input width."""

    names: list[str]
    dim: int
    accumulator: Optional[CovarianceAccumulator] = None
    design_effect: Optional[DesignEffectEstimator] = None
    out_features: int = 0

    @property
    def name(self) -> str:
        """The Linear's name, or for a shared input the common prefix and the members: "a.self.{query,key}"."""
        if len(self.names) == 1:
            return self.names[0]
        parts = [name.split(".") for name in self.names]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        prefix = ".".join(parts[0][:common])
        members = ",".join(".".join(p[common:]) for p in parts)
        return f"{prefix}.{{{members}}}" if prefix else "{" + members + "}"


@dataclass
class Calibration:
    sites: list[LinearSite] = field(default_factory=list)
    batches: int = 0
    sequences: int = 0


def find_linear_sites(model: nn.Module, batch: dict[str, Tensor], forward: Callable[[nn.Module, dict], Any],
                      include: Callable[[str, nn.Linear], bool] = lambda name, module: True) -> list[LinearSite]:
    """Run one batch and group the included Linears by the tensor they read (same storage, shape, strides).

    Every input seen is kept alive until the pass ends, so the allocator cannot hand a freed tensor's memory
    (and data pointer) to a later layer's input.
    """
    seen: dict[tuple, LinearSite] = {}
    alive: list[Tensor] = []
    handles = []

    def recorder(name: str, module: nn.Linear):
        def hook(_module, inputs):
            x = inputs[0]
            alive.append(x)
            key = (x.data_ptr(), tuple(x.shape), x.stride())
            site = seen.setdefault(key, LinearSite(names=[], dim=module.in_features))
            if name not in site.names:
                site.names.append(name)
                site.out_features += module.out_features
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and include(name, module):
            handles.append(module.register_forward_pre_hook(recorder(name, module)))
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("model: no nn.Linear layer was called in a forward pass; nothing to calibrate")
    return list(seen.values())


def calibrate(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    forward: Callable[[nn.Module, dict], Any],
    *,
    include: Callable[[str, nn.Linear], bool] = lambda name, module: True,
    mask_key: Optional[str] = "attention_mask",
    estimate_design_effect: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> Calibration:
    """Stream every batch through the model and accumulate each Linear site's input statistics.

    ``forward(model, batch)`` runs the model; ``batch[mask_key]`` (batch, seq), if present, marks real tokens.
    Inputs of shape (batch, seq, d) feed the design-effect estimator (tokens grouped by sequence) when asked.
    """
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("batches: the calibration set is empty; at least one batch is needed")
    sites = find_linear_sites(model, first, forward, include)
    modules = dict(model.named_modules())
    device = modules[sites[0].names[0]].weight.device
    state: dict[str, Optional[Tensor]] = {"mask": None}
    handles = []
    for site in sites:
        site.accumulator = CovarianceAccumulator(site.dim, device=device)
        if estimate_design_effect:
            site.design_effect = DesignEffectEstimator(site.dim, device=device)

        def hook(_module, inputs, site=site):
            x = inputs[0]
            mask = state["mask"]
            row_mask = mask if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]) else None
            site.accumulator.update(x, row_mask)
            if site.design_effect is not None and x.dim() == 3:
                site.design_effect.update(x, row_mask)

        handles.append(modules[site.names[0]].register_forward_pre_hook(hook))
    calibration = Calibration(sites=sites)
    model_was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(_chain(first, iterator)):
                mask = batch.get(mask_key) if mask_key else None
                state["mask"] = mask.to(device=device, dtype=torch.bool) if mask is not None else None
                forward(model, batch)
                calibration.batches += 1
                calibration.sequences += next(iter(batch.values())).shape[0]
    finally:
        for handle in handles:
            handle.remove()
        model.train(model_was_training)
    return calibration


def _chain(first: dict, rest: Iterable[dict]) -> Iterable[dict]:
    yield first
    yield from rest

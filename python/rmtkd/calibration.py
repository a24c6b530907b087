"""Compression sites and their calibration: stream each site's activations into a covariance accumulator.

A site is what one projection serves:
- ``linear``: the Linears that read one input tensor (a transformer's query, key and value share one);
- ``conv2d``: the (groups = 1) Conv2ds that read one input; spatial positions are samples of C_in channels;
- ``embedding``: one nn.Embedding, calibrated on its output (the table is factorised through that subspace);
- ``linear_output``: one Linear that narrows (d_out < d_in, e.g. a transformer's FFN output), calibrated on its
  output: its input rank is often too high for an input projection to pay, its output rank is not.
Sharing is detected on the first batch by tensor identity, so no table of layer names is needed. Padding tokens
are masked out with the batch's attention mask. Nothing but O(d²) statistics is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional

import torch
from torch import Tensor, nn

from rmtkd.spectral import DesignEffectEstimator
from rmtkd_kernels import CovarianceAccumulator

SiteKind = Literal["linear", "conv2d", "embedding", "linear_output"]
OUTPUT_KINDS = ("embedding", "linear_output")  # sites calibrated on their module's output
Forward = Callable[[nn.Module, dict], Any]
Include = Callable[[str, nn.Module], bool]


@dataclass
class Site:
    """Modules that one projection of a d-dimensional activation serves, in model order."""

    kind: SiteKind
    names: list[str]
    dim: int
    accumulator: Optional[CovarianceAccumulator] = field(default=None, repr=False)
    design_effect: Optional[DesignEffectEstimator] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The module's name, or for a shared input the common prefix and the members: "a.self.{query,key}";
        an output site is "name [output]"."""
        if self.kind == "linear_output":
            return f"{self.names[0]} [output]"
        if len(self.names) == 1:
            return self.names[0]
        parts = [name.split(".") for name in self.names]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        prefix = ".".join(parts[0][:common])
        members = ",".join(".".join(p[common:]) for p in parts)
        return f"{prefix}.{{{members}}}" if prefix else "{" + members + "}"


N_EFF_RULES = ("tokens", "sequences", "design-effect")


def effective_samples(site: Site, how: str, sequences: int) -> Optional[float]:
    """n_eff for the site's selection: None (every token a sample), the sequence count, or tokens / design effect.

    "design-effect" needs the site calibrated with ``estimate_design_effect=True``.
    """
    if how == "tokens":
        return None
    if how == "sequences":
        return float(min(sequences, site.accumulator.count))
    if how == "design-effect" and site.design_effect is not None:
        return site.design_effect.n_eff()
    raise ValueError(f"n_eff: expected one of {N_EFF_RULES} (design-effect only after a calibration that "
                     f"estimated it), got {how!r}")


@dataclass
class Calibration:
    sites: list[Site]
    batches: int = 0
    sequences: int = 0


def _site_kind(module: nn.Module) -> Optional[SiteKind]:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return "conv2d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def _narrows(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.out_features < module.in_features


def _site_dim(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    return module.embedding_dim


def discover_sites(model: nn.Module, batch: dict, forward: Forward, include: Include = lambda n, m: True) -> list[Site]:
    """Run one batch; group included Linears (and Conv2ds) by the tensor they read; embeddings stand alone; a
    narrowing Linear also gets an output site, right after its input site.

    Every input seen is kept alive until the pass ends, so the allocator cannot hand a freed tensor's memory
    (and data pointer) to a later layer's input.
    """
    sites: dict[tuple, Site] = {}
    alive: list[Tensor] = []
    handles = []

    def recorder(name: str, module: nn.Module, kind: SiteKind):
        def hook(_module, inputs):
            if kind == "embedding":
                key: tuple = ("embedding", name)
            else:
                x = inputs[0]
                alive.append(x)
                key = (kind, x.data_ptr(), tuple(x.shape), x.stride())
            site = sites.setdefault(key, Site(kind=kind, names=[], dim=_site_dim(module)))
            if name not in site.names:
                site.names.append(name)
        return hook

    def output_recorder(name: str, module: nn.Module):
        def hook(_module, _inputs, _output):
            sites.setdefault(("linear_output", name), Site(kind="linear_output", names=[name], dim=module.out_features))
        return hook

    for name, module in model.named_modules():
        kind = _site_kind(module)
        if kind is not None and include(name, module):
            handles.append(module.register_forward_pre_hook(recorder(name, module, kind)))
            if _narrows(module):
                handles.append(module.register_forward_hook(output_recorder(name, module)))
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if not sites:
        raise ValueError("model: no compressible layer (nn.Linear, nn.Conv2d with groups=1, nn.Embedding) was "
                         "called in a forward pass; nothing to compress")
    return list(sites.values())


def _rows_and_mask(site: Site, x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """The activation as (..., d) rows and the padding mask over its leading dims, if it applies."""
    if site.kind == "conv2d":
        return x.movedim(1, -1), None
    return x, mask if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]) else None


def calibrate(
    model: nn.Module,
    batches: Iterable[dict],
    forward: Forward,
    sites: list[Site],
    *,
    mask_key: Optional[str] = "attention_mask",
    estimate_design_effect: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> Calibration:
    """Stream every batch through the model into fresh accumulators on ``sites`` (found by discover_sites).

    ``forward(model, batch)`` runs the model; ``batch[mask_key]`` (batch, seq), if present, marks real tokens.
    Activations of shape (batch, seq, d) feed the design-effect estimator (tokens grouped by sequence) if asked.
    """
    modules = dict(model.named_modules())
    state: dict[str, Optional[Tensor]] = {"mask": None}
    handles = []
    for site in sites:
        first = modules[site.names[0]]
        device = first.weight.device
        site.accumulator = CovarianceAccumulator(site.dim, device=device)
        site.design_effect = DesignEffectEstimator(site.dim, device=device) if estimate_design_effect else None

        def observe(x: Tensor, site: Site = site) -> None:
            rows, mask = _rows_and_mask(site, x.detach(), state["mask"])
            site.accumulator.update(rows, mask)
            if site.design_effect is not None and rows.dim() == 3:
                site.design_effect.update(rows, mask)

        if site.kind in OUTPUT_KINDS:
            handles.append(first.register_forward_hook(lambda _m, _i, out, observe=observe: observe(out)))
        else:
            handles.append(first.register_forward_pre_hook(lambda _m, inputs, observe=observe: observe(inputs[0])))
    calibration = Calibration(sites=sites)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches):
                mask = batch.get(mask_key) if mask_key else None
                state["mask"] = mask.to(dtype=torch.bool) if mask is not None else None
                forward(model, batch)
                calibration.batches += 1
                calibration.sequences += len(next(iter(batch.values())))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if calibration.batches == 0:
        raise ValueError("batches: the calibration set is empty; at least one batch is needed")
    return calibration

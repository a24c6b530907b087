"""Model surgery: replace a site's modules by their rank-k projected versions, and rebuild saved rewrites.

What a rewrite does is the site kind's (``rmtkd.sites``): shared parameters (one basis for Q/K/V, one table
for a tied embedding and LM head) are counted once, as ``model.parameters()`` counts them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rmtkd.sites import Site, site_kind


@dataclass(frozen=True)
class Rewrite:
    """What one applied rewrite changed: enough to rebuild the compressed architecture from the original."""

    kind: str
    names: tuple[str, ...]
    dim: int
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Rewrite":
        return cls(kind=data["kind"], names=tuple(data["names"]), dim=int(data["dim"]), rank=int(data["rank"]))


def rewrite_site(model: nn.Module, site: Site, basis: Tensor, mean: Tensor) -> Rewrite:
    """Replace the site's modules in place by their projections onto ``basis`` (d × k), ``mean`` folded in."""
    if basis.dim() != 2 or basis.shape[0] != site.dim or basis.shape[1] < 1:
        raise ValueError(f"basis: expected shape ({site.dim}, k >= 1) for site {site.name}, got {tuple(basis.shape)}")
    if not isinstance(mean, Tensor) or tuple(mean.shape) != (site.dim,):
        got = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
        raise ValueError(f"mean: expected shape ({site.dim},) for site {site.name} (zeros for none), got {got}")
    if not (torch.isfinite(basis).all() and torch.isfinite(mean).all()):
        raise ValueError(f"basis, mean: expected finite values for site {site.name}, got NaN/Inf")
    site.rewrite(model, basis, mean)
    return Rewrite(kind=site.kind, names=tuple(site.names), dim=site.dim, rank=basis.shape[1])


def apply_structure(model: nn.Module, rewrite: Rewrite) -> None:
    """Rebuild a rewrite's module shapes on an uncompressed model (values are loaded afterwards)."""
    site_kind(rewrite.kind)(names=list(rewrite.names), dim=rewrite.dim).rebuild(model, rewrite.rank)

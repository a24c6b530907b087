"""Model surgery: replace a site's modules by their rank-k projected versions, and count what that saves.

A Linear site becomes ProjectedLinear modules sharing one basis Parameter (a transformer's Q/K/V keep one P);
a Conv2d site becomes ProjectedConv2d modules sharing one 1×1 projection; an Embedding becomes a
FactorizedEmbedding. Shared parameters are counted once, as ``model.parameters()`` counts them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from rmtkd.calibration import Site
from rmtkd.layers import FactorizedEmbedding, ProjectedConv2d
from rmtkd_kernels import ProjectedLinear
from rmtkd_kernels.nn import SharedInputProjection


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def site_parameters(model: nn.Module, site: Site, k: int) -> tuple[int, int]:
    """(parameters of the site's modules now, parameters after a rank-k rewrite)."""
    members = [model.get_submodule(name) for name in site.names]
    before = sum(_numel(m) for m in members)
    if site.kind == "linear":
        after = site.dim * k + sum(k * m.out_features + (m.out_features if m.bias is not None else 0) for m in members)
    elif site.kind == "conv2d":
        after = site.dim * k + sum(m.out_channels * (k * m.kernel_size[0] * m.kernel_size[1] + 1) for m in members)
    elif site.kind == "linear_output":
        (linear,) = members
        after = k * (linear.in_features + linear.out_features) + linear.out_features
    else:
        (embedding,) = members
        after = embedding.num_embeddings * k + site.dim * k + site.dim
    return before, after


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


def _install(model: nn.Module, kind: str, names: list[str] | tuple[str, ...], new: list[nn.Module]) -> None:
    """Put the replacements in place; members of one site share its projection parameters."""
    shared = SharedInputProjection() if kind == "linear" and len(new) > 1 else None
    for module in new:
        if kind == "linear":
            module.basis, module.shared_input = new[0].basis, shared
        elif kind == "conv2d":
            module.project = new[0].project
    for name, module in zip(names, new):
        set_submodule(model, name, module)


def rewrite_site(model: nn.Module, site: Site, basis: Tensor, mean: Tensor) -> Rewrite:
    """Replace the site's modules in place by their projections onto ``basis`` (d × k), ``mean`` folded in."""
    if basis.dim() != 2 or basis.shape[0] != site.dim or basis.shape[1] < 1:
        raise ValueError(f"basis: expected shape ({site.dim}, k >= 1) for site {site.name}, got {tuple(basis.shape)}")
    members = [model.get_submodule(name) for name in site.names]
    if site.kind == "linear":
        new = [ProjectedLinear.from_linear(m, basis.to(m.weight.device, m.weight.dtype), mean) for m in members]
    elif site.kind == "conv2d":
        new = [ProjectedConv2d.from_conv(m, basis, mean) for m in members]
    elif site.kind == "linear_output":
        new = [ProjectedLinear.from_linear_output(members[0], basis.to(members[0].weight.device,
                                                                      members[0].weight.dtype), mean)]
    else:
        new = [FactorizedEmbedding.from_embedding(members[0], basis, mean)]
    _install(model, site.kind, site.names, new)
    return Rewrite(kind=site.kind, names=tuple(site.names), dim=site.dim, rank=basis.shape[1])


def apply_structure(model: nn.Module, rewrite: Rewrite) -> None:
    """Rebuild a rewrite's module shapes on an uncompressed model (values are loaded afterwards)."""
    members = [model.get_submodule(name) for name in rewrite.names]
    k = rewrite.rank
    if rewrite.kind == "linear":
        new = [ProjectedLinear(m.in_features, m.out_features, k, bias=m.bias is not None, device=m.weight.device,
                               dtype=m.weight.dtype) for m in members]
    elif rewrite.kind == "linear_output":
        new = [ProjectedLinear(m.in_features, m.out_features, k, device=m.weight.device, dtype=m.weight.dtype)
               for m in members]
    elif rewrite.kind == "conv2d":
        new = [ProjectedConv2d(m, k) for m in members]
    elif rewrite.kind == "embedding":
        e = members[0]
        new = [FactorizedEmbedding(e.num_embeddings, e.embedding_dim, k, e.padding_idx, device=e.weight.device,
                                   dtype=e.weight.dtype)]
    else:
        raise ValueError(f"rewrite.kind: expected linear, linear_output, conv2d or embedding, got {rewrite.kind!r}")
    _install(model, rewrite.kind, rewrite.names, new)

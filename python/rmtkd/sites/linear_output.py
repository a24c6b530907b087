"""A narrowing Linear (d_out < d_in, e.g. a transformer's FFN output) projected on its output side.

Its input rank is often too high for an input projection to pay, its output rank is not: the layer keeps its
output in span(Q) around the output mean. The same module is also a ``linear`` site on its input side; the
loop rewrites whichever side saves more. A narrowing Linear that shares its input with others (grouped-query
attention's key and value) is served by that shared input's site and is not one of these.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmtkd.sites.base import Include, Site, Trace, numel, register_site_kind, set_submodule
from rmtkd.sites.linear_like import as_linear, is_linear_like, linear_shape
from rmtkd_kernels import ProjectedLinear


def _narrows(module: nn.Module) -> bool:
    d_in, d_out = linear_shape(module)
    return d_out < d_in


@register_site_kind
@dataclass
class LinearOutput(Site):
    kind = "linear_output"
    observes = "output"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        readers = Counter(c.input_key for c in trace.called(include, is_linear_like))
        return [cls(names=[c.name], dim=linear_shape(c.module)[1], order=c.order)
                for c in trace.called(include, lambda m: is_linear_like(m) and _narrows(m))
                if readers[c.input_key] == 1 and not trace.is_tied(c.name)]

    @property
    def name(self) -> str:
        return f"{self.names[0]} [output]"

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        (linear,) = self.members(model)
        d_in, d_out = linear_shape(linear)
        return numel(linear), k * (d_in + d_out) + d_out

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        linear = as_linear(self.members(model)[0])
        layer = ProjectedLinear.from_linear_output(linear, basis.to(linear.weight.device, linear.weight.dtype), mean)
        set_submodule(model, self.names[0], layer)

    def rebuild(self, model: nn.Module, k: int) -> None:
        (linear,) = self.members(model)
        set_submodule(model, self.names[0], ProjectedLinear(*linear_shape(linear), k, device=linear.weight.device,
                                                           dtype=linear.weight.dtype))

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        weight = as_linear(self.members(model)[0]).weight.detach().double()
        return torch.linalg.svd(weight, full_matrices=False)[0][:, :k].float()

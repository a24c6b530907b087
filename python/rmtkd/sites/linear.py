"""Linears (nn.Linear, Conv1D) that read one input tensor, projected on that input: one shared basis.

A transformer's query, key and value read one tensor and become ProjectedLinears sharing one basis Parameter
(and, in inference, one ``x @ basis``). Sharing is found by the identity of the tensor the modules read, so no
table of layer names is needed. A Linear whose weight another module also holds (an LM head tied to the
embeddings) is not a site of this kind. The rewrite always has a bias: the mean folded into it,
W (I − P Pᵀ) μ, is one even for a Linear that had none (Llama's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmtkd.sites.base import Include, Site, Trace, group_by_input, numel, register_site_kind, set_submodule
from rmtkd.sites.linear_like import as_linear, is_linear_like, linear_shape
from rmtkd_kernels import ProjectedLinear
from rmtkd_kernels.nn import SharedInputProjection


@register_site_kind
@dataclass
class SharedInputLinear(Site):
    kind = "linear"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        calls = [c for c in trace.called(include, is_linear_like) if not trace.is_tied(c.name)]
        return group_by_input(cls, calls, lambda module: linear_shape(module)[0])

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        members = self.members(model)
        after = self.dim * k + sum((k + 1) * linear_shape(m)[1] for m in members)  # every rewrite has a bias
        return sum(numel(m) for m in members), after

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        self._install(model, [ProjectedLinear.from_linear(as_linear(m), basis.to(m.weight.device, m.weight.dtype), mean)
                              for m in self.members(model)])

    def rebuild(self, model: nn.Module, k: int) -> None:
        self._install(model, [ProjectedLinear(*linear_shape(m), k, device=m.weight.device, dtype=m.weight.dtype)
                              for m in self.members(model)])

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        stacked = torch.cat([as_linear(m).weight.detach() for m in self.members(model)])
        return torch.linalg.svd(stacked.double(), full_matrices=False)[2][:k].T.float()

    def _install(self, model: nn.Module, new: list[ProjectedLinear]) -> None:
        shared = SharedInputProjection() if len(new) > 1 else None
        for name, module in zip(self.names, new):
            module.basis, module.shared_input = new[0].basis, shared
            set_submodule(model, name, module)

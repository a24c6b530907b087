"""Conv2ds (groups = 1) that read one input, projected on their input channels: one shared 1×1 projection.

Spatial positions are samples of the C_in channels. Depthwise and grouped convs have no shared input channels
and are never sites.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmtkd.layers import ProjectedConv2d
from rmtkd.sites.base import Include, Site, Trace, group_by_input, numel, register_site_kind, set_submodule


def _full_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1


@register_site_kind
@dataclass
class SharedInputConv2d(Site):
    kind = "conv2d"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        return group_by_input(cls, trace.called(include, _full_conv), lambda module: module.in_channels)

    def rows(self, observed: Tensor) -> Tensor:
        return observed.movedim(1, -1)

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        members = self.members(model)
        after = self.dim * k + sum(m.out_channels * (k * m.kernel_size[0] * m.kernel_size[1] + 1) for m in members)
        return sum(numel(m) for m in members), after

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        self._install(model, [ProjectedConv2d.from_conv(m, basis, mean) for m in self.members(model)])

    def rebuild(self, model: nn.Module, k: int) -> None:
        self._install(model, [ProjectedConv2d(m, k) for m in self.members(model)])

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        stacked = torch.cat([m.weight.detach().movedim(1, -1).reshape(-1, self.dim) for m in self.members(model)])
        return torch.linalg.svd(stacked.double(), full_matrices=False)[2][:k].T.float()

    def _install(self, model: nn.Module, new: list[ProjectedConv2d]) -> None:
        for name, module in zip(self.names, new):
            module.project = new[0].project
            set_submodule(model, name, module)

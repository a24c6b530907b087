"""An nn.Embedding, calibrated on its output: the table is factorised through the output subspace.

An embedding whose table another module also holds (an LM head tied to it) is a ``tied_embedding`` site instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmtkd.layers import FactorizedEmbedding
from rmtkd.sites.base import Include, Site, Trace, numel, register_site_kind, set_submodule


@register_site_kind
@dataclass
class EmbeddingTable(Site):
    kind = "embedding"
    observes = "output"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        return [cls(names=[c.name], dim=c.module.embedding_dim, order=c.order)
                for c in trace.called(include, lambda m: isinstance(m, nn.Embedding)) if not trace.is_tied(c.name)]

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        (embedding,) = self.members(model)
        return numel(embedding), FactorizedEmbedding.parameter_count(embedding.num_embeddings, self.dim, k)

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        set_submodule(model, self.names[0], FactorizedEmbedding.from_embedding(self.members(model)[0], basis, mean))

    def rebuild(self, model: nn.Module, k: int) -> None:
        set_submodule(model, self.names[0], FactorizedEmbedding.like(self.members(model)[0], k))

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        return table_basis(self.members(model)[0].weight, k)


def table_basis(table: Tensor, k: int) -> Tensor:
    """Top-k right singular vectors (dim × k) of an embedding table: rows live in the output space it is
    factorised through."""
    return torch.linalg.svd(table.detach().double(), full_matrices=False)[2][:k].T.float()

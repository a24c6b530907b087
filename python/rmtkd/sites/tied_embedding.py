"""A token embedding and the LM head tied to it (one table, as GPT-2, and Llama/Qwen2 with tied embeddings, use).

Calibrated on the embedding's output like an ``embedding`` site, the table is factorised through that subspace,
and the head becomes a FactorizedLMHead holding the same factors: the tie stays, the table is counted once, and
with k = d the logits are reproduced. Rewriting only the embedding would untie them and keep the full table in
the head, adding parameters instead of saving them.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rmtkd.layers import FactorizedEmbedding, FactorizedLMHead
from rmtkd.sites.base import Include, Site, Trace, register_site_kind, set_submodule
from rmtkd.sites.embedding import table_basis


def _tied_head(model: nn.Module, trace: Trace, name: str, embedding: nn.Embedding) -> str | None:
    """The Linear among the modules sharing a parameter with the embedding whose weight is its table."""
    for other in trace.shared.get(name, []):
        module = model.get_submodule(other)
        if isinstance(module, nn.Linear) and module.weight is embedding.weight:
            return other
    return None


@register_site_kind
@dataclass
class TiedEmbedding(Site):
    kind = "tied_embedding"
    observes = "output"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        sites = []
        for call in trace.called(include, lambda m: isinstance(m, nn.Embedding)):
            head = _tied_head(model, trace, call.name, call.module)
            if head is not None:
                sites.append(cls(names=[call.name, head], dim=call.module.embedding_dim, order=call.order))
        return sites

    @property
    def name(self) -> str:
        return f"{self.names[0]} (tied to {self.names[1]})"

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        embedding, head = self.members(model)
        bias = head.bias.numel() if head.bias is not None else 0
        after = FactorizedEmbedding.parameter_count(embedding.num_embeddings, self.dim, k) + bias
        return embedding.weight.numel() + bias, after

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        embedding, head = self.members(model)
        self._install(model, FactorizedEmbedding.from_embedding(embedding, basis, mean), head)

    def rebuild(self, model: nn.Module, k: int) -> None:
        embedding, head = self.members(model)
        self._install(model, FactorizedEmbedding.like(embedding, k), head)

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        return table_basis(self.members(model)[0].weight, k)

    def _install(self, model: nn.Module, factorized: FactorizedEmbedding, head: nn.Linear) -> None:
        set_submodule(model, self.names[0], factorized)
        set_submodule(model, self.names[1], FactorizedLMHead(factorized, head.bias))

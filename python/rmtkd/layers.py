"""Compressed replacements for nn.Embedding, a tied LM head and nn.Conv2d (ProjectedLinear lives in rmtkd_kernels.nn).

Both act on the k-dimensional subspace P (d × k, orthonormal columns) that the spectral selection keeps, with
the activation mean μ folded in so that the projection acts on centered activations.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FactorizedEmbedding(nn.Module):
    """Embedding factorised through its output subspace: e(i) = A[i] Pᵀ + c, A = (E − μ) P, c = μ.

    Parameters: ``weight`` A (num_embeddings × k), ``basis`` P (embedding_dim × k), ``offset`` c (embedding_dim).
    ``weight`` keeps nn.Embedding's name so code that ties or inspects ``.weight`` still finds the table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: Optional[int] = None,
                 *, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_embeddings, self.embedding_dim, self.rank, self.padding_idx = (
            num_embeddings, embedding_dim, rank, padding_idx)
        self.weight = nn.Parameter(torch.zeros(num_embeddings, rank, **factory))
        self.basis = nn.Parameter(torch.zeros(embedding_dim, rank, **factory))
        self.offset = nn.Parameter(torch.zeros(embedding_dim, **factory))

    @staticmethod
    def parameter_count(num_embeddings: int, embedding_dim: int, rank: int) -> int:
        return num_embeddings * rank + embedding_dim * rank + embedding_dim

    @classmethod
    def like(cls, embedding: nn.Embedding, rank: int) -> "FactorizedEmbedding":
        """An empty rank-``rank`` factorisation with ``embedding``'s shape, device and dtype (values loaded later)."""
        return cls(embedding.num_embeddings, embedding.embedding_dim, rank, embedding.padding_idx,
                   device=embedding.weight.device, dtype=embedding.weight.dtype)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, basis: Tensor, mean: Tensor) -> "FactorizedEmbedding":
        layer = cls.like(embedding, basis.shape[1])
        table = embedding.weight.detach().double()
        p, mu = basis.detach().double().to(table.device), mean.detach().double().to(table.device)
        with torch.no_grad():
            layer.weight.copy_((table - mu) @ p)
            layer.basis.copy_(p)
            layer.offset.copy_(mu)
        return layer

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, self.padding_idx) @ self.basis.T + self.offset

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, padding_idx={self.padding_idx}"


class FactorizedLMHead(nn.Module):
    """An output head tied to a FactorizedEmbedding: logits = h Êᵀ (+ bias) for the factorised table
    Ê = A Pᵀ + 1 cᵀ, computed as (h P) Aᵀ + h·c without forming Ê.

    It holds the embedding's own Parameters (``weight`` A, ``basis`` P, ``offset`` c), so the tie is kept: one
    table, counted and saved once, trained as one.
    """

    def __init__(self, embedding: FactorizedEmbedding, bias: Optional[nn.Parameter] = None) -> None:
        super().__init__()
        self.weight, self.basis, self.offset = embedding.weight, embedding.basis, embedding.offset
        self.bias = bias

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden @ self.basis, self.weight, self.bias) + (hidden @ self.offset)[..., None]

    def extra_repr(self) -> str:
        return f"in_features={self.basis.shape[0]}, rank={self.basis.shape[1]}, out_features={self.weight.shape[0]}"


class ProjectedConv2d(nn.Module):
    """Conv2d on projected input channels: a 1×1 projection C_in → k (Pᵀ), then the conv with weight W·P.

    The mean's residual W·(μ − P Pᵀ μ) becomes a bias: exact wherever the kernel window lies inside the image,
    approximate at zero-padded borders (there the true conv sees zeros, not μ).
    """

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"conv: expected groups=1 (a depthwise/grouped conv has no shared input channels), "
                             f"got groups={conv.groups}")
        factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.project = nn.Conv2d(conv.in_channels, rank, 1, bias=False, **factory)
        self.conv = nn.Conv2d(rank, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                              bias=True, padding_mode=conv.padding_mode, **factory)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, basis: Tensor, mean: Optional[Tensor] = None) -> "ProjectedConv2d":
        layer = cls(conv, basis.shape[1])
        w = conv.weight.detach().double()
        p = basis.detach().double().to(w.device)
        bias = (conv.bias.detach().double() if conv.bias is not None
                else torch.zeros(conv.out_channels, dtype=torch.float64, device=w.device))
        if mean is not None:
            mu = mean.detach().double().to(w.device)
            bias = bias + torch.einsum("oihw,i->o", w, mu - p @ (p.T @ mu))
        with torch.no_grad():
            layer.project.weight.copy_(p.T[:, :, None, None])
            layer.conv.weight.copy_(torch.einsum("oihw,ik->okhw", w, p))
            layer.conv.bias.copy_(bias)
        return layer

    @property
    def rank(self) -> int:
        return self.project.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.project(x))

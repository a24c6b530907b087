"""Effective sample size of correlated activations (tokens of one sequence are not independent samples).

The MP edge depends on γ = d / n. Tokens of one sequence share context, so n tokens carry fewer than n
independent samples: with n too large the edge is placed too low and correlated noise looks like signal.
Three ways to set n_eff for ``select_subspace(..., n_eff=...)``, from optimistic to conservative:

- the token count (independent tokens; the default);
- ``DesignEffectEstimator`` below: n_eff = n / deff, with the design effect deff measured on the data;
- the number of sequences (every sequence one sample: safe, but the edge then rises and weak signal is lost).

The design effect (Kish) of a group-sampled mean is deff = Var(Σ_t y_gt over a group) / (m · Var(y)): 1 for
independent tokens, m for tokens identical within their group of m. It is measured on r fixed random unit
probes y = uᵀx, streamed as the sums Σ_g S_g², Σ_g m_g S_g, Σ_g m_g², Σ y, Σ y² (S_g = a group's sum), so no
activation is stored; deff = Σ_g (S_g − m_g ȳ)² / Σ (y − ȳ)², averaged over probes. It is a single number for
all directions: directions with stronger within-sequence correlation than the average are still under-corrected.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class DesignEffectEstimator:
    """Streams (groups, tokens, d) activations and estimates deff and n_eff = tokens / deff."""

    def __init__(self, dim: int, probes: int = 8, seed: int = 0, device: Optional[torch.device | str] = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes: expected a positive int, got {probes!r}")
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(dim, probes, generator=generator, dtype=torch.float64)
        self.probes = (directions / directions.norm(dim=0)).to(device)
        self.dim = dim
        self._sums = torch.zeros(4, probes, dtype=torch.float64, device=device)  # Σ_g S_g², Σ_g m_g S_g, Σy, Σy²
        self._group_sizes_sq = 0.0
        self.tokens = 0
        self.groups = 0

    def update(self, x: Tensor, mask: Optional[Tensor] = None) -> None:
        """x: (groups, tokens, d), e.g. (batch, seq, hidden); mask: (groups, tokens) bool, False = padding."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (groups, tokens, {self.dim}), got {shape}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask: expected shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        y = x.detach().to(torch.float64) @ self.probes.to(x.device)  # (groups, tokens, probes)
        keep = torch.ones(x.shape[:2], dtype=torch.float64, device=x.device) if mask is None else mask.to(torch.float64)
        y = y * keep[..., None]
        sizes = keep.sum(1)  # (groups,)
        group_sums = y.sum(1)  # (groups, probes)
        self._sums[0] += (group_sums**2).sum(0).to(self._sums.device)
        self._sums[1] += (sizes[:, None] * group_sums).sum(0).to(self._sums.device)
        self._sums[2] += y.sum((0, 1)).to(self._sums.device)
        self._sums[3] += (y**2).sum((0, 1)).to(self._sums.device)
        self._group_sizes_sq += float((sizes**2).sum())
        self.tokens += int(sizes.sum())
        self.groups += int((sizes > 0).sum())

    def statistics(self) -> Tensor:
        """Everything that adds up across estimators of the same probes, as one float64 vector."""
        counts = torch.tensor([self._group_sizes_sq, self.tokens, self.groups], dtype=torch.float64)
        return torch.cat([self._sums.flatten().cpu(), counts])

    def load_statistics(self, flat: Tensor) -> None:
        """Set the statistics from a vector made by :meth:`statistics` (summed over estimators)."""
        self._sums.copy_(flat[:-3].view_as(self._sums))
        self._group_sizes_sq, tokens, groups = flat[-3:].tolist()
        self.tokens, self.groups = int(round(tokens)), int(round(groups))

    def design_effect(self) -> float:
        """deff >= 1, averaged over the probes."""
        if self.groups < 2 or self.tokens < 3:
            raise ValueError(f"design_effect needs at least 2 groups and 3 tokens, has {self.groups} and {self.tokens}")
        sum_sq_groups, sum_size_group, total, total_sq = self._sums
        mean = total / self.tokens
        between = sum_sq_groups - 2 * mean * sum_size_group + mean**2 * self._group_sizes_sq
        within = total_sq - self.tokens * mean**2
        return max(1.0, float((between / within).mean()))

    def n_eff(self) -> float:
        """Effective number of independent samples: tokens / deff (at least the number of groups)."""
        return max(float(self.groups), self.tokens / self.design_effect())

"""Rank budgets: with a parameter target, choose every site's rank so that the whole model meets it, keeping the
directions that stand highest above their site's noise.

The paper's rule keeps, at each site, the eigen-directions above that site's Marchenko–Pastur edge λ₊, whatever
that costs in total; a target is then met only by tuning τ by hand. A budget starts every site at rank 1 and adds
eigen-directions one at a time, always the strongest left anywhere, strength being λ / λ₊ of the direction's own
site (the spike's height over the noise bulk, the quantity the paper's rule thresholds at 1), until the next one
would break the target. The result is the paper's rule with every site's edge scaled by one common factor, the
factor found from the target instead of by hand. A site whose every rank would cost more parameters than it has
stays dense.

Directions are not weighed by what they cost: on a BERT-family encoder that starves the word embeddings, whose
rank costs ~16× an encoder layer's (variance per parameter, or strength per parameter, give them rank 2–11 of 384
at a 79% target), and the embeddings are where a deep cut loses the most accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class SiteCost:
    """What one site's rank costs: parameters at rank k are ``base + per_rank · k`` (the site has ``dense``
    parameters unprojected); the eigenvalues of its activation covariance (descending) and its noise edge λ₊."""

    name: str
    eigenvalues: np.ndarray
    edge: float
    base: int
    per_rank: int
    dense: int

    def parameters(self, k: int) -> int:
        return self.base + self.per_rank * k

    @property
    def max_rank(self) -> int:
        """The largest rank that still saves parameters (0: none does)."""
        saving = -(-(self.dense - self.base) // self.per_rank) - 1  # largest k with base + per_rank·k < dense
        return int(max(0, min(saving, self.eigenvalues.size)))

    def variance_kept(self, k: int) -> float:
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[:k].sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class RankPlan:
    ranks: dict[str, int]  # site name -> rank; sites absent stay dense
    parameters: int  # total parameters of the model once every planned site has its rank
    target: int  # the most parameters the plan may leave
    strength: Optional[float]  # λ / λ₊ of the weakest direction added (None if none was): the bar the sites clear


def plan_ranks(sites: list[SiteCost], total: int, target: int) -> RankPlan:
    """Ranks for ``sites`` so that a model of ``total`` parameters ends with at most ``target``.

    Raises ValueError when even rank 1 everywhere leaves more than ``target`` parameters.
    """
    plannable = [site for site in sites if site.max_rank >= 1]
    ranks = {site.name: 1 for site in plannable}
    parameters = total - sum(site.dense - site.parameters(1) for site in plannable)
    if parameters > target:
        raise ValueError(f"target_reduction: cannot be met: with every one of the {len(plannable)} sites that can "
                         f"be projected at rank 1, the model keeps {parameters:,} parameters, above the target "
                         f"{target:,}; lower the target (the rest of the model is not compressed)")
    gains = []  # (strength λ / λ₊, site index)
    for index, site in enumerate(plannable):
        strengths = site.eigenvalues[1:site.max_rank] / max(site.edge, 1e-300)
        gains.extend((float(value), index) for value in strengths)
    gains.sort(key=lambda gain: -gain[0])  # stable: a site's directions stay in their order
    closed: set[int] = set()
    strength = None
    for value, index in gains:
        site = plannable[index]
        if index in closed:
            continue
        if parameters + site.per_rank > target:
            closed.add(index)  # every later direction of this site costs as much
            continue
        ranks[site.name] += 1
        parameters += site.per_rank
        strength = value
    return RankPlan(ranks=ranks, parameters=parameters, target=target, strength=strength)

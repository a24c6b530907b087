"""Rank budgets: with a parameter target, choose every site's rank so that the whole model meets it, keeping the
directions that stand highest above their site's noise.

The paper's rule keeps, at each site, the eigen-directions above that site's Marchenko–Pastur edge λ₊, whatever
that costs in total; a target is then met only by tuning τ by hand. A budget starts every site at rank 1 and adds
eigen-directions one at a time, always the strongest left anywhere, strength being λ / λ₊ of the direction's own
site (the spike's height over the noise bulk, the quantity the paper's rule thresholds at 1), until the next one
would break the target. Without a FLOP cap (below) the result is the paper's rule with every site's edge scaled
by one common factor, the factor found from the target instead of by hand. A site whose every rank would cost
more parameters than it has stays dense.

Directions are not weighed by what they cost: on a BERT-family encoder that starves the word embeddings, whose
rank costs ~16× an encoder layer's (variance per parameter, or strength per parameter, give them rank 2–11 of 384
at a 79% target), and the embeddings are where a deep cut loses the most accuracy.

A budget may also cap the forward FLOPs. Every direction then costs FLOPs as well as parameters, and a site is
closed once its next direction would break either cap. Parameters and time part ways at an embedding: its table
is looked up, not multiplied, so an embedding's directions cost many parameters and almost no FLOPs, while an
encoder's cost both. With both caps the encoder stops where the FLOP cap says and the parameters left over go
to the embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class LinearCost:
    """What a site costs at rank k, ``base + per_rank · k``, against ``dense`` unprojected (parameters or FLOPs)."""

    base: int
    per_rank: int
    dense: int

    def at(self, k: int) -> int:
        return self.base + self.per_rank * k

    def saving(self, k: int) -> int:
        return self.dense - self.at(k)


@dataclass(frozen=True)
class SiteCost:
    """One site as the budget sees it: the eigenvalues of its activation covariance (descending), its noise edge
    λ₊, and what its ranks cost in parameters and in forward FLOPs."""

    name: str
    eigenvalues: np.ndarray
    edge: float
    parameters: LinearCost
    flops: LinearCost = LinearCost(0, 0, 0)

    @property
    def max_rank(self) -> int:
        """The largest rank that still saves parameters (0: none does)."""
        cost = self.parameters
        saving = -(-(cost.dense - cost.base) // cost.per_rank) - 1  # largest k with base + per_rank·k < dense
        return int(max(0, min(saving, self.eigenvalues.size)))

    def variance_kept(self, k: int) -> float:
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[:k].sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class Budget:
    """The most parameters a plan may leave, and the most forward FLOPs (None: FLOPs are not capped)."""

    parameters: int
    flops: Optional[int] = None


@dataclass(frozen=True)
class RankPlan:
    ranks: dict[str, int]  # site name -> rank; sites absent stay dense
    parameters: int  # total parameters of the model once every planned site has its rank
    flops: int  # forward FLOPs of that model (as counted for the budget)
    target: Budget
    strength: Optional[float]  # λ / λ₊ of the weakest direction added (None if none was): the bar the sites clear
    flop_price: float = 0.0  # strength charged per whole model's FLOPs a direction costs (0: FLOPs did not bind)


def plan_ranks(sites: list[SiteCost], model: Budget, target: Budget) -> RankPlan:
    """Ranks for ``sites`` so that a model of ``model`` parameters and FLOPs ends within ``target``.

    Raises ValueError when even rank 1 everywhere breaks a cap.
    """
    plannable = [site for site in sites if site.max_rank >= 1]
    parameters = model.parameters - sum(site.parameters.saving(1) for site in plannable)
    flops = (model.flops or 0) - sum(site.flops.saving(1) for site in plannable)
    if parameters > target.parameters:
        raise ValueError(f"target_reduction: cannot be met: with every one of the {len(plannable)} sites that can "
                         f"be projected at rank 1, the model keeps {parameters:,} parameters, above the target "
                         f"{target.parameters:,}; lower the target (the rest of the model is not compressed)")
    if target.flops is not None and flops > target.flops:
        raise ValueError(f"target_flop_reduction: cannot be met: with every one of the {len(plannable)} sites that "
                         f"can be projected at rank 1, a forward takes {flops:,} FLOPs, above the target "
                         f"{target.flops:,}; lower the target (attention products and the rest of the model are "
                         "not compressed)")

    def spend(price: float) -> tuple[RankPlan, bool]:
        return _spend(plannable, Budget(parameters, flops), target, price, model.flops or 1)

    plan, held = spend(0.0)
    if not held:
        return plan
    # The strongest-first plan ran into the FLOP cap: charge every direction a price per FLOP, the lowest that
    # lets the parameter budget be spent without the cap refusing a direction (bisection; the cap still holds).
    strongest = max(float(site.eigenvalues[0]) / max(site.edge, 1e-300) for site in plannable)
    cheapest = min((site.flops.per_rank for site in plannable if site.flops.per_rank > 0), default=1)
    low, high = 0.0, 1e3 * strongest * (model.flops or 1) / cheapest
    plan, held = spend(high)
    if held:
        return plan  # even FLOPs first does not spend the parameters: the cap decides
    for _ in range(60):
        middle = (low + high) / 2
        candidate, held = spend(middle)
        if held:
            low = middle
        else:
            high, plan = middle, candidate
    return plan


def _spend(sites: list[SiteCost], start: Budget, target: Budget, price: float, model_flops: int
           ) -> tuple[RankPlan, bool]:
    """From rank 1 everywhere (``start``: parameters and FLOPs there), add directions in the order of their strength
    less ``price`` × the fraction of the model's FLOPs each costs, while both caps allow; and whether the FLOP cap
    refused a direction the parameter target would have allowed."""
    ranks = {site.name: 1 for site in sites}
    parameters, flops = start.parameters, start.flops or 0
    gains = []  # (strength λ / λ₊ less the price, strength, site index)
    for index, site in enumerate(sites):
        charge = price * site.flops.per_rank / model_flops
        strengths = site.eigenvalues[1:site.max_rank] / max(site.edge, 1e-300)
        gains.extend((float(value) - charge, float(value), index) for value in strengths)
    gains.sort(key=lambda gain: -gain[0])  # stable: a site's directions stay in their order
    closed: set[int] = set()
    strength, held = None, False
    for _, value, index in gains:
        site = sites[index]
        if index in closed:
            continue
        over_parameters = parameters + site.parameters.per_rank > target.parameters
        over_flops = target.flops is not None and flops + site.flops.per_rank > target.flops
        if over_parameters or over_flops:
            closed.add(index)  # every later direction of this site costs as much
            held = held or not over_parameters
            continue
        ranks[site.name] += 1
        parameters += site.parameters.per_rank
        flops += site.flops.per_rank
        strength = value if strength is None else min(strength, value)
    plan = RankPlan(ranks=ranks, parameters=parameters, flops=flops, target=target, strength=strength,
                    flop_price=price)
    return plan, held

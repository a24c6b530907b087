"""Which sites a step rewrites and at what rank: one rewrite per module, the rank budget's plan over the whole
model, and what each site costs in forward FLOPs (the planner itself is :mod:`rmtkd.rank_budget`)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Optional

from torch import nn

from rmtkd.calibration import SelectionConfig, SiteSelection, calibrate_and_select
from rmtkd.distributed import Workers
from rmtkd.metrics import count_parameters, flops_by_module
from rmtkd.rank_budget import Budget, LinearCost, SiteCost, plan_ranks
from rmtkd.records import Action, site_decision
from rmtkd.sites import Site
from rmtkd.task import Task


def one_rewrite_per_module(candidates: list[SiteSelection]) -> list[SiteSelection]:
    """The candidates to rewrite, in their order: where two would rewrite the same module (a narrowing Linear is
    a site on its input side and on its output side), the one that saves more parameters; the other's record
    says why it was not."""
    kept: list[SiteSelection] = []
    for candidate in sorted(candidates, key=lambda c: c.saving, reverse=True):
        winner = next((other for other in kept if set(other.site.names) & set(candidate.site.names)), None)
        if winner is None:
            kept.append(candidate)
            continue
        module = sorted(set(winner.site.names) & set(candidate.site.names))[0]
        site_decision(candidate.record, Action.SKIPPED,
                      f"{module} is projected on its {winner.site.observes} side, which saves more parameters "
                      f"({winner.saving:,} against {candidate.saving:,})")
    kept_ids = {id(candidate) for candidate in kept}
    return [candidate for candidate in candidates if id(candidate) in kept_ids]


def saves_parameters(chosen: SiteSelection) -> bool:
    """Whether projecting the site to its selected rank is a rewrite at all: k > 0 and fewer parameters."""
    return chosen.selection.k > 0 and chosen.saving > 0


def site_flops(model: nn.Module, sites: list[Site], task: Task) -> tuple[int, dict[str, LinearCost]]:
    """The model's forward FLOPs on the first calibration batch, and what each site's modules take of them, dense
    and at any rank: counted, not modelled, on copies rebuilt at ranks 1 and 2 (a FLOP count is linear in the
    rank), so every site kind, stride and table lookup is counted as torch counts it."""
    def counted(rank: Optional[int]) -> tuple[int, dict[str, int]]:
        copied = model if rank is None else copy.deepcopy(model)
        for site in sites if rank is not None else ():
            site.rebuild(copied, rank)
        return flops_by_module(copied, task.adapter.forward, task.calibration_batches[0])

    (total, dense), (_, one), (_, two) = counted(None), counted(1), counted(2)

    def of(counts: dict[str, int], site: Site) -> int:
        return sum(counts.get(name, 0) for name in site.names)

    costs = {}
    for site in sites:
        per_rank = of(two, site) - of(one, site)
        costs[site.name] = LinearCost(of(one, site) - per_rank, per_rank, of(dense, site))
    if sites and not any(cost.per_rank for cost in costs.values()):
        raise ValueError("target_flop_reduction: torch's FLOP counter attributes no FLOPs to the sites' modules in "
                         "this model's forward (is the adapter's forward calling the model itself?); leave the FLOP "
                         "cap unset")
    return total, costs


def _site_cost(model: nn.Module, chosen: SiteSelection, flops: dict[str, LinearCost]) -> SiteCost:
    """What the budget needs to know of a site: its spectrum, noise edge and costs per rank."""
    site = chosen.site
    dense, one = site.parameters(model, 1)
    per_rank = site.parameters(model, 2)[1] - one
    return SiteCost(site.name, chosen.selection.eigenvalues, chosen.selection.edge,
                    LinearCost(one - per_rank, per_rank, dense), flops.get(site.name, LinearCost(0, 0, 0)))


def plan_model_ranks(model: nn.Module, sites: list[Site], task: Task, selection: SelectionConfig,
                     target_reduction: float, target_flop_reduction: Optional[float], workers: Workers,
                     progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, Any]:
    """The rank budget: every site calibrated on the model as it is, the sites the threshold rule would project
    (one per module, as the steps choose), and their ranks planned to meet the targets; JSON-ready, with what the
    rule alone would keep, for the report."""
    selections = calibrate_and_select(model, sites, task.calibration_batches, task.adapter, selection,
                                      workers=workers, progress=progress)
    chosen = one_rewrite_per_module([s for s in selections if saves_parameters(s)])
    capped = target_flop_reduction is not None  # FLOPs are counted (on two copies) only for a FLOP cap
    total_flops, flops = (workers.broadcast(site_flops(model, [c.site for c in chosen], task)) if capped
                          else (None, {}))
    costs = [_site_cost(model, c, flops) for c in chosen]
    rule = {c.site.name: c.selection.k for c in chosen}
    total = count_parameters(model)
    flop_target = int(total_flops * (1 - target_flop_reduction)) if capped else None
    plan = plan_ranks(costs, Budget(total, total_flops), Budget(int(total * (1 - target_reduction)), flop_target))
    planned = []
    for cost in costs:
        if cost.name in plan.ranks:
            k = plan.ranks[cost.name]
            planned.append({"site": cost.name, "d": int(cost.eigenvalues.size), "k": k,
                            "variance_kept": cost.variance_kept(k), "rule_k": rule[cost.name],
                            "rule_variance_kept": cost.variance_kept(rule[cost.name]),
                            "parameters_before": cost.parameters.dense, "parameters_after": cost.parameters.at(k)}
                           | ({"flops_before": cost.flops.dense, "flops_after": cost.flops.at(k)} if capped else {}))
    return {"ranks": plan.ranks, "parameters": plan.parameters, "target": plan.target.parameters,
            "strength": plan.strength, "sites": planned} | (
        {"flops": plan.flops, "flops_before": total_flops, "flop_target": flop_target, "flop_price": plan.flop_price}
        if capped else {})

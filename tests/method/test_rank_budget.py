"""Rank budgets: ranks planned over every site to meet a parameter target, guided by the spectra."""
from __future__ import annotations

import numpy as np
import pytest

from rmtkd.calibration import SelectionConfig
from rmtkd.distill import DistillConfig
from rmtkd.loop import LoopConfig, compress
from rmtkd.metrics import count_parameters, forward_flops
from rmtkd.rank_budget import Budget, LinearCost, SiteCost, plan_ranks
from rmtkd.spectral import select_subspace
from tests.method.test_loop import trained_task


def cost(name: str, eigenvalues, edge: float = 0.5, per_rank: int = 10, dense: int = 1000,
         flops: LinearCost = LinearCost(0, 0, 0)) -> SiteCost:
    return SiteCost(name, np.asarray(eigenvalues, dtype=float), edge=edge,
                    parameters=LinearCost(0, per_rank, dense), flops=flops)


def plan(sites: list[SiteCost], total: int, target: int, flops: int = 0, flop_target=None):
    return plan_ranks(sites, Budget(total, flops), Budget(target, flop_target))


def test_the_budget_keeps_the_directions_that_stand_highest_above_their_own_noise_edge():
    concentrated = cost("concentrated", [10, 1, 0.5, 0.1, 0.1, 0.1], edge=0.4)  # strengths 25, 2.5, 1.25, 0.25
    flat = cost("flat", [1, 1, 1, 1, 1, 1], edge=0.5)  # strength 2 each
    planned = plan([concentrated, flat], total=5000, target=5000 - 2 * 1000 + 5 * 10)
    assert planned.parameters <= planned.target.parameters and planned.parameters == 3000 + 50
    assert planned.ranks == {"concentrated": 2, "flat": 3} and planned.strength == 2.0
    planned = plan([concentrated, flat], total=5000, target=5000 - 2 * 1000 + 9 * 10)
    assert planned.ranks == {"concentrated": 3, "flat": 6} and planned.strength == 1.25  # flat is full at d = 6
    assert plan([flat], total=5000, target=4010).strength is None  # rank 1 only: nothing added


def test_a_direction_that_does_not_fit_leaves_the_rest_of_the_budget_to_cheaper_sites():
    cheap = cost("cheap", [1, 1, 1, 1, 1, 1], per_rank=10)  # strength 2
    expensive = cost("expensive", [4, 4, 4, 4, 4, 4], per_rank=100, dense=10_000)  # strength 8
    planned = plan([cheap, expensive], total=20_000, target=20_000 - 11_000 + 10 * 6 + 100 * 2 - 10)
    assert planned.ranks == {"cheap": 5, "expensive": 2}  # a third expensive rank does not fit; cheap ones do
    assert planned.parameters <= planned.target.parameters


def test_a_flop_cap_stops_the_sites_that_cost_time_and_leaves_the_parameters_to_those_that_do_not():
    # an embedding-like table: many parameters per rank, few FLOPs; an encoder-like layer: both
    table = cost("table", [4] * 20, per_rank=100, dense=10_000, flops=LinearCost(0, 1, 0))  # strength 8
    layer = cost("layer", [8] * 8, per_rank=50, dense=5000, flops=LinearCost(0, 100, 1000))  # strength 16
    total, flops = 20_000, 5000
    free = plan([table, layer], total, target=5800, flops=flops)  # parameters alone
    assert free.ranks == {"table": 4, "layer": 8}
    assert free.flops == flops - 1000 + 1 * 4 + 100 * 8 > 4400 and free.flop_price == 0
    # strongest first, the cap would stop the layer at rank 3 and leave 50 parameters unspent: priced by FLOPs,
    # the layer gives up a direction and the table takes the parameters
    capped = plan([table, layer], total, target=5800, flops=flops, flop_target=4400)
    assert capped.ranks == {"table": 7, "layer": 2} and capped.flop_price > 0
    assert capped.flops == flops - 1000 + 1 * 7 + 100 * 2 <= 4400 and capped.parameters == 5800
    tight = plan([table, layer], total, target=5800, flops=flops, flop_target=4150)  # no price spends it all
    assert tight.ranks == {"table": 7, "layer": 1} and tight.flops <= 4150
    with pytest.raises(ValueError, match="target_flop_reduction: cannot be met: .* rank 1, a forward takes 4,101 "
                                         "FLOPs, above the target 4,000"):
        plan([table, layer], total, target=5800, flops=flops, flop_target=4000)


def test_a_site_with_no_saving_rank_stays_dense_and_an_unreachable_target_is_named():
    tiny = cost("tiny", [1, 1], per_rank=600, dense=1000)  # rank 1 saves, rank 2 would not
    none = cost("none", [1, 1], per_rank=2000, dense=1000)  # no rank saves
    planned = plan([tiny, none], total=3000, target=2600)
    assert planned.ranks == {"tiny": 1} and planned.parameters == 2600
    with pytest.raises(ValueError, match="target_reduction: cannot be met: .* rank 1, the model keeps 2,600 "
                                         "parameters, above the target 2,000"):
        plan([tiny, none], total=3000, target=2000)


def test_a_rank_set_from_outside_keeps_that_many_directions_and_says_so():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 12)) * np.linspace(3, 0.5, 12)
    cov = x.T @ x / 2000
    rule = select_subspace(cov, 2000, noise="quantile", tau=0.5)
    chosen = select_subspace(cov, 2000, noise="quantile", tau=0.5, rank=rule.k + 2)
    assert chosen.k == rule.k + 2 and chosen.basis.shape == (12, rule.k + 2)
    assert chosen.reason.startswith(f"k = {rule.k + 2} of 12: set by the rank budget; by the threshold alone: "
                                    f"k = {rule.k} of 12")
    with pytest.raises(ValueError, match=r"rank: expected a whole number of directions in \[1, d = 12\], got 13"):
        select_subspace(cov, 2000, rank=13)


def test_a_budgeted_run_meets_its_target(tmp_path):
    task = trained_task()
    before = count_parameters(task.model)
    config = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.5), distill=DistillConfig(steps=2, lr=1e-3),
                        target_reduction=0.45, ranks="budget")
    _, report = compress(task, config, tmp_path, log=lambda message: None)
    plan = report["rank_plan"]
    assert report["final"]["parameters"] == plan["parameters"] <= before * 0.55 == pytest.approx(plan["target"], abs=1)
    assert report["parameter_reduction"] >= 0.45
    chosen = {site["site"]: site["k"] for step in report["steps"] for site in step["sites"]
              if site["action"] == "projected"}
    assert chosen == plan["ranks"]
    assert {"k", "rule_k", "variance_kept", "rule_variance_kept", "parameters_after"} <= set(plan["sites"][0])
    rule = LoopConfig(selection=config.selection, distill=config.distill, target_reduction=0.45)
    assert rule.fingerprint() != config.fingerprint()
    with pytest.raises(ValueError, match="ranks: a rank budget is planned to meet target_reduction"):
        LoopConfig(ranks="budget")
    with pytest.raises(ValueError, match="target_reduction: cannot be met"):
        compress(trained_task(), LoopConfig(selection=config.selection, distill=config.distill,
                                            target_reduction=0.99, ranks="budget"), tmp_path / "b",
                 log=lambda message: None)


def test_a_budget_with_a_flop_cap_meets_both_and_counts_the_compressed_model_exactly(tmp_path):
    task = trained_task()
    config = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.5), distill=DistillConfig(steps=2, lr=1e-3),
                        target_reduction=0.3, ranks="budget", target_flop_reduction=0.5)
    model, report = compress(task, config, tmp_path, log=lambda message: None)
    plan = report["rank_plan"]
    before = forward_flops(task.model, task.adapter.forward, task.calibration_batches[0])
    assert plan["flops_before"] == before and plan["flop_target"] == int(before * 0.5)
    # the plan's FLOPs, from copies rebuilt at ranks 1 and 2, are what the compressed model takes
    assert forward_flops(model, task.adapter.forward, task.calibration_batches[0]) == plan["flops"]
    assert plan["flops"] <= plan["flop_target"] and plan["parameters"] <= plan["target"]
    free_model, free = compress(trained_task(), LoopConfig(selection=config.selection, distill=config.distill,
                                                           target_reduction=0.3, ranks="budget"), tmp_path / "free",
                                log=lambda message: None)
    assert "flops" not in free["rank_plan"]  # FLOPs are counted only for a cap
    # the cap, not the parameter target, set these ranks
    assert forward_flops(free_model, task.adapter.forward, task.calibration_batches[0]) > plan["flop_target"]
    assert sum(plan["ranks"].values()) < sum(free["rank_plan"]["ranks"].values())
    assert LoopConfig(**{**config.__dict__, "target_flop_reduction": None}).fingerprint() != config.fingerprint()
    with pytest.raises(ValueError, match="target_flop_reduction: only a rank budget plans for FLOPs"):
        LoopConfig(target_reduction=0.5, target_flop_reduction=0.5)
    with pytest.raises(ValueError, match=r"target_flop_reduction: expected a fraction in \(0, 1\), got 1.5"):
        LoopConfig(target_reduction=0.5, ranks="budget", target_flop_reduction=1.5)
    with pytest.raises(ValueError, match="target_flop_reduction: cannot be met"):
        compress(trained_task(), LoopConfig(selection=config.selection, distill=config.distill, target_reduction=0.3,
                                            ranks="budget", target_flop_reduction=0.99), tmp_path / "b",
                 log=lambda message: None)


def test_site_flops_are_exact_at_every_rank_for_strided_convolutions():
    """The FLOP model the budget plans with (counted at ranks 1 and 2, extrapolated) is what torch counts on a
    CNN whose stages downsample, at a rank it was not counted at."""
    import copy

    import torch

    from rmtkd.adapters.vision import SmallResNet, SmallResNetAdapter
    from rmtkd.batching import image_batches
    from rmtkd.planning import site_flops
    from rmtkd.task import Task

    torch.manual_seed(0)
    batches = image_batches(torch.randn(8, 1, 12, 12), torch.arange(8) % 10, 4)
    task = Task(adapter=SmallResNetAdapter(), model=SmallResNet(widths=(8, 16, 16)).eval(),
                train_batches=lambda step: batches, calibration_batches=batches, eval_batches=batches)
    sites = [site for site in task.sites(task.model) if site.kind == "conv2d"]
    assert len(sites) >= 4
    total, costs = site_flops(task.model, sites, task)
    assert total == forward_flops(task.model, task.adapter.forward, batches[0])
    spatial = {cost.per_rank for cost in costs.values()}
    assert len(spatial) > 1  # sites at different resolutions cost differently per rank
    rebuilt = copy.deepcopy(task.model)
    for site in sites:
        site.rebuild(rebuilt, 5)
    expected = total - sum(costs[site.name].saving(5) for site in sites)
    assert forward_flops(rebuilt, task.adapter.forward, batches[0]) == expected

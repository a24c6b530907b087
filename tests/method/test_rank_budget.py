"""Rank budgets: ranks planned over every site to meet a parameter target, guided by the spectra."""
from __future__ import annotations

import numpy as np
import pytest

from rmtkd.calibration import SelectionConfig
from rmtkd.distill import DistillConfig
from rmtkd.loop import LoopConfig, compress
from rmtkd.metrics import count_parameters
from rmtkd.rank_budget import SiteCost, plan_ranks
from rmtkd.spectral import select_subspace
from tests.method.test_loop import trained_task


def cost(name: str, eigenvalues, edge: float = 0.5, per_rank: int = 10, dense: int = 1000) -> SiteCost:
    return SiteCost(name, np.asarray(eigenvalues, dtype=float), edge=edge, base=0, per_rank=per_rank, dense=dense)


def test_the_budget_keeps_the_directions_that_stand_highest_above_their_own_noise_edge():
    concentrated = cost("concentrated", [10, 1, 0.5, 0.1, 0.1, 0.1], edge=0.4)  # strengths 25, 2.5, 1.25, 0.25
    flat = cost("flat", [1, 1, 1, 1, 1, 1], edge=0.5)  # strength 2 each
    plan = plan_ranks([concentrated, flat], total=5000, target=5000 - 2 * 1000 + 5 * 10)
    assert plan.parameters <= plan.target and plan.parameters == 3000 + 50
    assert plan.ranks == {"concentrated": 2, "flat": 3} and plan.strength == 2.0
    plan = plan_ranks([concentrated, flat], total=5000, target=5000 - 2 * 1000 + 9 * 10)
    assert plan.ranks == {"concentrated": 3, "flat": 6} and plan.strength == 1.25  # flat is full at d = 6
    assert plan_ranks([flat], total=5000, target=4010).strength is None  # rank 1 only: nothing added


def test_a_direction_that_does_not_fit_leaves_the_rest_of_the_budget_to_cheaper_sites():
    cheap = cost("cheap", [1, 1, 1, 1, 1, 1], per_rank=10)  # strength 2
    expensive = cost("expensive", [4, 4, 4, 4, 4, 4], per_rank=100, dense=10_000)  # strength 8
    plan = plan_ranks([cheap, expensive], total=20_000, target=20_000 - 11_000 + 10 * 6 + 100 * 2 - 10)
    assert plan.ranks == {"cheap": 5, "expensive": 2}  # a third expensive rank does not fit; cheap ones do
    assert plan.parameters <= plan.target


def test_a_site_with_no_saving_rank_stays_dense_and_an_unreachable_target_is_named():
    tiny = cost("tiny", [1, 1], per_rank=600, dense=1000)  # rank 1 saves, rank 2 would not
    none = cost("none", [1, 1], per_rank=2000, dense=1000)  # no rank saves
    plan = plan_ranks([tiny, none], total=3000, target=2600)
    assert plan.ranks == {"tiny": 1} and plan.parameters == 2600
    with pytest.raises(ValueError, match="target_reduction: cannot be met: .* rank 1, the model keeps 2,600 "
                                         "parameters, above the target 2,000"):
        plan_ranks([tiny, none], total=3000, target=2000)


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

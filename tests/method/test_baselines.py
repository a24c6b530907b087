"""Baselines at RMT-KD's size: same ranks for SVD and PCA, matched parameters for the fixed fraction."""
import torch

from rmtkd.baselines import compress_at_ranks, fixed_fraction_ranks, rmtkd_ranks, run_baselines
from rmtkd.loop import compress
from rmtkd.metrics import count_parameters
from tests.method.test_loop import CONFIG, logits, trained_task


def test_baselines_match_rmtkd_size(tmp_path):
    task = trained_task()
    _, report = compress(task, CONFIG, tmp_path, log=lambda message: None)
    rows = {row["method"].split(" ")[0]: row for row in run_baselines(task, report)}
    assert rows["weight_svd"]["parameters"] == rows["activation_pca"]["parameters"] == report["final"]["parameters"]
    fixed = rows["fixed_fraction_pca"]["parameters"]
    assert fixed <= report["final"]["parameters"] and fixed > 0.9 * report["final"]["parameters"]
    assert all(0 <= row["accuracy"] <= 1 for row in rows.values())
    assert set(rmtkd_ranks(report)) <= {s.name for s in task.sites(task.model)}


def test_full_rank_weight_svd_reproduces_the_model():
    task = trained_task()
    sites = task.sites(task.model)
    full = compress_at_ranks(task, {s.name: s.dim for s in sites}, "weights")
    batch = task.eval_batches[0]
    torch.testing.assert_close(logits(full, batch), logits(task.model.eval(), batch), rtol=1e-4, atol=1e-4)
    basis = sites[1].weight_basis(task.model, 5)
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), rtol=0, atol=1e-5)


def test_fixed_fraction_ranks_meet_the_target():
    task = trained_task()
    target = int(0.8 * count_parameters(task.model))
    ranks = fixed_fraction_ranks(task, target)
    assert ranks and count_parameters(compress_at_ranks(task, ranks, "weights")) <= target

"""Data-parallel RMT-KD with 2 gloo processes on the CPU against one process on the same data."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rmtkd.attention_relations import AttentionProjections, relation_loss
from rmtkd.calibration import SelectionConfig, calibrate_and_select
from rmtkd.distill import DistillConfig
from rmtkd.distributed import Workers
from rmtkd.loop import LoopConfig, compress
from rmtkd.task import Task
from tests.method.test_loop import make_batches, trained_task

WORLD = 2
CONFIG = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.5), distill=DistillConfig(steps=1, lr=1e-3),
                    granularity="block")
ONE_STEP = LoopConfig(selection=CONFIG.selection, distill=DistillConfig(steps=3, lr=1e-3), target_reduction=0.01)
ONE_STEP_FSDP = LoopConfig(selection=CONFIG.selection, distill=DistillConfig(steps=3, lr=1e-3, sharding="fsdp"),
                           target_reduction=0.01)
ONE_STEP_HIDDEN = LoopConfig(selection=CONFIG.selection, distill=DistillConfig(steps=3, lr=1e-3, mode="hidden"),
                             target_reduction=0.01)
HIDDEN_BLOCKS = "embed|down"  # the test model's block outputs of one width, for the hidden-state term
CALIBRATION, EVALUATION, TRAINING = make_batches(8, 2), make_batches(4, 3), make_batches(8, 100)


def merged(batches: list[dict]) -> list[dict]:
    """Pairs of batches joined: what one process sees where two see one batch each."""
    return [{key: torch.cat([a[key], b[key]]) for key in a} for a, b in zip(batches[::2], batches[1::2])]


def task_for(workers: Workers, dtype: torch.dtype = torch.float32) -> Task:
    """The loop's test task with this rank's shard of every data set (one process: all of it, with each
    distillation batch as large as the ranks' batches together)."""
    task = trained_task()
    task.model.to(dtype)
    task.adapter.hidden_pattern = HIDDEN_BLOCKS
    if not workers.distributed:
        return Task(adapter=task.adapter, model=task.model, train_batches=lambda step: merged(TRAINING),
                    calibration_batches=CALIBRATION, eval_batches=EVALUATION)
    return Task(adapter=task.adapter, model=task.model, train_batches=lambda step: workers.shard(TRAINING),
                calibration_batches=workers.shard(CALIBRATION), eval_batches=workers.shard(EVALUATION))


def selections(task: Task, workers: Workers) -> list[tuple[int, torch.Tensor]]:
    """(k, basis) of every site after calibration on this rank's shard and the statistics' reduction."""
    sites = task.sites(task.model)
    chosen = calibrate_and_select(task.model, sites, task.calibration_batches, task.adapter, CONFIG.selection,
                                  workers=workers)
    return [(c.selection.k, c.selection.basis) for c in chosen]


RELATION_LAYER = AttentionProjections("q", "k", "v", heads=2, kv_heads=2, causal=False)


def relation_batch() -> tuple[dict, dict, torch.Tensor]:
    """Student and teacher projections of 4 sequences (float64) and a mask whose shards hold unequal numbers of
    real tokens (rank 0's two rows 5 of 10, rank 1's 9): the term's normalisation is the global batch's."""
    generator = torch.Generator().manual_seed(3)
    student, teacher = ({name: torch.randn(4, 5, 8, generator=generator, dtype=torch.float64) for name in "qkv"}
                        for _ in range(2))
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:], mask[1, 2:], mask[3, 4] = False, False, False
    return student, teacher, mask


def relation_gradients(workers: Workers, rows: slice) -> tuple[float, list[torch.Tensor]]:
    """The relation term of ``rows`` of :func:`relation_batch` and its gradients by the student's projections."""
    student, teacher, mask = relation_batch()
    student = {name: value[rows].clone().requires_grad_() for name, value in student.items()}
    loss = relation_loss(student, {name: value[rows] for name, value in teacher.items()}, [RELATION_LAYER],
                         mask[rows], workers)
    loss.backward()
    return loss.item(), [student[name].grad for name in "qkv"]


def run(rank: int, scenario: str, folder: str) -> None:
    import torch.distributed as dist

    folder = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'init'}", rank=rank, world_size=WORLD)
    workers = Workers(dist.group.WORLD)
    result: object
    try:
        task = task_for(workers, torch.float64 if scenario.endswith("float64") else torch.float32)
        if scenario.startswith("selections"):
            result = selections(task, workers)
        elif scenario == "relation-gradients":
            result = relation_gradients(workers, slice(2 * rank, 2 * rank + 2))
        elif scenario.startswith("compress"):
            config = {"compress-one-step-float64": ONE_STEP, "compress-fsdp-float64": ONE_STEP_FSDP,
                      "compress-hidden-float64": ONE_STEP_HIDDEN}.get(scenario, CONFIG)
            model, report = compress(task, config, folder / f"out-{rank}", log=lambda m: None, group=dist.group.WORLD)
            outputs = [task.adapter.forward(model, batch) for batch in EVALUATION]
            result = (outputs, report, sorted(p.name for p in (folder / f"out-{rank}").glob("*")))
        else:  # bad input on rank 1 only
            if scenario == "empty-shard" and rank == 1:
                task.calibration_batches = []
            config = CONFIG
            if scenario == "other-tau" and rank == 1:
                config = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.6), distill=CONFIG.distill)
            if scenario == "nan" and rank == 1:
                with torch.no_grad():
                    task.model.embed.weight[5] = float("nan")
                for batch in task.calibration_batches:
                    batch["ids"][:, 0] = 5
            try:
                compress(task, config, folder / f"bad-{rank}", log=lambda m: None, group=dist.group.WORLD)
                result = "no error"
            except ValueError as error:
                result = str(error)
    finally:
        dist.barrier()  # no rank closes its connections while another still reads from them
        dist.destroy_process_group()
    (folder / f"rank-{rank}.pkl").write_bytes(pickle.dumps(result))
    # Leave without the interpreter's teardown: a C++ thread of the finished process group, destroyed during it,
    # now and then aborts the process ("terminate called without an active exception") after its work is done.
    os._exit(0)


def spawn(scenario: str, folder: Path) -> list:
    mp.spawn(run, args=(scenario, str(folder)), nprocs=WORLD, join=True)
    return [pickle.loads((folder / f"rank-{rank}.pkl").read_bytes()) for rank in range(WORLD)]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_ranks_and_bases_equal_one_process(tmp_path, dtype, tolerance):
    """Same ranks; bases equal up to sign. With float64 activations to 1e-8; with fp32 activations to the
    precision the statistics have (fp32 products: a shard's products are rounded apart from the others', ~1e-7
    relative, and eigenvectors carry that, divided by their eigenvalue gaps)."""
    alone = selections(task_for(Workers(), dtype), Workers())
    for ranked in spawn("selections-float64" if dtype == torch.float64 else "selections", tmp_path):
        assert [k for k, _ in ranked] == [k for k, _ in alone]
        for (_, basis), (_, expected) in zip(ranked, alone):
            signs = torch.sign((basis * expected).sum(0))  # eigenvectors are defined up to sign
            assert (basis * signs - expected).abs().max() < tolerance


def test_compress_over_two_processes_writes_once_and_agrees(tmp_path):
    """A whole run: every rank returns the same model and report, only rank 0 writes, and the ranks chosen
    and the metric (summed over the shards) are those of one process on all the data."""
    _, report_alone = compress(task_for(Workers()), CONFIG, tmp_path / "alone", log=lambda m: None)
    (outputs_0, report_0, files_0), (outputs_1, report_1, files_1) = spawn("compress", tmp_path)
    assert report_0 == report_1 and files_1 == [] and {"report.json", "model", "checkpoint"} <= set(files_0)
    assert all(torch.equal(a, b) for a, b in zip(outputs_0, outputs_1))
    assert [s["k"] for step in report_0["steps"] for s in step["sites"]] == [
        s["k"] for step in report_alone["steps"] for s in step["sites"]]
    assert report_0["original"]["accuracy"] == report_alone["original"]["accuracy"]


@pytest.mark.parametrize("scenario,config", [("compress-one-step-float64", ONE_STEP),
                                             ("compress-hidden-float64", ONE_STEP_HIDDEN)])
def test_one_distilled_step_matches_one_process_with_the_same_global_batch(tmp_path, scenario, config):
    """Two ranks with batches of 16 against one process with batches of 32: after the first step (projection +
    3 distillation steps) the two models compute the same outputs to 1e-9, in float64, with the logits-only loss
    and with the hidden-state term (whose normalisation is the global batch's teacher variance). In float64 the
    statistics of two shards add up to one process's to rounding; DDP averages the same gradients in another
    order. (Over many steps the runs drift apart: where eigenvalues nearly coincide, rounding rotates the basis
    within the kept subspace, which leaves the model's function unchanged but not AdamW's per-weight steps.)"""
    alone = task_for(Workers(), torch.float64)
    model_alone, report_alone = compress(alone, config, tmp_path / "alone", log=lambda m: None)
    (outputs_0, report_0, _), _ = spawn(scenario, tmp_path)
    assert len(report_0["steps"]) == len(report_alone["steps"]) == 1
    assert report_0["rewrites"] == report_alone["rewrites"]
    assert report_0["steps"][0]["distillation"]["loss_mean"] == pytest.approx(
        report_alone["steps"][0]["distillation"]["loss_mean"], rel=1e-6)
    for output, batch in zip(outputs_0, EVALUATION):
        torch.testing.assert_close(output, alone.adapter.forward(model_alone, batch), rtol=1e-9, atol=1e-9)


def test_relation_term_over_two_ranks_averages_to_one_process_on_the_whole_batch(tmp_path):
    """What DDP does with the attention-relation term: the mean of the ranks' losses and gradients is one
    process's on the whole batch, with unequal numbers of real tokens in the shards (each rank's share is
    scaled by the global count of real query tokens, not its own)."""
    loss_alone, gradients_alone = relation_gradients(Workers(), slice(None))
    (loss_0, gradients_0), (loss_1, gradients_1) = spawn("relation-gradients", tmp_path)
    assert (loss_0 + loss_1) / WORLD == pytest.approx(loss_alone, rel=1e-12)
    assert loss_0 != pytest.approx(loss_1)  # the shards differ, so equal averages are not a coincidence
    for alone, shard_0, shard_1 in zip(gradients_alone, gradients_0, gradients_1):
        torch.testing.assert_close(torch.cat([shard_0, shard_1]) / WORLD, alone, rtol=1e-12, atol=1e-14)


def test_fsdp_sharded_distillation_matches_one_process(tmp_path):
    """The same step with the student's training sharded by FSDP2 (fully_shard over the 2 gloo ranks)."""
    alone = task_for(Workers(), torch.float64)
    model_alone, _ = compress(alone, ONE_STEP, tmp_path / "alone", log=lambda m: None)
    (outputs_0, report_0, _), (outputs_1, _, _) = spawn("compress-fsdp-float64", tmp_path)
    assert report_0["steps"][0]["outcome"] == "kept"
    for output, other, batch in zip(outputs_0, outputs_1, EVALUATION):
        assert torch.equal(output, other)  # the gathered weights are the same on every rank
        torch.testing.assert_close(output, alone.adapter.forward(model_alone, batch), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scenario,message", [
    ("empty-shard", "rank 1: task.calibration_batches: this process's share of the data is empty"),
    ("other-tau", r"settings \(the loop's fingerprint\) differ across ranks"),
    ("nan", r"site embed: CovarianceAccumulator: \d+ of the \d+ rows passed to update\(\) held NaN or Inf"),
])
def test_bad_input_on_one_rank_stops_every_rank_with_one_error(tmp_path, scenario, message):
    import re

    results = spawn(scenario, tmp_path)
    assert results[0] == results[1] and re.search(message, results[0]), results
    assert not any(p.name.startswith("bad-1") for p in tmp_path.iterdir())

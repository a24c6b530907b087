"""The compression loop on a small model: steps, report, save/load, resume after a crash, rollbacks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rmtkd.adapters import ClassifierAdapter, MetricItems
from rmtkd.calibration import SelectionConfig
from rmtkd.distill import DistillConfig
from rmtkd.distributed import SINGLE
from rmtkd.loop import LoopConfig, compress
from rmtkd.task import Task
from rmtkd.metrics import count_parameters
from rmtkd.persistence import load_compressed

VOCAB, SEQ, D = 64, 10, 32


class Classifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, d: int = D, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / D**0.5 + (mask[:, None, :] - 1) * 1e4
        h = h + torch.softmax(scores, -1) @ self.v(h)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def logits(model, batch):
    return model(batch["ids"], batch["attention_mask"].float())


class ClassifierOnIds(ClassifierAdapter):
    """The adapter of the Classifier above: everything but the head may be compressed."""

    mask_key = "attention_mask"

    def architecture(self, model):
        return {"vocab": model.embed.num_embeddings, "d": model.embed.embedding_dim}

    def build(self, architecture):
        return Classifier(architecture["vocab"], architecture["d"])

    def include(self, name, module):
        return name != "head"

    def forward(self, model, batch):
        return logits(model, batch)


def make_batches(count: int, seed: int, batch: int = 16):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (batch, SEQ), generator=generator)
        lengths = torch.randint(4, SEQ + 1, (batch, 1), generator=generator)
        mask = (torch.arange(SEQ) < lengths).long()
        out.append({"ids": ids, "attention_mask": mask, "labels": ids[:, 0] % 3})
    return out


def trained_task(seed: int = 0) -> Task:
    torch.manual_seed(seed)
    model = Classifier()
    train = make_batches(30, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in train:
        loss = nn.functional.cross_entropy(logits(model, batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Task(adapter=ClassifierOnIds(), model=model, train_batches=lambda step: make_batches(4, 100 + step),
                calibration_batches=make_batches(8, 2), eval_batches=make_batches(4, 3))


CONFIG = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.5),  # aggressive on purpose: small model
                    distill=DistillConfig(steps=5, lr=1e-3))


def test_loop_compresses_reports_and_saves(tmp_path):
    task = trained_task()
    before = count_parameters(task.model)
    model, report = compress(task, CONFIG, tmp_path, log=lambda message: None)
    assert count_parameters(task.model) == before  # the caller's model is untouched
    assert [s["sites"][0]["site"] for s in report["steps"]] == ["embed", "{q,k,v}", "up", "down", "down [output]"]
    kept = [s for s in report["steps"] if s["outcome"] == "kept"]
    assert kept and report["final"]["parameters"] < before and report["parameter_reduction"] > 0
    for step in kept:
        assert step["parameters_after"] < step["parameters_before"] and 0 <= step["accuracy_after"] <= 1
        assert step["distillation"]["steps"] == 5 and step["flops_after"] > 0
        assert all({"k", "d", "sigma2", "edge", "action"} <= set(site) for site in step["sites"])
    assert json.loads((tmp_path / "report.json").read_text())["final"] == report["final"]
    for row in (report["original"], report["final"]):  # every reported accuracy with its 95% interval
        low, high = row["accuracy_interval"]
        assert 0 <= low <= row["accuracy"] <= high <= 1 and high > low
    change = report["changes"]["evaluation"]
    assert change["value"] == pytest.approx(report["accuracy_change"]) and change["level"] == 0.95
    assert change["low"] <= change["value"] <= change["high"]
    loaded, meta = load_compressed(tmp_path / "model", task.adapter.build)
    assert meta["rewrites"] == report["rewrites"] and count_parameters(loaded) == report["final"]["parameters"]
    batch = task.eval_batches[0]
    assert torch.equal(logits(loaded, batch), logits(model.eval(), batch))


def test_resume_after_crash_reaches_the_same_weights(tmp_path):
    uninterrupted = trained_task()
    expected_model, _ = compress(uninterrupted, CONFIG, tmp_path / "a", log=lambda message: None)

    class Crash(Exception):
        pass

    def crash_after_first_step(message: str) -> None:
        if message.startswith("step 2/"):
            raise Crash()

    interrupted = trained_task()
    with pytest.raises(Crash):
        compress(interrupted, CONFIG, tmp_path / "b", log=crash_after_first_step)
    messages = []
    resumed = trained_task()
    resumed_model, _ = compress(resumed, CONFIG, tmp_path / "b", log=messages.append)
    assert messages[0].startswith("resuming after step 2 of 5")
    expected, actual = expected_model.state_dict(), resumed_model.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_accuracy_budget_rolls_back_every_step(tmp_path):
    task = trained_task()
    task.validation_batches = make_batches(2, seed=99)
    before = count_parameters(task.model)
    strict = LoopConfig(selection=CONFIG.selection, distill=CONFIG.distill, max_metric_drop=-1.0)
    messages: list[str] = []
    _, report = compress(task, strict, tmp_path, log=messages.append)
    assert report["final"]["parameters"] == before and report["rewrites"] == []
    tried = [s for s in report["steps"] if s["outcome"] != "nothing to compress"]
    step_lines = [m for m in messages if m.startswith("step ")]
    assert len(step_lines) == len(report["steps"]) and not any("nan" in m for m in step_lines)
    assert sum("accuracy" in m for m in step_lines) == len(tried)  # a step with nothing to compress measures nothing
    assert tried and all(s["outcome"] == "rolled back" and s["why"].startswith("validation accuracy worse by")
                         for s in tried)
    for step in tried:  # each decision says its margin: the change on the slice with its paired interval
        change = step["validation_accuracy_change"]
        assert change["low"] <= change["value"] <= change["high"] and "95% paired interval" in step["why"]
        assert change["value"] == pytest.approx(step["validation_accuracy_after"] -
                                                report["original"]["validation_accuracy"])
    assert "validation_accuracy" in report["original"] and "validation_accuracy" in report["final"]


def test_decisions_are_made_on_the_validation_slice_never_on_the_evaluation_data(tmp_path, monkeypatch):
    """A budget the validation data meets and the evaluation data would not: nothing is rolled back; and a
    decision without validation data is refused, naming it."""
    task = trained_task()
    task.validation_batches = make_batches(2, seed=99)
    seen = []
    real = Task.measure

    def measure(task_, model, workers=SINGLE, batches=None):
        if batches is task_.validation_batches:
            seen.append("validation")
            return MetricItems(np.array([1.0] * 9 + [0.0]), np.ones(10))  # the validation data sees no change
        seen.append("eval")
        items = real(task_, model, workers, batches)
        # after the original, every evaluation example looks wrong
        return items if seen.count("eval") == 1 else MetricItems(np.zeros_like(items.totals), items.counts)
    monkeypatch.setattr(Task, "measure", measure)
    budget = LoopConfig(selection=CONFIG.selection, distill=CONFIG.distill, max_metric_drop=0.01)
    _, report = compress(task, budget, tmp_path / "a", log=lambda message: None)
    assert report["rewrites"] and not any(s["outcome"] == "rolled back" for s in report["steps"])
    assert "validation" in seen and "eval" in seen
    task.validation_batches = []
    with pytest.raises(ValueError, match="task.validation_batches: .*empty .*never on the evaluation data"):
        compress(task, budget, tmp_path / "b", log=lambda message: None)


def test_diverging_distillation_is_rolled_back(tmp_path):
    task = trained_task()
    wild = LoopConfig(selection=CONFIG.selection, distill=DistillConfig(steps=4, lr=1e30, max_grad_norm=1e30))
    model, report = compress(task, wild, tmp_path, log=lambda message: None)
    assert any(s["outcome"] == "rolled back" and s["why"].startswith("distillation loss is")
               for s in report["steps"]), [s["outcome"] for s in report["steps"]]
    assert torch.isfinite(logits(model, task.eval_batches[0])).all()


def test_other_settings_on_the_same_folder_are_refused(tmp_path):
    task = trained_task()
    compress(task, CONFIG, tmp_path, log=lambda message: None)
    other = LoopConfig(selection=CONFIG.selection, distill=DistillConfig(steps=6, lr=1e-3))
    with pytest.raises(ValueError, match="out_dir: .* holds a run with different settings"):
        compress(trained_task(), other, tmp_path, log=lambda message: None)


def test_labels_outside_the_head_are_named():
    with pytest.raises(ValueError, match=r"labels: expected class ids in \[0, 2\]"):
        ClassifierOnIds().distillation_loss(torch.randn(4, 3), torch.randn(4, 3),
                                            {"labels": torch.tensor([0, 1, 3, 2])}, 0.7, 1.0)


def test_bad_calibration_names_the_site(tmp_path):
    task = trained_task()
    with torch.no_grad():
        task.model.embed.weight[5] = float("nan")
    for batch in task.calibration_batches:
        batch["ids"][:, 0] = 5
    with pytest.raises(ValueError, match=r"site embed: CovarianceAccumulator: \d+ of the \d+ rows .* NaN or Inf"):
        compress(task, CONFIG, tmp_path / "nan", log=lambda message: None)
    tiny = trained_task()
    first = tiny.calibration_batches[0]
    tiny.calibration_batches = [{k: v[:1, :1] if v.dim() == 2 else v[:1] for k, v in first.items()}]
    tiny.calibration_batches[0]["attention_mask"][:] = 1
    with pytest.raises(ValueError, match="site embed: .*covariance needs at least 2 samples, has 1"):
        compress(tiny, CONFIG, tmp_path / "tiny", log=lambda message: None)


def test_a_module_claimed_by_both_its_sides_is_rewritten_by_the_larger_saving():
    """A narrowing Linear is a site on its input and on its output side: the side that saves more parameters
    is rewritten (whichever comes first), the other is skipped with both savings; other sites are untouched."""
    from rmtkd.calibration import SiteSelection
    from rmtkd.planning import one_rewrite_per_module
    from rmtkd.sites import LinearOutput, SharedInputLinear

    def candidate(kind: type, names: list[str], before: int, after: int) -> SiteSelection:
        return SiteSelection(kind(names=names, dim=8), None, {"parameters_before": before, "parameters_after": after})

    for input_after, output_after, winner_side in ((428, 117, "output"), (100, 300, "input")):
        qkv = candidate(SharedInputLinear, ["q", "k", "v"], 900, 400)
        input_side = candidate(SharedInputLinear, ["out"], 590, input_after)
        output_side = candidate(LinearOutput, ["out"], 590, output_after)
        kept = one_rewrite_per_module([qkv, input_side, output_side])
        winner, loser = (output_side, input_side) if winner_side == "output" else (input_side, output_side)
        assert len(kept) == 2 and kept[0] is qkv and kept[1] is winner  # in the candidates' order
        savings = sorted((590 - input_after, 590 - output_after), reverse=True)
        assert loser.record["action"] == "skipped"
        assert loser.record["why"] == (f"out is projected on its {winner_side} side, which saves more "
                                       f"parameters ({savings[0]:,} against {savings[1]:,})")
        assert "action" not in winner.record and "action" not in qkv.record


def test_recovery_pass_distills_against_the_original_once(tmp_path, monkeypatch):
    """After the loop, the compressed model is distilled against the original (not the last step's model); the
    pass is recorded, checkpointed, and not repeated on resume; a zero budget is refused."""
    import rmtkd.loop as loop

    task = trained_task()
    teachers = []
    real = loop.distill

    def spying(student, teacher, *args, **kwargs):
        teachers.append(teacher)
        return real(student, teacher, *args, **kwargs)
    monkeypatch.setattr(loop, "distill", spying)
    config = LoopConfig(selection=CONFIG.selection, distill=CONFIG.distill,
                        recovery=DistillConfig(steps=6, lr=1e-3))
    model, report = compress(task, config, tmp_path, log=lambda message: None)
    recovery = report["recovery"]
    assert recovery["steps"] == 6 and recovery["outcome"] == "kept"
    assert recovery["distillation"]["steps"] == 6 and recovery["accuracy_after"] == report["final"]["accuracy"]
    last = teachers[-1]  # the recovery pass's teacher holds the original's weights
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), task.model.state_dict().values()))
    calls = len(teachers)
    messages = []
    _, again = compress(trained_task(), config, tmp_path, log=messages.append)
    assert len(teachers) == calls and again["recovery"] == recovery  # resumed: nothing redone
    with pytest.raises(ValueError, match="recovery: a recovery pass needs at least 1 step, got 0"):
        LoopConfig(recovery=DistillConfig(steps=0))


@pytest.mark.parametrize("score", ["loss", "metric"])
def test_early_stopping_checks_the_validation_slice_never_the_evaluation_data(tmp_path, monkeypatch, score):
    task = trained_task()
    task.validation_batches = make_batches(2, seed=99)
    seen = []
    real_measure, real_loss_sums = Task.measure, task.adapter.loss_sums

    def measure(task_, model, workers=SINGLE, batches=None):
        seen.append(("metric", "validation" if batches is task_.validation_batches else "eval"))
        return real_measure(task_, model, workers, batches)

    def loss_sums(model, batches):
        seen.append(("loss", "validation" if batches is task.validation_batches else "eval"))
        return real_loss_sums(model, batches)
    monkeypatch.setattr(Task, "measure", measure)
    monkeypatch.setattr(task.adapter, "loss_sums", loss_sums)
    stopping = LoopConfig(selection=CONFIG.selection,
                          distill=DistillConfig(steps=4, lr=1e-3, check_every=2, score=score),
                          recovery=DistillConfig(steps=4, lr=1e-3, check_every=2, score=score))
    _, report = compress(task, stopping, tmp_path / "a", log=lambda message: None)
    distilled = [s["distillation"] for s in report["steps"] if "distillation" in s]
    assert distilled and all(d["early_stopping"]["checks"][0]["step"] == 0 for d in distilled)
    stopped = distilled + [report["recovery"]["distillation"]]
    assert all(d["early_stopping"]["score"] == score for d in stopped)
    checks = sum(len(d["early_stopping"]["checks"]) for d in stopped)
    # every check read the validation slice; besides, only the original's and the final model's reported metric
    assert seen.count((score, "validation")) == checks + 2 * (score == "metric")
    assert ("loss", "eval") not in seen and seen.count(("metric", "validation")) == 2 + checks * (score == "metric")
    task.validation_batches = []
    with pytest.raises(ValueError, match="task.validation_batches: .*early stopping decide on held-out training"):
        compress(task, stopping, tmp_path / "b", log=lambda message: None)

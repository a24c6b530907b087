"""Self-distillation's terms and switches: hidden-state matching, warm-up, early stopping on held-out data."""
from __future__ import annotations

import copy

import pytest
import torch

from rmtkd.adapters.base import soft_target_loss
from rmtkd.adapters.hf_common import transformers_offline
from rmtkd.adapters.hf_text import HFSequenceClassifier
from rmtkd.adapters.vision import SmallResNet, SmallResNetAdapter
from rmtkd.distill import DistillConfig, distill
from rmtkd.hidden_states import captured_outputs, hidden_state_loss, unexplained_variance
from rmtkd.training import lr_factor
from tests.method.test_loop import ClassifierOnIds, make_batches, trained_task


def tiny_bert() -> torch.nn.Module:
    transformers = transformers_offline()
    config = transformers.BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=40, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def bert_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (5, 11), generator=generator)
    mask = (torch.arange(11) < torch.tensor([[11], [7], [4], [9], [11]])).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0, 1])}


def hidden_term(student, teacher, adapter, batch) -> torch.Tensor:
    names = adapter.hidden_modules(teacher)
    with captured_outputs(student, names) as s, captured_outputs(teacher, names) as t, torch.no_grad():
        adapter.forward(student, batch)
        adapter.forward(teacher, batch)
        return hidden_state_loss(list(s.values()), list(t.values()),
                                 batch.get(adapter.mask_key) if adapter.mask_key else None)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return other


@pytest.mark.parametrize("kind", ["bert", "resnet"])
def test_each_term_is_zero_for_the_teacher_itself_and_positive_for_another_model(kind):
    if kind == "bert":
        adapter, teacher, batch = HFSequenceClassifier(), tiny_bert(), bert_batch()
        assert adapter.hidden_modules(teacher) == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"]
    else:
        torch.manual_seed(0)
        adapter, teacher = SmallResNetAdapter(), SmallResNet(widths=(4, 6, 8)).eval()
        batch = {"images": torch.randn(6, 1, 12, 12), "labels": torch.arange(6) % 10}
        assert adapter.hidden_modules(teacher) == ["stages.0", "stages.1", "stages.2"]
    same, other = copy.deepcopy(teacher), perturbed(teacher)
    with torch.no_grad():
        target = adapter.forward(teacher, batch)
        assert soft_target_loss(adapter.forward(same, batch), target, 2.0).abs() < 1e-6
        assert soft_target_loss(adapter.forward(other, batch), target, 2.0) > 1e-6
    assert hidden_term(same, teacher, adapter, batch) == 0
    assert hidden_term(other, teacher, adapter, batch) > 1e-4


def test_unexplained_variance_reads_only_real_tokens_and_is_scale_free():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(3, 5, 7, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    student = teacher + 0.1 * torch.randn(3, 5, 7, generator=generator)
    padded = student.clone()
    padded[~mask] = 1e6  # padding positions are not compared
    rows_t, rows_s = teacher[mask].double(), student[mask].double()
    expected = (rows_s - rows_t).pow(2).sum() / (rows_t - rows_t.mean(0)).pow(2).sum()
    assert unexplained_variance(padded, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert unexplained_variance(1e3 * padded, 1e3 * teacher, mask).item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="student: its hidden state has shape"):
        unexplained_variance(teacher[:, :4], teacher)


def test_hidden_mode_needs_an_adapter_that_names_hidden_states():
    task = trained_task()
    config = DistillConfig(steps=2, mode="hidden")
    with pytest.raises(ValueError, match="distillation mode 'hidden': the ClassifierOnIds adapter names no hidden"):
        distill(copy.deepcopy(task.model), task.model, make_batches(2, 5), ClassifierOnIds(), config)


def test_hidden_mode_pulls_block_outputs_back_towards_the_teacher():
    adapter, teacher = HFSequenceClassifier(), tiny_bert()
    student = perturbed(teacher)
    batches = [bert_batch(seed) for seed in range(4)]
    before = hidden_term(student, teacher, adapter, batches[0])
    result = distill(student, teacher, batches, adapter, DistillConfig(steps=30, lr=3e-3, mode="hidden",
                                                                       hidden_weight=5.0, warmup=0.2))
    assert result["steps"] == 30
    assert hidden_term(student, teacher, adapter, batches[0]) < 0.5 * before


def test_warmup_rises_linearly_then_decays():
    assert [round(lr_factor(step, 10, 4), 3) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.833]
    assert lr_factor(0, 10) == 1.0  # no warm-up: the schedule distillation always had
    with pytest.raises(ValueError, match="warmup: expected a fraction"):
        DistillConfig(warmup=1.0)


def test_early_stopping_stops_after_patience_checks_and_keeps_the_best_student():
    task = trained_task()
    student = copy.deepcopy(task.model)
    start = copy.deepcopy(student.state_dict())
    scores = iter([0.5, 0.6, 0.7, 0.8])  # every check after the first is worse: the start is the best
    config = DistillConfig(steps=20, lr=1e-2, check_every=3, patience=2)
    result = distill(student, task.model, make_batches(4, 7), ClassifierOnIds(), config,
                     validate=lambda model: next(scores))
    assert result["steps"] == 6  # stopped at the second check without improvement
    assert result["early_stopping"] == {"score": "loss", "best_step": 0, "checks": [
        {"step": 0, "score": 0.5}, {"step": 3, "score": 0.6}, {"step": 6, "score": 0.7}]}
    assert all(torch.equal(start[k], v) for k, v in student.state_dict().items())
    improving = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    result = distill(student, task.model, make_batches(4, 7), ClassifierOnIds(), config.__class__(
        steps=10, lr=1e-2, check_every=3), validate=lambda model: next(improving))
    assert result["steps"] == 10 and result["early_stopping"]["best_step"] == 10  # the final check is the best
    with pytest.raises(ValueError, match="validate: early stopping"):
        distill(student, task.model, make_batches(4, 7), ClassifierOnIds(), config)
    with pytest.raises(ValueError, match="check_every: early stopping .* FSDP"):
        DistillConfig(check_every=5, sharding="fsdp")


def test_the_loss_early_stopping_watches_is_the_task_loss_per_item():
    """A classifier's validation loss is its cross-entropy per example (against a float64 formula), a language
    model's the sums its perplexity is made of; an adapter without one is named."""
    from rmtkd.adapters.base import ModelAdapter
    from rmtkd.distributed import SINGLE

    task = trained_task()
    batches = make_batches(3, seed=5, batch=7)
    total, count = task.adapter.loss_sums(task.model, batches)
    with torch.no_grad():
        logits = torch.cat([task.adapter.forward(task.model, b) for b in batches]).double()
    labels = torch.cat([b["labels"] for b in batches])
    expected = -torch.log_softmax(logits, -1)[torch.arange(21), labels].sum()
    assert count == 21 and total == pytest.approx(float(expected), rel=1e-5)
    task.validation_batches = batches
    assert task.validation_score(SINGLE, "loss")(task.model) == pytest.approx(float(expected) / 21, rel=1e-5)
    accuracy = float((logits.argmax(-1) == labels).double().mean())
    assert task.validation_score(SINGLE, "metric")(task.model) == pytest.approx(-accuracy)

    class NoLoss(ClassifierOnIds):
        loss_sums = ModelAdapter.loss_sums
    with pytest.raises(ValueError, match="early stopping score 'loss': the NoLoss adapter does not compute a "
                                         "validation loss"):
        NoLoss().loss_sums(task.model, batches)
    with pytest.raises(ValueError, match="score: expected one of"):
        DistillConfig(score="accuracy")


def test_every_distillation_setting_is_part_of_the_run_fingerprint():
    """One fingerprint policy: any setting that differs makes another run, equal settings the same one."""
    from rmtkd.loop import LoopConfig

    plain = LoopConfig(distill=DistillConfig(steps=5))
    assert LoopConfig(distill=DistillConfig(steps=5)).fingerprint() == plain.fingerprint()
    for changed in (DistillConfig(steps=5, score="metric"), DistillConfig(steps=5, check_every=2),
                    DistillConfig(steps=5, mode="hidden"), DistillConfig(steps=5, warmup=0.1),
                    DistillConfig(steps=5, mode="relations"),
                    DistillConfig(steps=5, mode="relations", relation_weight=0.5)):
        assert LoopConfig(distill=changed).fingerprint() != plain.fingerprint(), changed
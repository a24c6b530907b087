"""Attention-relation distillation: the term against a float64 formula, zero for the teacher itself and positive
for another model (BERT, Llama with grouped key/value heads, GPT-2's fused projection), the mode switched on by
name and refused, named, where an adapter names no attention layers."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from rmtkd.adapters import HFCausalLM, HFSequenceClassifier
from rmtkd.adapters.hf_common import transformers_offline
from rmtkd.attention_relations import AttentionProjections, relation_loss
from rmtkd.distill import DistillConfig, distill
from rmtkd.hidden_states import captured_outputs
from tests.method.test_distill_modes import bert_batch, perturbed, tiny_bert
from tests.method.test_loop import ClassifierOnIds, make_batches, trained_task
from tests.tiny_lm import tiny_config


def reference(student: torch.Tensor, teacher: torch.Tensor, heads: int, mask: torch.Tensor, causal: bool) -> float:
    """KL(teacher relation ‖ student relation) in float64, one query row at a time, averaged over real rows."""
    total, rows = 0.0, 0
    width = student.shape[-1] // heads
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            if not mask[b, i]:
                continue
            keys = [j for j in range(student.shape[1]) if (mask[b, j] and (not causal or j <= i)) or j == i]
            kl = 0.0
            for h in range(heads):
                part = slice(h * width, (h + 1) * width)
                def relation(x):
                    x = x[b, :, part].double()
                    return torch.softmax(x[keys] @ x[i] / math.sqrt(width), 0)
                p, q = relation(teacher), relation(student)
                kl += float((p * (p.log() - q.log())).sum())
            total, rows = total + kl / heads, rows + 1
    return total / rows


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relation_term_matches_a_float64_formula(causal, dtype):
    generator = torch.Generator().manual_seed(3)
    shape = (3, 7, 12)  # odd token count, 3 heads of 4
    q_t, k_t, v_t = (torch.randn(shape, generator=generator) for _ in range(3))
    q_s, k_s, v_s = (t + 0.3 * torch.randn(shape, generator=generator) for t in (q_t, k_t, v_t))
    mask = torch.arange(7) < torch.tensor([[7], [5], [2]])
    layer = AttentionProjections("q", "k", "v", heads=3, kv_heads=3, causal=causal)
    student = {"q": q_s.to(dtype), "k": k_s.to(dtype).transpose(0, 1).contiguous().transpose(0, 1), "v": v_s.to(dtype)}
    teacher = {"q": q_t.to(dtype), "k": k_t.to(dtype), "v": v_t.to(dtype)}
    got = float(relation_loss(student, teacher, [layer], mask.long()))
    expected = sum(reference(s.float(), t.float(), 3, mask, causal) for s, t in
                   zip(student.values(), teacher.values())) / 3
    assert got == pytest.approx(expected, rel=1e-4 if dtype == torch.float32 else 2e-2)
    assert float(relation_loss(teacher, teacher, [layer], mask.long())) == pytest.approx(0.0, abs=1e-6)


def relation_term(student, teacher, adapter, batch) -> torch.Tensor:
    layers = adapter.attention_layers(teacher)
    names = [n for layer in layers for n in layer.names()]
    with captured_outputs(student, names) as s, captured_outputs(teacher, names) as t, torch.no_grad():
        adapter.forward(student, batch)
        adapter.forward(teacher, batch)
        return relation_loss(s, t, layers, batch["attention_mask"])


def tiny_lm(family: str):
    torch.manual_seed(0)
    return transformers_offline().AutoModelForCausalLM.from_config(tiny_config(family, 50)).eval()


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_relation_term_is_zero_for_the_teacher_itself_and_positive_for_another_model(family):
    if family == "bert":
        adapter, teacher, batch = HFSequenceClassifier(), tiny_bert(), bert_batch()
        expected = [("bert.encoder.layer.0.attention.self.query", 2, 2)]
    else:
        adapter, teacher = HFCausalLM(), tiny_lm(family)
        batch = {"input_ids": torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1)),
                 "attention_mask": (torch.arange(9) < torch.tensor([[9], [6], [3]])).long()}
        expected = ([("model.layers.0.self_attn.q_proj", 4, 2)] if family == "llama"
                    else [("transformer.h.0.attn.c_attn", 2, 2)])
    layers = adapter.attention_layers(teacher)
    assert len(layers) == 2 and [(layers[0].query, layers[0].heads, layers[0].kv_heads)] == expected
    assert all(layer.causal == (family != "bert") for layer in layers)
    assert relation_term(copy.deepcopy(teacher), teacher, adapter, batch) == pytest.approx(0.0, abs=1e-6)
    assert relation_term(perturbed(teacher), teacher, adapter, batch) > 1e-5


def test_relations_mode_trains_and_is_refused_where_the_adapter_names_no_attention():
    adapter, teacher = HFSequenceClassifier(), tiny_bert()
    student = perturbed(teacher)
    batches = [bert_batch(seed) for seed in range(3)]
    before = relation_term(student, teacher, adapter, batches[0])
    result = distill(student, teacher, batches, adapter, DistillConfig(steps=20, lr=3e-3, mode="relations"))
    assert result["steps"] == 20 and math.isfinite(result["loss_last"])
    assert relation_term(student, teacher, adapter, batches[0]) < before
    task = trained_task()

    class HiddenOnly(ClassifierOnIds):
        hidden_pattern = "embed"
    with pytest.raises(ValueError, match="distillation mode 'relations': the HiddenOnly adapter names no attention "
                                         "layers"):
        distill(copy.deepcopy(task.model), task.model, make_batches(2, 5), HiddenOnly(),
                DistillConfig(steps=2, mode="relations"))
    with pytest.raises(ValueError, match="relation_weight: expected a positive weight"):
        DistillConfig(mode="relations", relation_weight=0.0)

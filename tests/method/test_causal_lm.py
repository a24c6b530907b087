"""Decoder language models (GPT-2, Llama, Mistral, Qwen2 layouts): sites, exact full-rank rewrites, the tied
embedding/LM head, the next-token losses and perplexity, and the whole loop with save/load."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rmtkd.adapters import HFCausalLM
from rmtkd.calibration import SelectionConfig, calibrate, discover_sites
from rmtkd.distill import DistillConfig
from rmtkd.layers import FactorizedEmbedding, FactorizedLMHead
from rmtkd.loop import LoopConfig, compress
from rmtkd.task import Task
from rmtkd.metrics import count_parameters
from rmtkd.persistence import load_compressed
from rmtkd.surgery import rewrite_site
from tests.tiny_lm import tiny_config

VOCAB, SEQ = 97, 16
FAMILIES = [("gpt2", True), ("llama", True), ("llama", False), ("mistral", False), ("qwen2", True)]


def tiny_model(family: str, tied: bool = True):
    from rmtkd.adapters.hf_common import transformers_offline

    torch.manual_seed(0)
    return transformers_offline().AutoModelForCausalLM.from_config(tiny_config(family, VOCAB, tied)).eval()


def token_batches(count: int, seed: int, batch: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (batch, SEQ), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def token_embeddings(model):
    return model.get_input_embeddings()


@pytest.mark.parametrize("family,tied", FAMILIES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in FAMILIES])
def test_sites_of_a_decoder(family, tied):
    model, adapter = tiny_model(family, tied), HFCausalLM()
    sites = discover_sites(model, token_batches(1, 0)[0], adapter.forward, adapter.include)
    kinds = [(site.kind, site.names) for site in sites]
    prefix = "transformer.h.0" if family == "gpt2" else "model.layers.0"
    embedding = "transformer.wte" if family == "gpt2" else "model.embed_tokens"
    assert kinds[0] == (("tied_embedding", [embedding, "lm_head"]) if tied else ("embedding", [embedding]))
    if family == "gpt2":  # Conv1D layers; the MLP output narrows 128 → 32
        expected = [("linear", [f"{prefix}.attn.c_attn"]), ("linear", [f"{prefix}.attn.c_proj"]),
                    ("linear", [f"{prefix}.mlp.c_fc"]), ("linear", [f"{prefix}.mlp.c_proj"]),
                    ("linear_output", [f"{prefix}.mlp.c_proj"])]
    else:  # grouped-query k/v narrow too, but share q's input: no output sites for them
        expected = [("linear", [f"{prefix}.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj")]),
                    ("linear", [f"{prefix}.self_attn.o_proj"]),
                    ("linear", [f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"]),
                    ("linear", [f"{prefix}.mlp.down_proj"]), ("linear_output", [f"{prefix}.mlp.down_proj"])]
    assert kinds[1:6] == expected and len(sites) == 1 + 2 * 5
    assert "lm_head" not in {name for site in sites[1:] for name in site.names}  # untied heads are left alone
    assert {adapter.block_of(site) for site in sites} == {"embeddings", prefix[:-2] + ".0", prefix[:-2] + ".1"}


@pytest.mark.parametrize("family,tied", FAMILIES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in FAMILIES])
def test_full_rank_everywhere_reproduces_the_logits(family, tied):
    """With k = d at every site (one side of each narrowing Linear) the compressed model is the original."""
    model, adapter = tiny_model(family, tied), HFCausalLM()
    batches = token_batches(6, 1)
    reference = adapter.forward(model, batches[0])
    sites = discover_sites(model, batches[0], adapter.forward, adapter.include)
    calibration = calibrate(model, batches, adapter.forward, sites, mask_key=adapter.mask_key)
    rewritten: set[str] = set()
    for site in sites:
        if rewritten & set(site.names):
            continue
        rewritten |= set(site.names)
        basis = torch.linalg.eigh(calibration.of(site).accumulator.covariance())[1].flip(1).float()
        rewrite_site(model, site, basis, calibration.of(site).accumulator.mean())
    torch.testing.assert_close(adapter.forward(model, batches[0]), reference, rtol=1e-4, atol=2e-5)


def test_the_tied_embedding_and_head_stay_one_table():
    model, adapter = tiny_model("llama", tied=True), HFCausalLM()
    batches = token_batches(6, 2)
    site = discover_sites(model, batches[0], adapter.forward, adapter.include)[0]
    calibration = calibrate(model, batches, adapter.forward, [site], mask_key=adapter.mask_key)
    before, after = site.parameters(model, 8)
    total = count_parameters(model)
    basis = torch.linalg.eigh(calibration.of(site).accumulator.covariance())[1][:, -8:].flip(1).float()
    rewrite_site(model, site, basis, calibration.of(site).accumulator.mean())
    embedding, head = model.model.embed_tokens, model.lm_head
    assert isinstance(embedding, FactorizedEmbedding) and isinstance(head, FactorizedLMHead)
    assert head.weight is embedding.weight and head.basis is embedding.basis and head.offset is embedding.offset
    assert (before, after) == (VOCAB * 32, VOCAB * 8 + 32 * 8 + 32)
    assert count_parameters(model) == total - before + after  # the table is counted once
    # the head computes h Êᵀ with the embedding's own (factorised) table Ê
    hidden = torch.randn(3, 32)
    table = embedding(torch.arange(VOCAB))
    torch.testing.assert_close(head(hidden), hidden @ table.T, rtol=1e-5, atol=1e-5)
    # one optimizer step moves both: they are one set of parameters
    model.train()
    adapter.task_loss(adapter.forward(model, batches[1]), batches[1]).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.testing.assert_close(head(hidden), hidden @ embedding(torch.arange(VOCAB)).T, rtol=1e-5, atol=1e-5)


def test_next_token_losses_and_perplexity():
    model, adapter = tiny_model("gpt2"), HFCausalLM()
    batch = token_batches(1, 3)[0]
    batch["attention_mask"][:, -5:] = 0  # padding: its positions predict nothing
    logits = adapter.forward(model, batch)
    keep = batch["attention_mask"][:, 1:].bool()
    expected = F.cross_entropy(logits[:, :-1][keep], batch["input_ids"][:, 1:][keep])
    torch.testing.assert_close(adapter.task_loss(logits, batch), expected)
    assert adapter.evaluate(model, [batch]) == pytest.approx(math.exp(expected.item()), rel=1e-5)
    # against itself the soft term vanishes: the loss is α·CE
    assert adapter.distillation_loss(logits, logits, batch, 0.3, 2.0).item() == pytest.approx(
        0.3 * expected.item(), rel=1e-5)
    uniform = torch.zeros_like(logits)
    assert adapter.distillation_loss(logits, uniform, batch, 0.0, 1.0) > 0
    assert math.isclose(adapter.evaluate(tiny_model("gpt2"), [batch]), adapter.evaluate(model, [batch]))
    with pytest.raises(ValueError, match="batches: the evaluation data holds nothing to measure perplexity on"):
        adapter.evaluate(model, [{**batch, "attention_mask": torch.zeros_like(batch["attention_mask"])}])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_loop_compresses_a_decoder_and_the_saved_model_reloads(tmp_path, family):
    model, adapter = tiny_model(family), HFCausalLM()
    task = Task(adapter=adapter, model=model, train_batches=lambda step: token_batches(3, 100 + step),
                calibration_batches=token_batches(8, 4), eval_batches=token_batches(2, 5))
    config = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.6), distill=DistillConfig(steps=3, lr=1e-3),
                        granularity="block")
    compressed, report = compress(task, config, tmp_path, log=lambda message: None)
    assert report["metric"] == {"name": "perplexity", "higher_is_better": False, "percent": False,
                                "exponential": True}
    assert report["final"]["parameters"] < report["original"]["parameters"]
    assert [step["outcome"] for step in report["steps"]] == ["kept"] * 3  # embeddings, layer 0, layer 1
    assert all(step["perplexity_after"] > 0 for step in report["steps"])
    kinds = {rewrite["kind"] for rewrite in report["rewrites"]}
    assert "tied_embedding" in kinds and "linear" in kinds
    loaded, meta = load_compressed(tmp_path / "model", adapter.build)
    assert meta["architecture"]["adapter"] == "hf-causal-lm"
    assert count_parameters(loaded) == report["final"]["parameters"]
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    batch = task.eval_batches[0]
    torch.testing.assert_close(adapter.forward(loaded, batch), adapter.forward(compressed.eval(), batch))
    assert adapter.evaluate(loaded, task.eval_batches) == pytest.approx(report["final"]["perplexity"], rel=1e-6)

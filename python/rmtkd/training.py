"""Plain supervised training of a model on its adapter's task loss: the teacher RMT-KD starts from (a fine-tuned
classification head, a CNN or a small language model trained from scratch)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from rmtkd.adapters.behaviour import ModelBehaviour


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: Literal["linear", "cosine"] = "linear"  # decay to 0 after the warm-up
    warmup_steps: int = 0  # linear warm-up from 0
    max_grad_norm: float | None = 1.0  # None: no clipping

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected at least 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule: expected 'linear' or 'cosine', got {self.schedule!r}")


def lr_factor(step: int, total: int, warmup_steps: int = 0, schedule: str = "linear") -> float:
    """The learning-rate multiplier at ``step`` of ``total``: linear warm-up from 0 over ``warmup_steps``, then
    linear or cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


def train(model: nn.Module, adapter: ModelBehaviour, batches: list[dict], config: TrainConfig,
          progress: Callable[[Iterable, int], Iterable] = lambda it, total: it) -> list[float]:
    """AdamW on ``adapter.task_loss`` for ``config.epochs`` passes over ``batches``; returns the losses."""
    total = config.epochs * len(batches)
    if total == 0:
        raise ValueError("batches: the training set is empty")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config.warmup_steps,
                                                                                     config.schedule))
    model.train()
    losses = []
    for batch in progress((b for _ in range(config.epochs) for b in batches), total):
        loss = adapter.task_loss(adapter.forward(model, batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme) learnt from ``texts``, with ``<|endoftext|>`` as its end-of-text
    and padding token, as a transformers PreTrainedTokenizerFast: what a language model trained from scratch on
    a corpus needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from rmtkd.adapters.hf_common import transformers_offline

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return transformers_offline().PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT,
                                                          bos_token=END_OF_TEXT, pad_token=END_OF_TEXT)

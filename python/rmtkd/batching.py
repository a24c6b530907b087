"""Examples into batches: the dicts of tensors that the built-in adapters' ``forward`` reads.

Text classifiers read tokenised ``input_ids``/``attention_mask`` (+ ``labels``), language models rows of
token ids, CNNs ``images`` (+ ``labels``). Each maker keeps the order or shuffles it by a seed, so that every
step of a run draws its own, reproducible, batches.
"""
from __future__ import annotations

import random
from typing import Any, Optional, Sequence

import torch
from torch import Tensor


def _order(count: int, shuffle_seed: Optional[int]) -> list[int]:
    order = list(range(count))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    return order


def text_batches(tokenizer: Any, texts: list[str], labels: Optional[list[int]], batch_size: int, max_len: int,
                 shuffle_seed: Optional[int] = None, limit: Optional[int] = None) -> list[dict[str, Tensor]]:
    """Tokenised batches (padding to the longest in the batch); shuffled first if a seed is given; at most
    ``limit`` batches (only those are tokenised); ``labels`` under "labels" when given."""
    order = _order(len(texts), shuffle_seed)
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


def token_chunks(tokenizer: Any, texts: Sequence[str], seq_len: int, source: str = "the text") -> Tensor:
    """The texts tokenised, joined with the end-of-text token between them, cut into (n, seq_len) rows; the tail
    shorter than a row is dropped. ``source`` names the texts in errors."""
    if tokenizer.eos_token_id is None:
        raise ValueError("model: the tokenizer has no end-of-text token to separate documents with")
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    rows = len(ids) // seq_len
    if rows == 0:
        raise ValueError(f"data: {source} holds {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


def token_batches(chunks: Tensor, batch_size: int, shuffle_seed: Optional[int] = None,
                  limit: Optional[int] = None) -> list[dict[str, Tensor]]:
    """Batches of token rows (every token real); shuffled first if a seed is given; at most ``limit``."""
    order = _order(len(chunks), shuffle_seed)
    batches = []
    for start in range(0, len(order), batch_size):
        ids = chunks[order[start:start + batch_size]]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches[:limit]


def image_batches(images: Tensor, labels: Tensor, batch_size: int,
                  seed: Optional[int] = None) -> list[dict[str, Tensor]]:
    """{"images", "labels"} batches in order, or shuffled by ``seed``."""
    order = (torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)) if seed is not None
             else torch.arange(len(images)))
    return [{"images": images[idx], "labels": labels[idx]} for idx in order.split(batch_size)]

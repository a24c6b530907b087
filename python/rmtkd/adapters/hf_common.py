"""What the Hugging Face adapters share: offline transformers, tokenizers, config-based build, folders, batches."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from rmtkd.persistence import write_folder_atomically


def transformers_offline() -> Any:
    """The transformers module, with the hub switched off (models load from local folders only) and its
    per-file progress bars off (rmtkd shows its own)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers


def model_type(folder: str | Path) -> Optional[str]:
    """config.json's ``model_type`` of a Hugging Face folder (None when there is no readable config)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(folder: str | Path) -> Any:
    try:
        return transformers_offline().AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ValueError(f"model: {folder} has no usable tokenizer ({error})") from None


def hf_architecture(adapter: str, model: nn.Module) -> dict[str, Any]:
    return {"adapter": adapter, "config": model.config.to_dict()}


def hf_build(architecture: dict[str, Any], auto_class: str) -> nn.Module:
    """The model of ``architecture["config"]``, randomly initialised, through transformers' ``auto_class``."""
    transformers = transformers_offline()
    config = dict(architecture["config"])
    config_class = transformers.AutoConfig.for_model(config.pop("model_type")).__class__
    return getattr(transformers, auto_class).from_config(config_class.from_dict(config))


def save_hf_folder(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """save_pretrained of the model and its tokenizer, written to a temporary sibling and moved into place."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    write_folder_atomically(Path(folder), write)


def tokenized_batches(tokenizer: Any, texts: list[str], labels: Optional[list[int]], batch_size: int, max_len: int,
                      shuffle_seed: Optional[int] = None, limit: Optional[int] = None) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (padding to the longest in the batch); shuffled first if a seed is given; at most
    ``limit`` batches (only those are tokenised); ``labels`` under "labels" when given."""
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

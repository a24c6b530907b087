"""Tiny decoder language models (GPT-2, Llama, Mistral, Qwen2 layouts) with a small BPE tokenizer learnt from
synthetic sentences, for tests that must run in seconds."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from rmtkd.adapters.hf_common import transformers_offline

SUBJECTS = ["the cat", "a dog", "the bank", "our team", "the market", "a minister", "the film", "the band"]
VERBS = ["sees", "buys", "sells", "plays", "likes", "beats", "wins", "loses"]
OBJECTS = ["the ball", "a song", "the match", "new shares", "the vote", "a prize", "the title", "old records"]


def sentences(count: int, seed: int) -> list[str]:
    """Short documents of a tiny grammar: enough structure for a small model to learn."""
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(3))
            for _ in range(count)]


def tiny_config(family: str, vocab_size: int, tied: bool = True):
    """A 2-layer, 32-wide config of ``family`` (gpt2, llama, mistral, qwen2); grouped-query attention where the
    family has it."""
    transformers = transformers_offline()
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}[family]
    return config_class(vocab_size=vocab_size, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        tie_word_embeddings=tied)


def save_tiny_lm(folder: Path, family: str = "llama", tied: bool = True) -> Path:
    """A randomly initialised tiny causal LM of ``family`` and a 320-token BPE tokenizer, saved as a Hugging Face
    folder."""
    from rmtkd.training import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(sentences(200, seed=0), vocab_size=320)
    torch.manual_seed(0)
    model = transformers_offline().AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), tied))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_text(path: Path, documents: int, seed: int) -> Path:
    path.write_text("\n".join(sentences(documents, seed)) + "\n")
    return path

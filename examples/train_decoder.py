"""Train a small Llama-style decoder language model from scratch on the BBC News articles, as the teacher that
`rmtkd compress --task lm` then compresses (no pretrained decoder installs offline).

    python examples/train_decoder.py --out runs/bbc-news-llama-teacher
    rmtkd compress --task lm --model runs/bbc-news-llama-teacher --out runs/bbc-news-llama --max-len 128 --baselines

It learns a byte-level BPE tokenizer on the training articles, trains the model on them (next-token
cross-entropy, AdamW, warm-up then cosine decay), prints the perplexity on the held-out articles (the same split
`rmtkd compress --task lm` evaluates on) and saves a Hugging Face folder (weights, config, tokenizer).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rmtkd.adapters import HFCausalLM
from rmtkd.adapters.hf_common import transformers_offline
from rmtkd.batching import token_batches, token_chunks
from rmtkd.data import read_bbc_news
from rmtkd.training import TrainConfig, train, train_bpe_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704, help="MLP width (SwiGLU)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    train_texts, _, eval_texts, _ = read_bbc_news()
    tokenizer = train_bpe_tokenizer(train_texts, args.vocab)
    config = transformers_offline().LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(512, args.seq_len), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(args.seed)
    model = transformers_offline().AutoModelForCausalLM.from_config(config)
    adapter = HFCausalLM(tokenizer)
    chunks = token_chunks(adapter.tokenizer, train_texts, args.seq_len)
    batches = token_batches(chunks, args.batch_size, shuffle_seed=args.seed)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters:,} parameters; {chunks.numel():,} training tokens in {len(batches)} batches per epoch")
    train_config = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=0.1, schedule="cosine",
                               warmup_steps=min(200, len(batches) // 2))

    def progress(iterable, total):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc="training", unit="batch")

    losses = train(model, adapter, batches, train_config, progress=progress)
    eval_batches = token_batches(token_chunks(adapter.tokenizer, eval_texts, args.seq_len), args.batch_size)
    perplexity = adapter.evaluate(model, eval_batches)
    adapter.save_folder(model, Path(args.out))
    print(f"final training loss {sum(losses[-50:]) / len(losses[-50:]):.3f}; held-out perplexity {perplexity:.2f} "
          f"({time.perf_counter() - started:.0f} s); saved to {args.out}")


if __name__ == "__main__":
    main()

"""End to end at real widths with nothing to download: a BERT-base-shaped classifier and a Llama-shaped decoder,
built from their configs with random weights, each compressed to half its parameters at fixed ranks and timed
as a pair against the original, with energy per inference (NVML on GPU).

    python benchmarks/synthetic_end_to_end.py --device cuda
    python benchmarks/synthetic_end_to_end.py --quick          # tiny configs: CI's smoke run

The compression is the loop's projection without distillation: activation PCA (mean folded in), every site
calibrated on random tokens, shallow to deep, at one fraction of each site's width chosen so that the model has
half its parameters (``rmtkd.baselines``). Random weights say nothing about accuracy: these models measure what
the projected layers do to latency and energy at BERT-base (768 wide, FFN 3072) and Llama (2048 wide, SwiGLU
5632, grouped-query attention) shapes. On CUDA both models run in bf16. Each configuration times the original
and the compressed model as a pair (alternating blocks, median per call); the energy of each is measured over
windows of at least ``--energy-window`` seconds at the large batch. Writes
<out>/<device>/synthetic_end_to_end.{json,md}, rewritten after each model, so a run stopped early keeps what it
finished.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments, device_slug, machine_info, markdown_table, paired_medians, usable_device, write_results,
)
from energy import measure, measure_idle, open_meter  # noqa: E402

from rmtkd.adapters import HFCausalLM, HFSequenceClassifier  # noqa: E402
from rmtkd.adapters.hf_common import transformers_offline  # noqa: E402
from rmtkd.baselines import compress_at_ranks, fixed_fraction_ranks  # noqa: E402
from rmtkd.metrics import count_parameters  # noqa: E402
from rmtkd.task import Task  # noqa: E402

REDUCTION = 0.5  # the compressed models have this fraction fewer parameters
ENERGY_GOAL = 0.6  # on GPU: energy per inference of the compressed model at most this fraction of the original's


def configs(quick: bool) -> dict[str, tuple[Callable[[], torch.nn.Module], Any]]:
    """name -> (model builder, adapter): full-size shapes, or tiny ones for a smoke run."""
    transformers = transformers_offline()
    if quick:
        bert = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, max_position_embeddings=64, num_labels=2)
        llama = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    else:
        bert = transformers.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, max_position_embeddings=512, num_labels=2)
        llama = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                         num_hidden_layers=6, num_attention_heads=32, num_key_value_heads=4,
                                         max_position_embeddings=2048, tie_word_embeddings=False)
    return {
        "bert-base-shaped": (lambda: transformers.BertForSequenceClassification(bert), HFSequenceClassifier()),
        "llama-shaped": (lambda: transformers.LlamaForCausalLM(llama), HFCausalLM()),
    }


def token_batch(vocab: int, batch: int, seq_len: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}


def compressed_copy(model: torch.nn.Module, adapter: Any, batches: list[dict]) -> tuple[torch.nn.Module, float]:
    """The model projected at fixed ranks to half its parameters, and the seconds it took."""
    started = time.perf_counter()
    task = Task(adapter=adapter, model=model, train_batches=lambda step: [], calibration_batches=batches,
                eval_batches=batches)
    ranks = fixed_fraction_ranks(task, int(count_parameters(model) * (1 - REDUCTION)))
    return compress_at_ranks(task, ranks, "activations"), time.perf_counter() - started


def bench_model(name: str, build: Callable[[], torch.nn.Module], adapter: Any, args: argparse.Namespace,
                device: torch.device, meter: Any, energy_note: str) -> list[dict[str, Any]]:
    """Build, compress and time one model: a row per batch size."""
    with torch.device(device):
        original = build().eval()
    vocab = original.config.vocab_size
    calibration = [token_batch(vocab, args.calibration_batch, args.seq_len, seed, device)
                   for seed in range(args.calibration_batches)]
    compressed, compress_s = compressed_copy(original, adapter, calibration)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    models = {"original": original.to(dtype), "compressed": compressed.to(device, dtype).eval()}
    parameters = {key: count_parameters(model) for key, model in models.items()}
    rows = []
    for batch in (1, args.batch):
        data = token_batch(vocab, batch, args.seq_len, 1000 + batch, device)
        runs = {key: (lambda m=model: m(**data).logits) for key, model in models.items()}
        with torch.inference_mode():
            for run in runs.values():
                run()  # first calls: automatic backend choice, caches
            seconds = paired_medians(runs, device, args.min_time)
            energy = ({key: measure(meter, run, device, args.energy_window, items_per_call=batch)
                       for key, run in runs.items()} if meter and batch == args.batch else {})
        row = {"model": name, "dtype": str(dtype).removeprefix("torch."), "parameters": parameters["original"],
               "compressed_parameters": parameters["compressed"],
               "reduction": 1 - parameters["compressed"] / parameters["original"], "batch": batch,
               "seq_len": args.seq_len, "original_ms": seconds["original"] * 1e3,
               "compressed_ms": seconds["compressed"] * 1e3, "speedup": seconds["original"] / seconds["compressed"],
               "compress_s": compress_s, "energy": energy or energy_note}
        if energy:
            row["original_mJ_per_item"] = energy["original"]["joules_per_item"] * 1e3
            row["compressed_mJ_per_item"] = energy["compressed"]["joules_per_item"] * 1e3
            row["energy_ratio"] = energy["compressed"]["joules_per_item"] / energy["original"]["joules_per_item"]
        rows.append(row)
        print(f"{name} batch {batch}: original {row['original_ms']:.2f} ms, compressed {row['compressed_ms']:.2f} ms "
              f"({row['speedup']:.2f}x)" + (f", energy ratio {row['energy_ratio']:.2f}" if energy else ""), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict, energy_note: str) -> str:
    columns = ["model", "dtype", "parameters", "compressed_parameters", "reduction", "batch", "seq_len",
               "original_ms", "compressed_ms", "speedup", "original_mJ_per_item", "compressed_mJ_per_item",
               "energy_ratio", "compress_s"]
    goal = [f"- {r['model']}, batch {r['batch']}: energy ratio {r['energy_ratio']:.2f} "
            f"({'met' if r['energy_ratio'] <= ENERGY_GOAL else 'not met'})" for r in rows if "energy_ratio" in r]
    return "\n\n".join([
        f"# Synthetic end to end ({device_slug(torch.device(args.device))}{', quick' if args.quick else ''})",
        "Command: `python benchmarks/synthetic_end_to_end.py " + " ".join(sys.argv[1:]) + "`",
        f"Machine: `{info}`. Energy: {energy_note}.",
        f"Models built from configs with random weights, compressed to {REDUCTION:.0%} fewer parameters at fixed "
        f"ranks (activation PCA, no distillation); speed-up = paired original / compressed median. Energy goal on "
        f"GPU: compressed energy per inference <= {ENERGY_GOAL}x the original's.",
        markdown_table(rows, columns), *(["\n".join(goal)] if goal else []),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--models", nargs="+", choices=("bert-base-shaped", "llama-shaped"),
                        default=["bert-base-shaped", "llama-shaped"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=None, help="the large batch (default 32 on GPU, 8 on CPU)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per model")
    parser.add_argument("--energy-window", type=float, default=1.0, help="seconds per energy window (>= 1)")
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--calibration-batch", type=int, default=8)
    args = parser.parse_args(argv)
    device = usable_device(args, "synthetic_end_to_end")
    if device is None:
        return 0
    args.device = str(device)
    if args.quick:
        args.seq_len, args.min_time, args.energy_window = 16, 0.05, 0.2
        args.calibration_batches, args.calibration_batch = 2, 4
    args.batch = args.batch or (32 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    meter, energy_note = open_meter(device)
    idle = measure_idle(meter, device, 0.5 if args.quick else 2.0) if meter else None
    if idle is not None:
        energy_note += f"; idle {idle:.1f} W"
    info = machine_info(device)
    out_dir = args.out / (device_slug(device) + ("-quick" if args.quick else ""))
    rows: list[dict[str, Any]] = []
    for name, (build, adapter) in configs(args.quick).items():
        if name in args.models:
            rows += bench_model(name, build, adapter, args, device, meter, energy_note)
            write_results(out_dir, "synthetic_end_to_end", {"machine": info, "energy": energy_note, "rows": rows},
                          markdown(rows, args, info, energy_note))
    print(f"wrote {out_dir}/synthetic_end_to_end.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

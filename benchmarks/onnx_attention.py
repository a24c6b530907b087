"""Which attention form to export: a Hugging Face model's ONNX graph traced with SDPA (what the model runs in
PyTorch; the exporter decomposes it with NaN guards) and with eager attention (what ``rmtkd export`` traces),
timed in ONNX Runtime as pairs, beside PyTorch float32.

    python benchmarks/onnx_attention.py --model runs/sst2-minilm-budget0.78/model --seq-lens 128 512

Each sequence length times the three as one group in alternating blocks of calls (rmtkd.metrics.paired_times) on a
batch of one short sentence padded to the length, repeated --rounds times; each figure is the median of the rounds'
medians with their min–max. Writes <out>/cpu/onnx_attention.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_results  # noqa: E402

from rmtkd.adapters import load_model  # noqa: E402
from rmtkd.deploy.compare import paired_rounds  # noqa: E402
from rmtkd.deploy.onnx_export import MIN_OPSET, trace  # noqa: E402
from rmtkd.deploy.runtime import run_session, session  # noqa: E402


def exported(model: torch.nn.Module, adapter, folder: Path, attention: str, threads: int) -> Callable[[dict], Any]:
    """ONNX Runtime's logits of the model exported with ``attention`` ("eager": rmtkd's export; "model": SDPA)."""
    path = folder / f"{attention}.onnx"
    inputs = trace(model, adapter, path, MIN_OPSET, folder, attention=attention)
    ort_session = session(path, threads)
    return lambda batch: run_session(ort_session, inputs, batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an rmtkd or Hugging Face text model folder")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per variant per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (figures are medians over paired rounds)")
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, adapter = loaded.model.float().eval(), loaded.adapter
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        runs = {"torch fp32": lambda batch: adapter.forward(model, batch),
                "ORT fp32, SDPA export": exported(model, adapter, Path(folder), "model", args.threads),
                "ORT fp32, eager export": exported(model, adapter, Path(folder), "eager", args.threads)}
        for seq_len in args.seq_lens:
            batch = dict(adapter.tokenizer(["a moving and often funny film"], padding="max_length",
                                           max_length=seq_len, truncation=True, return_tensors="pt"))
            timed = paired_rounds(runs, batch, args.rounds, args.min_time)
            rows += [{"variant": name, "seq_len": seq_len, **t} for name, t in timed.items()]
    info = {**machine_info(torch.device("cpu")), "model": str(args.model), "threads": args.threads,
            "rounds": args.rounds}
    table = markdown_table([{"variant": r["variant"], "tokens": r["seq_len"],
                             "ms (min–max)": f"{r['ms']:.2f} ({r['ms_min']:.2f}–{r['ms_max']:.2f})",
                             "speed-up over torch fp32": f"{r['speedup']:.2f}×"} for r in rows],
                           ["variant", "tokens", "ms (min–max)", "speed-up over torch fp32"])
    text = (f"# ONNX Runtime: SDPA vs eager attention in the export\n\n{info['cpu']}, {args.threads} threads, batch 1, "
            f"median of {args.rounds} paired rounds.\n\n{table}\n")
    write_results(args.out / "cpu", "onnx_attention", {"info": info, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

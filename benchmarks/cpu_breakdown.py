"""Where a compressed model's batch-1 CPU time goes, and how fast the thin matmuls it runs are.

    python benchmarks/cpu_breakdown.py --model runs/sst2-minilm-tau0.7/model --k 105

1. Profiles batch-1 forwards of a text model folder (torch.profiler) and splits the time into matrix
   products (aten::addmm / mm) and everything else (attention, GELU, LayerNorm, copies, Python).
2. Times the layer shapes of a 384-wide encoder at 128 rows: the square Linears the original runs against the
   k-wide ones of the compressed model, with ATen's default GEMM and with oneDNN's packed linear (what
   torch.compile with freezing uses), in alternating blocks of calls.
Prints a small table; writes nothing. Used for the analysis under README "Benchmarks".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from rmtkd.adapters import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paired_medians  # noqa: E402

MATMUL_OPS = ("aten::addmm", "aten::mm")


def profile_split(model_dir: str, seq_len: int, calls: int) -> tuple[float, float]:
    """(matmul ms, other ms) per batch-1 forward, from the profiler's self CPU times."""
    model = load_model(model_dir).model.eval()
    ids = torch.randint(1000, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        for _ in range(10):
            model(**batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(**batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / calls / 1e3
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / calls / 1e3
    return matmul, total - matmul


def gemm_rates(k: int, rows: int, min_time: float) -> None:
    """GMAC/s of the square and the k-wide Linears of a 384-wide layer, ATen default vs oneDNN packed."""
    shapes = {"square 384 -> 384": (384, 384), "square 384 -> 1536": (384, 1536), f"thin 384 -> {k}": (384, k),
              f"thin {k} -> 384": (k, 384), f"thin {k} -> 1536": (k, 1536), f"thin 1536 -> {k}": (1536, k)}
    onednn = torch.backends.mkldnn.is_available()
    if not onednn:
        print("\noneDNN is not available in this torch build: ATen only")
    print(f"\n| Linear ({rows} rows) | ATen µs | ATen GMAC/s | oneDNN packed µs | oneDNN GMAC/s |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (d_in, d_out) in shapes.items():
            x, w, b = torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(d_out)
            fns: dict[str, Callable[[], object]] = {"aten": lambda: F.linear(x, w, b)}
            if onednn:
                packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
                fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
            us = {gemm: seconds * 1e6 for gemm, seconds in
                  paired_medians(fns, torch.device("cpu"), min_time).items()}
            macs = rows * d_in * d_out
            cells = [f"{us[gemm]:.0f} | {macs / us[gemm] / 1e3:.0f}" if gemm in us else "n/a | n/a"
                     for gemm in ("aten", "onednn")]
            print(f"| {name} | {cells[0]} | {cells[1]} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a text model folder (rmtkd or Hugging Face)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--k", type=int, default=105, help="the compressed rank for the matmul timings")
    parser.add_argument("--calls", type=int, default=50, help="profiled forwards")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per matmul candidate")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    matmul, other = profile_split(args.model, args.seq_len, args.calls)
    print(f"{args.model}, batch 1, {args.seq_len} tokens, {torch.get_num_threads()} threads: "
          f"{matmul + other:.2f} ms per forward = matmuls {matmul:.2f} ms + the rest {other:.2f} ms "
          f"({other / (matmul + other):.0%})")
    gemm_rates(args.k, args.seq_len, args.min_time)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The choices behind ``rmtkd export`` and its ONNX Runtime sessions, each timed against its alternative as pairs,
beside PyTorch float32:

- the attention form traced: eager attention (rmtkd's) vs the model's SDPA, which the exporter decomposes with
  NaN guards (IsNaN and Where over every attention score);
- the SkipLayerNormalization fusion, which rmtkd's sessions leave out (runtime.SLOWER_FUSIONS), vs ONNX
  Runtime's default of fusing each residual Add into the LayerNormalization after it, in float32 and in int8.

    R=runs/sst2-minilm-budget0.78; python benchmarks/onnx_choices.py --model $R/model $R/teacher

For each model, each shape times every variant as one group in alternating blocks of calls
(rmtkd.metrics.paired_times) on copies of one short sentence padded to the length, repeated --rounds times; each
figure is the median of the rounds' medians with their min–max. Writes <out>/cpu/onnx_choices.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_results  # noqa: E402

from rmtkd.adapters import load_model  # noqa: E402
from rmtkd.deploy.compare import paired_rounds  # noqa: E402
from rmtkd.deploy.int8 import quantize_onnx_int8  # noqa: E402
from rmtkd.deploy.onnx_export import MIN_OPSET, trace  # noqa: E402
from rmtkd.deploy.runtime import SLOWER_FUSIONS, run_session, session  # noqa: E402

SENTENCE = "a moving and often funny film"


def runner(path: Path, inputs: list[dict], threads: int, unfused: Sequence[str]) -> Callable[[dict], Any]:
    """ONNX Runtime's logits of the graph at ``path``, with the fusions in ``unfused`` left out."""
    ort_session = session(path, threads, unfused)
    return lambda batch: run_session(ort_session, inputs, batch)


def variants(model: torch.nn.Module, adapter: Any, folder: Path, threads: int) -> dict[str, Callable[[dict], Any]]:
    """Name → runner: PyTorch float32, then each export choice (rmtkd's first in each pair)."""
    sdpa, eager, int8 = folder / "sdpa.onnx", folder / "eager.onnx", folder / "eager.int8.onnx"
    sdpa_inputs = trace(model, adapter, sdpa, MIN_OPSET, folder, attention="model")
    inputs = trace(model, adapter, eager, MIN_OPSET, folder, attention="eager")
    quantize_onnx_int8(eager, int8)
    return {"torch fp32": lambda batch: adapter.forward(model, batch),
            "ORT fp32, SDPA export": runner(sdpa, sdpa_inputs, threads, SLOWER_FUSIONS),
            "ORT fp32 (rmtkd)": runner(eager, inputs, threads, SLOWER_FUSIONS),
            "ORT fp32, SkipLayerNorm fused": runner(eager, inputs, threads, ()),
            "ORT int8 (rmtkd)": runner(int8, inputs, threads, SLOWER_FUSIONS),
            "ORT int8, SkipLayerNorm fused": runner(int8, inputs, threads, ())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True,
                        help="rmtkd or Hugging Face text model folders, measured one after another")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per variant per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (figures are medians over paired rounds)")
    torch.set_num_threads(args.threads)
    rows = []
    for folder in args.model:
        loaded = load_model(folder)
        model, adapter = loaded.model.float().eval(), loaded.adapter
        with tempfile.TemporaryDirectory() as scratch:
            runs = variants(model, adapter, Path(scratch), args.threads)
            for seq_len in args.seq_lens:
                for batch_size in args.batches:
                    batch = dict(adapter.tokenizer([SENTENCE] * batch_size, padding="max_length",
                                                   max_length=seq_len, truncation=True, return_tensors="pt"))
                    timed = paired_rounds(runs, batch, args.rounds, args.min_time)
                    rows += [{"model": str(folder), "variant": name, "batch": batch_size, "seq_len": seq_len, **t}
                             for name, t in timed.items()]
    info = {**machine_info(torch.device("cpu")), "models": [str(m) for m in args.model], "threads": args.threads,
            "rounds": args.rounds}
    table = markdown_table([{"model": r["model"], "variant": r["variant"], "batch": r["batch"],
                             "tokens": r["seq_len"],
                             "ms (min–max)": f"{r['ms']:.2f} ({r['ms_min']:.2f}–{r['ms_max']:.2f})",
                             "speed-up over torch fp32": f"{r['speedup']:.2f}×"} for r in rows],
                           ["model", "variant", "batch", "tokens", "ms (min–max)", "speed-up over torch fp32"])
    text = (f"# ONNX Runtime: rmtkd's export choices against their alternatives\n\n{info['cpu']}, {args.threads} "
            f"threads, median of {args.rounds} paired rounds; \"(rmtkd)\" is what `rmtkd export` and its sessions "
            f"do.\n\n{table}\n")
    write_results(args.out / "cpu", "onnx_choices", {"info": info, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

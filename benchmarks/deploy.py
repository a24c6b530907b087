"""Deployment benchmark: a run's teacher and compressed model, each as PyTorch eager float32, PyTorch int8,
ONNX Runtime float32 and ONNX Runtime int8, timed together and scored on the run's validation slice.

    python benchmarks/deploy.py --run runs/sst2-minilm-flops0.85             # batch 1 and 16, seq 32/128/512
    python benchmarks/deploy.py --run RUN --quick                             # one shape, short timings
    rmtkd bench --deploy RUN                                                  # the same through the CLI

Every shape times all eight variants as one group in alternating blocks of calls (rmtkd.metrics.paired_times),
so a slow stretch of a shared machine falls on all alike; the group is repeated --rounds times and each figure
is the median of the rounds' medians with their min–max. Speed-ups divide, round by round, the teacher's eager
float32 time by the variant's. Both runtimes get --threads cores. The goals printed at the end are checked at
batch 1 and --goal-seq-len tokens. Writes <out>/cpu/deploy.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_results  # noqa: E402

from rmtkd.app.tasks import TASKS, Settings  # noqa: E402
from rmtkd.deploy.compare import Run, deployment_runners, fastest, paired_rounds, run_models  # noqa: E402
from rmtkd.intervals import METHOD, metric_interval, paired_change  # noqa: E402
from rmtkd.metrics import count_parameters  # noqa: E402

BASELINE = "teacher torch fp32"  # what every speed-up and accuracy change is measured against
GOALS = {"best_vs_teacher_best": 2.0, "best_vs_teacher_fp32": 5.0, "max_accuracy_drop_points": 1.0}


def run_settings(run: Path, seq_len: int) -> Settings:
    """The run's data settings (run.json), for its validation slice."""
    saved = json.loads((run / "run.json").read_text())
    return Settings(**{f.name: saved[f.name] for f in fields(Settings) if f.name in saved}, latency_seq_len=seq_len)


def text_batch(adapter: Any, texts: list[str], batch_size: int, seq_len: int) -> dict:
    """``batch_size`` validation texts padded/truncated to exactly ``seq_len`` tokens."""
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    return dict(adapter.tokenizer(chosen, padding="max_length", truncation=True, max_length=seq_len,
                                  return_tensors="pt"))


def accuracies(runs: dict[str, Run], adapter: Any, batches: list[dict]) -> dict[str, dict[str, Any]]:
    """Each variant's accuracy on ``batches`` with its 95% interval, and its change from the teacher's float32
    eager on the same examples with the paired interval."""
    items = {name: adapter.evaluation_items_of(run, batches) for name, run in runs.items()}
    baseline = items[BASELINE]
    return {name: {"interval": metric_interval(adapter.metric, measured).to_dict(),
                   "change": paired_change(adapter.metric, baseline, measured).to_dict()}
            for name, measured in items.items()}


def goal_checks(rows: list[dict[str, Any]], accuracy: dict[str, dict[str, Any]], seq_len: int) -> dict[str, Any]:
    at = {r["variant"]: r for r in rows if r["batch"] == 1 and r["seq_len"] == seq_len}
    if not at:
        return {}
    teacher_best, compressed_best = at[fastest(at, "teacher")], at[fastest(at, "compressed")]
    change = accuracy[compressed_best["variant"]]["change"]
    drop = -100 * change["value"]
    ratio = teacher_best["ms"] / compressed_best["ms"]
    return {
        "shape": f"batch 1, {seq_len} tokens", "teacher_best": teacher_best["variant"],
        "compressed_best": compressed_best["variant"],
        "best_vs_teacher_best": ratio, "best_vs_teacher_fp32": compressed_best["speedup"],
        "accuracy_drop_points": drop,
        "accuracy_drop_interval_points": [-100 * change["high"], -100 * change["low"]],
        "met": {"best_vs_teacher_best": ratio >= GOALS["best_vs_teacher_best"],
                "best_vs_teacher_fp32": compressed_best["speedup"] >= GOALS["best_vs_teacher_fp32"],
                "accuracy": drop <= GOALS["max_accuracy_drop_points"]},
    }


def accuracy_text(accuracy: dict[str, Any]) -> str:
    """"86.24 (84.72–87.73), −0.40 (−1.10 to +0.30)": the accuracy and its change from the baseline, with their
    95% intervals, in points."""
    interval, change = accuracy["interval"], accuracy["change"]
    return (f"{100 * interval['value']:.2f} ({100 * interval['low']:.2f}–{100 * interval['high']:.2f}), "
            f"{100 * change['value']:+.2f} ({100 * change['low']:+.2f} to {100 * change['high']:+.2f})")


def markdown(rows: list[dict[str, Any]], accuracy: dict[str, dict[str, Any]], goals: dict[str, Any],
             info: dict) -> str:
    table = markdown_table([{**r, "ms": f"{r['ms']:.2f} ({r['ms_min']:.2f}–{r['ms_max']:.2f})",
                             "speed-up": f"{r['speedup']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})",
                             "validation accuracy, change": accuracy_text(accuracy[r["variant"]])} for r in rows],
                           ["variant", "batch", "seq_len", "ms", "speed-up", "validation accuracy, change"])
    lines = [f"# Deployment: {info['run']}", "",
             f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, onnxruntime {info['onnxruntime']}; "
             f"{info['rounds']} paired rounds, median (min–max); speed-up over the teacher's PyTorch float32; "
             f"accuracy on the run's validation slice ({info['validation_examples']:,} examples) with its 95% "
             f"interval, and its change from the teacher's float32 with the paired 95% interval ({METHOD}). "
             f"Parameters: "
             f"teacher {info['parameters']['teacher']:,}, compressed {info['parameters']['compressed']:,}.", "",
             table, ""]
    if goals:
        lines += [f"Goals at {goals['shape']}: compressed best ({goals['compressed_best']}) "
                  f"{goals['best_vs_teacher_best']:.2f}× the teacher's best ({goals['teacher_best']}; goal ≥ "
                  f"{GOALS['best_vs_teacher_best']}×, {'met' if goals['met']['best_vs_teacher_best'] else 'NOT met'}),"
                  f" {goals['best_vs_teacher_fp32']:.2f}× its float32 eager (goal ≥ {GOALS['best_vs_teacher_fp32']}×, "
                  f"{'met' if goals['met']['best_vs_teacher_fp32'] else 'NOT met'}), "
                  f"{goals['accuracy_drop_points']:.2f} points below the teacher on validation (95% paired interval "
                  f"{goals['accuracy_drop_interval_points'][0]:.2f} to {goals['accuracy_drop_interval_points'][1]:.2f}; "
                  f"goal ≤ "
                  f"{GOALS['max_accuracy_drop_points']}, {'met' if goals['met']['accuracy'] else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an rmtkd compress output folder (text task)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per variant per round")
    parser.add_argument("--goal-seq-len", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="batch 1 at the goal length, 3 short rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3 and not args.quick:
        parser.error("--rounds: at least 3 (figures are medians over paired rounds)")
    if args.quick:
        args.batches, args.seq_lens, args.min_time = [1], [args.goal_seq_len], 0.2
    torch.set_num_threads(args.threads)
    settings = run_settings(args.run, args.goal_seq_len)
    if settings.task != "text":
        raise SystemExit("deploy.py: --run: the deployment benchmark takes text-classification runs")
    runs, models = deployment_runners(run_models(args.run), args.run / "onnx")
    parameters = {role: count_parameters(loaded.model) for role, loaded in models.items()}
    loaded = models["compressed"]
    validation = TASKS.get("text").validation_set(settings, loaded)
    accuracy = accuracies(runs, loaded.adapter, validation.batches)
    texts = loaded.adapter.tokenizer.batch_decode([b["input_ids"][0] for b in validation.batches],
                                                  skip_special_tokens=True)
    rows = []
    for seq_len in args.seq_lens:
        for batch_size in args.batches:
            timed = paired_rounds(runs, text_batch(loaded.adapter, texts, batch_size, seq_len), args.rounds,
                               args.min_time)
            rows += [{"variant": name, "batch": batch_size, "seq_len": seq_len, **t} for name, t in timed.items()]
            print(f"seq {seq_len}, batch {batch_size}: " + ", ".join(f"{n} {t['ms']:.2f} ms" for n, t in timed.items()),
                  flush=True)
    import onnxruntime

    info = {**machine_info(torch.device("cpu")), "run": str(args.run), "threads": args.threads,
            "rounds": args.rounds, "onnxruntime": onnxruntime.__version__, "parameters": parameters,
            "validation_examples": sum(len(b["input_ids"]) for b in validation.batches)}
    goals = goal_checks(rows, accuracy, args.goal_seq_len)
    text = markdown(rows, accuracy, goals, info)
    write_results(args.out / "cpu", "deploy", {"info": info, "rows": rows, "accuracy": accuracy, "goals": goals},
                  text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``rmtkd`` command. Subcommand so far: ``compress`` for text classification with a Hugging Face encoder.

    rmtkd compress --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv --out runs/sst2

Steps: read the data; fine-tune a teacher when the model's head is new (kept in OUT/teacher and reused);
run the RMT-KD loop (OUT/checkpoint, resumable by re-running the same command); write OUT/report.json,
OUT/model (the compressed model) and print a summary. User errors exit with one line and status 2.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from rmtkd.adapters import hf_text
from rmtkd.baselines import run_baselines
from rmtkd.data import read_text_table
from rmtkd.distill import DistillConfig
from rmtkd.loop import LoopConfig, SelectionConfig, Task, compress
from rmtkd.metrics import latency_ms
from rmtkd.persistence import write_text_atomically
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS
from rmtkd.spectrum import default_model_path


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _split(texts: list[str], labels: list[int], calibration: int, train: int, seed: int):
    """Disjoint (calibration, training) subsets of the training file, shuffled with ``seed``."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    calib, rest = order[:calibration], order[calibration:calibration + train]
    pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    return pick(calib), pick(rest)


def compress_command(args: argparse.Namespace) -> int:
    train_texts, train_labels = read_text_table(args.train, args.text_column, args.label_column)
    eval_texts, eval_labels = read_text_table(args.eval, args.text_column, args.label_column)
    classes = sorted(set(train_labels))
    unseen = sorted(set(eval_labels) - set(classes))
    if unseen:
        raise ValueError(f"eval: labels {unseen[:5]} do not occur in the training file (classes: {classes[:10]})")
    index = {label: i for i, label in enumerate(classes)}
    calibration_count = args.calibration_samples or max(2, len(train_texts) // 10)
    (calib_texts, _), (fit_texts, fit_labels) = _split(
        train_texts, [index[y] for y in train_labels], calibration_count, args.train_samples, args.seed)
    if len(calib_texts) < 2 or not fit_texts:
        raise ValueError(f"train: {len(train_texts)} rows are too few for {calibration_count} calibration and "
                         "some training sentences")
    out = Path(args.out)
    teacher_dir = out / "teacher"
    torch.manual_seed(args.seed)
    source = str(teacher_dir) if (teacher_dir / "config.json").exists() else args.model
    model, tokenizer = hf_text.load_classifier(source, num_labels=len(classes))
    model.to(args.device)
    fit = hf_text.batches(tokenizer, fit_texts, fit_labels, args.batch_size, args.max_len, shuffle_seed=args.seed)
    if source == args.model and not args.no_fine_tune:
        started = time.perf_counter()
        print(f"fine-tuning the teacher on {len(fit_texts):,} sentences ({args.fine_tune_epochs} epoch(s))")
        hf_text.fine_tune(model, fit, args.fine_tune_epochs, args.fine_tune_lr,
                          progress=lambda it, total: _progress(it, total, "fine-tuning"))
        model.save_pretrained(teacher_dir)
        tokenizer.save_pretrained(teacher_dir)
        print(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    task = Task(
        model=model, logits=hf_text.logits,
        train_batches=lambda step: hf_text.batches(tokenizer, fit_texts, fit_labels, args.batch_size, args.max_len,
                                                   shuffle_seed=args.seed * 7919 + step)[: args.distill_steps],
        calibration_batches=hf_text.batches(tokenizer, calib_texts, None, args.batch_size, args.max_len),
        eval_batches=hf_text.batches(tokenizer, eval_texts, [index[y] for y in eval_labels], 64, args.max_len),
        architecture=hf_text.architecture(model), build=hf_text.build,
        include=hf_text.include, block_of=hf_text.block_of,
    )
    config = LoopConfig(
        selection=SelectionConfig(noise=args.noise, threshold=args.threshold, tau=args.tau, alpha=args.alpha,
                                  n_eff=args.n_eff),
        distill=DistillConfig(alpha=args.kd_alpha, temperature=args.temperature, steps=args.distill_steps,
                              lr=args.distill_lr),
        target_reduction=args.target_reduction, max_accuracy_drop=args.max_accuracy_drop,
        granularity=args.granularity, seed=args.seed,
    )
    compressed, report = compress(task, config, out, progress=_progress)
    probe = dict(tokenizer([eval_texts[0]], padding="max_length", truncation=True, max_length=args.latency_seq_len,
                           return_tensors="pt"))
    report["latency_ms"] = {"batch": 1, "seq_len": args.latency_seq_len, "device": str(args.device),
                            "original": latency_ms(model, lambda m: hf_text.logits(m, probe)),
                            "compressed": latency_ms(compressed, lambda m: hf_text.logits(m, probe))}
    if args.baselines:
        report["baselines"] = run_baselines(task, report, progress=_progress)
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")
    print("\n" + summary_table(report))
    print(f"\nreport: {out / 'report.json'}; compressed model: {out / 'model'}")
    return 0


def summary_table(report: dict) -> str:
    """Markdown: original, RMT-KD and (if run) the baselines: parameters, reduction, accuracy."""
    original = report["original"]
    rows = [("original", original["parameters"], original["accuracy"]),
            ("RMT-KD", report["final"]["parameters"], report["final"]["accuracy"])]
    rows += [(b["method"], b["parameters"], b["accuracy"]) for b in report.get("baselines", [])]
    lines = ["| model | parameters | reduction | accuracy |", "|---|---|---|---|"]
    for name, params, acc in rows:
        lines.append(f"| {name} | {params:,} | {100 * (1 - params / original['parameters']):.1f}% | {100 * acc:.2f} |")
    latency = report.get("latency_ms")
    if latency:
        lines.append(f"\nlatency (batch {latency['batch']}, seq {latency['seq_len']}, {latency['device']}): "
                     f"{latency['original']:.1f} ms -> {latency['compressed']:.1f} ms "
                     f"({latency['original'] / latency['compressed']:.2f}x)")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rmtkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    c = commands.add_parser("compress", help="compress a text classifier with RMT-KD")
    c.add_argument("--model", default=default_model_path(), help="Hugging Face model folder (default: MiniLM-L6)")
    c.add_argument("--train", required=True, help="training TSV/CSV/JSONL (calibration and distillation data)")
    c.add_argument("--eval", required=True, help="validation TSV/CSV/JSONL (accuracy)")
    c.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    c.add_argument("--text-column", default="sentence")
    c.add_argument("--label-column", default="label")
    c.add_argument("--train-samples", type=int, default=20000, help="training sentences used (fine-tune, distill)")
    c.add_argument("--calibration-samples", type=int, default=None, help="default: 10%% of the training file")
    c.add_argument("--max-len", type=int, default=64)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--no-fine-tune", action="store_true", help="the model already has its trained head")
    c.add_argument("--fine-tune-epochs", type=int, default=1)
    c.add_argument("--fine-tune-lr", type=float, default=5e-5)
    c.add_argument("--noise", choices=NOISE_ESTIMATORS, default="debiased_median")
    c.add_argument("--threshold", choices=THRESHOLDS, default="mp_edge")
    c.add_argument("--tau", type=float, default=0.5)
    c.add_argument("--alpha", type=float, default=0.01, help="Tracy-Widom false-alarm rate")
    c.add_argument("--n-eff", choices=("tokens", "sequences"), default="tokens")
    c.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the task loss in distillation")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--distill-steps", type=int, default=100)
    c.add_argument("--distill-lr", type=float, default=5e-5)
    c.add_argument("--target-reduction", type=float, default=None, help="stop at this fraction fewer parameters")
    c.add_argument("--max-accuracy-drop", type=float, default=None, help="roll back steps beyond this drop (0-1)")
    c.add_argument("--granularity", choices=("site", "block"), default="block")
    c.add_argument("--baselines", action="store_true",
                   help="also run weight SVD, activation PCA and fixed-fraction PCA at RMT-KD's size")
    c.add_argument("--latency-seq-len", type=int, default=128, help="sequence length of the batch-1 latency probe")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--seed", type=int, default=0)
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return compress_command(args)
    except ValueError as error:
        print(f"rmtkd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrmtkd: interrupted; the last completed step is checkpointed in {args.out}/checkpoint. "
              "Re-run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

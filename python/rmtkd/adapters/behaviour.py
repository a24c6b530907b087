"""The behaviour role of a model adapter: what the loop, calibration and distillation need of a model family.

Structure (which modules may be compressed, how sites group into blocks, which outputs are hidden states),
computation (running the model on a batch, the task and distillation losses) and the metric. A batch is a dict
of tensors; the adapter decides which keys it reads (the batch makers in :mod:`rmtkd.data` write them).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmtkd.adapters.metric import ACCURACY, Metric, MetricItems
from rmtkd.attention_relations import AttentionProjections
from rmtkd.sites import Site


class ModelBehaviour(ABC):
    """How rmtkd runs and compresses one family of models. Subclasses implement the abstract methods; the rest
    have defaults that fit a model whose every Linear/Conv2d/Embedding may be compressed."""

    name: ClassVar[str] = ""
    metric: ClassVar[Metric] = ACCURACY
    mask_key: ClassVar[Optional[str]] = None  # batch key of a (batch, seq) mask of real tokens, if any
    # Names (regular expression, whole name) of the modules whose outputs are the model's intermediate
    # representations, which hidden-state distillation matches; None: the adapter names none.
    hidden_pattern: ClassVar[Optional[str]] = None

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

    def attention_layers(self, model: nn.Module) -> list[AttentionProjections]:
        """The attention layers whose query/key/value relations the "relations" distillation mode matches, in
        module order; empty where the adapter names none."""
        return []

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

    def example_batch(self, model: nn.Module, batch_size: int, seq_len: int) -> dict[str, Tensor]:
        """A batch of random inputs (no targets) that ``forward`` reads, ``batch_size`` examples (of ``seq_len``
        tokens where the model reads tokens): its keys are the inputs of an exported model (rmtkd.deploy)."""
        raise ValueError(f"model: the {self.name or type(self).__name__} adapter makes no example input, which "
                         "export traces the model with (ModelBehaviour.example_batch)")

    @abstractmethod
    def metric_items(self, output: Tensor, batch: dict) -> MetricItems:
        """The metric of one batch's ``output`` (from :meth:`forward`) per example: each example's total and count
        (see Metric.value), so sums over batches, processes and runtimes add up and intervals can resample
        examples."""

    @torch.no_grad()
    def evaluation_items_of(self, run: Callable[[dict], Tensor], batches: Sequence[dict]) -> MetricItems:
        """The metric per example over ``batches`` of any runner of the model (PyTorch, ONNX Runtime)."""
        return MetricItems.joined([self.metric_items(run(batch), batch) for batch in batches])

    def evaluation_items(self, model: nn.Module, batches: Sequence[dict]) -> MetricItems:
        """The metric per example of ``model`` (in eval mode) over ``batches``."""
        model.eval()
        return self.evaluation_items_of(lambda batch: self.forward(model, batch), batches)

    def evaluate(self, model: nn.Module, batches: Sequence[dict]) -> float:
        """The metric of ``model`` on ``batches``."""
        return self.metric.value(*self.evaluation_items(model, batches).sums())

    def loss_sums(self, model: nn.Module, batches: Sequence[dict]) -> tuple[float, float]:
        """(the task loss summed over the items of ``batches``, those items): what early stopping watches by
        default. Adapters that do not compute it can only stop early on their metric."""
        raise ValueError(f"early stopping score 'loss': the {self.name or type(self).__name__} adapter does not "
                         "compute a validation loss (ModelBehaviour.loss_sums); stop on its metric instead")


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows (all but the last dimension). The T²
    factor keeps the gradient scale of the soft term independent of T (Hinton et al.)."""
    student = F.log_softmax(student.float().reshape(-1, student.shape[-1]) / temperature, -1)
    teacher = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / temperature, -1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class ClassifierBehaviour(ModelBehaviour):
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

    def metric_items(self, output: Tensor, batch: dict) -> MetricItems:
        """Per example: 1 where its arg-max logit is its label, else 0; each counts once."""
        correct = (output.detach().argmax(-1).cpu() == batch[self.label_key].cpu()).double().numpy()
        return MetricItems(correct, np.ones_like(correct))

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

"""Self-distillation: fine-tune the compressed student against a teacher (the model before the step, or the
original model in the recovery pass).

Two losses, named modes:

- "logits" (the paper's): L = α·task loss + (1 − α)·T²·KL(p_teacher ‖ p_student), p = softmax(logits / T), as
  the model's adapter defines it (class logits, or next-token logits at every position);
- "hidden": that, plus β · the mean over the adapter's blocks of the fraction of the teacher's block-output
  variance the student misses (:mod:`rmtkd.hidden_states`), so the student is pulled back towards the teacher's
  intermediate representations and not only its outputs (as TinyBERT and MiniLM distil);
- "relations": "hidden", plus γ · the KL divergence between the teacher's and the student's self-attention
  relations (query-query, key-key, value-value, as MiniLM-v2 distils: :mod:`rmtkd.attention_relations`), of
  every attention layer the adapter names.

Optionally a linear learning-rate warm-up, and early stopping: every ``check_every`` steps the student is measured
on held-out training data (never the evaluation data); after ``patience`` checks without improvement the steps
stop, and the best student seen is kept. Plain PyTorch: AdamW, gradient clipping, bf16 autocast on CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from rmtkd.adapters.behaviour import ModelBehaviour
from rmtkd.attention_relations import AttentionProjections, relation_loss
from rmtkd.distributed import SINGLE, Workers
from rmtkd.hidden_states import captured_outputs, hidden_state_loss
from rmtkd.training import lr_factor

DISTILL_MODES = ("logits", "hidden", "relations")
EARLY_STOPPING_SCORES = ("loss", "metric")


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.7  # weight of the task loss; 1 − alpha on the teacher's soft targets
    temperature: float = 1.0
    steps: int = 100  # optimizer steps per compression step ("a short fine-tune")
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # Across processes: "ddp" (every rank holds the whole student and its optimizer state) or "fsdp" (FSDP2's
    # fully_shard: gradients and optimizer state sharded over the ranks, for a student whose training does not
    # fit one device).
    sharding: str = "ddp"
    mode: str = "logits"  # one of DISTILL_MODES
    hidden_weight: float = 1.0  # β of the "hidden" and "relations" modes
    relation_weight: float = 1.0  # γ of the "relations" mode
    warmup: float = 0.0  # fraction of the steps over which the learning rate rises linearly from 0
    check_every: int = 0  # early stopping: steps between checks on the validation data (0: no early stopping)
    patience: int = 2  # checks without improvement before stopping
    # What early stopping watches on the validation data: "loss", the adapter's task loss per item (cross-entropy:
    # continuous, so a check is not decided by a handful of examples), or "metric", the adapter's metric (accuracy
    # moves in steps of one example and is noisy at the scale of what distillation changes).
    score: str = "loss"

    def __post_init__(self) -> None:
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(f"sharding: expected 'ddp' or 'fsdp', got {self.sharding!r}")
        if self.mode not in DISTILL_MODES:
            raise ValueError(f"mode: expected one of {DISTILL_MODES}, got {self.mode!r}")
        for name in ("hidden_weight", "relation_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: expected a positive weight, got {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup: expected a fraction of the steps in [0, 1), got {self.warmup!r}")
        if self.check_every < 0:
            raise ValueError(f"check_every: expected 0 (off) or a number of steps, got {self.check_every!r}")
        if self.score not in EARLY_STOPPING_SCORES:
            raise ValueError(f"score: expected one of {EARLY_STOPPING_SCORES}, got {self.score!r}")
        if self.patience < 1:
            raise ValueError(f"patience: expected at least 1 check, got {self.patience!r}")
        if self.check_every and self.sharding == "fsdp":
            raise ValueError("check_every: early stopping measures the student between steps, and under FSDP the "
                             "student is only gathered after the last step; use sharding 'ddp' or no early stopping")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature!r}")
        if self.steps < 0:
            raise ValueError(f"steps: expected a non-negative count, got {self.steps!r}")


def _trainable(student: nn.Module, config: DistillConfig, workers: Workers, device: torch.device) -> nn.Module:
    """What the optimizer steps: the student itself (one process), or it under DistributedDataParallel, or an
    FSDP2 copy sharded over the ranks."""
    if not workers.distributed:
        return student
    if config.sharding == "ddp":
        return DistributedDataParallel(student, process_group=workers.group)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    copy_ = copy.deepcopy(student)
    fully_shard(copy_, mesh=DeviceMesh.from_group(workers.group, device.type))
    return copy_


class NonFiniteLoss(RuntimeError):
    """The distillation loss became NaN/Inf; the caller restores the last good model."""


def _module_of(trained: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return trained.module if isinstance(trained, DistributedDataParallel) else trained


def _matched(student: nn.Module, adapter: ModelBehaviour,
             config: DistillConfig) -> tuple[list[str], list[AttentionProjections]]:
    """What the mode matches besides the outputs: the adapter's hidden-state modules, and its attention layers."""
    if config.mode == "logits":
        return [], []
    who = adapter.name or type(adapter).__name__
    names = adapter.hidden_modules(student)
    if not names:
        raise ValueError(f"distillation mode {config.mode!r}: the {who} adapter names no hidden states to match for "
                         "this model (ModelBehaviour.hidden_modules is empty); use mode 'logits'")
    layers = adapter.attention_layers(student) if config.mode == "relations" else []
    if config.mode == "relations" and not layers:
        raise ValueError(f"distillation mode 'relations': the {who} adapter names no attention layers for this model "
                         "(ModelBehaviour.attention_layers is empty); use mode 'hidden'")
    return names, layers


def _representation_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], hidden: list[str],
                         layers: list[AttentionProjections], mask: Optional[Tensor], config: DistillConfig,
                         workers: Workers) -> Tensor:
    """β · the hidden-state term (+ γ · the attention-relation term) of one batch's captured outputs."""
    loss = config.hidden_weight * hidden_state_loss([student[n] for n in hidden], [teacher[n] for n in hidden],
                                                    mask, workers)
    if layers:
        loss = loss + config.relation_weight * relation_loss(student, teacher, layers, mask, workers)
    return loss


class _EarlyStopping:
    """Tracks the validation score (lower is better) at each check and keeps a copy of the best student."""

    def __init__(self, student: nn.Module, validate: Callable[[nn.Module], float], patience: int) -> None:
        self.student, self.validate, self.patience = student, validate, patience
        self.history: list[tuple[int, float]] = []
        self.best_step, self.best_score, self.best_state, self.since_best = 0, math.inf, None, 0
        self.check(0)

    def check(self, step: int) -> bool:
        """Measure the student after ``step`` steps; whether to stop (``patience`` checks without improvement)."""
        score = self.validate(self.student)
        self.history.append((step, score))
        if score < self.best_score:
            self.best_step, self.best_score, self.since_best = step, score, 0
            self.best_state = copy.deepcopy(self.student.state_dict())
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def restore_best(self, steps_taken: int) -> dict[str, Any]:
        """Load the best student seen (if it is not the current one); a JSON-ready account of the checks."""
        if self.best_step != steps_taken and self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        return {"checks": [{"step": step, "score": score} for step, score in self.history],
                "best_step": self.best_step}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[dict],
    adapter: ModelBehaviour,
    config: DistillConfig,
    *,
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
    workers: Workers = SINGLE,
    validate: Optional[Callable[[nn.Module], float]] = None,
) -> dict[str, Any]:
    """Run up to ``config.steps`` AdamW steps on batches (cycled if shorter); returns first/last/mean loss.

    With ``config.check_every``, ``validate(student)`` (a score on held-out data, lower is better; every rank
    calls it together) is measured before the first step and every ``check_every`` steps; the steps stop after
    ``config.patience`` checks without improvement and the best student measured is the one kept.

    Across processes (``workers``) each rank steps on its own batches and the gradients are averaged, so N ranks
    with batches of B examples take the steps one process takes with batches of N·B: under
    DistributedDataParallel, or with ``config.sharding == "fsdp"`` on a fully_shard copy of the student whose
    trained weights are gathered back into it. Raises NonFiniteLoss on every rank (after the last step, to avoid
    a host sync per step) if any rank's loss was NaN/Inf.
    """
    if config.steps == 0:
        return {"steps": 0, "loss_first": None, "loss_last": None, "loss_mean": None}
    if config.check_every and validate is None:
        raise ValueError("validate: early stopping (check_every > 0) needs a validation score to stop on")
    device = next(student.parameters()).device
    trained = _trainable(student, config, workers, device)
    teacher.eval()
    stopping = _EarlyStopping(student, validate, config.patience) if config.check_every else None
    losses = _train(trained, teacher, batches, adapter, config, workers, progress, stopping)
    if trained is not student and not isinstance(trained, DistributedDataParallel):  # an FSDP copy
        student.load_state_dict(get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True)))
    del trained
    result: dict[str, Any] = {}
    if stopping is not None:
        if stopping.history[-1][0] != len(losses):
            stopping.check(len(losses))
        result["early_stopping"] = {"score": config.score, **stopping.restore_best(len(losses))}
    student.eval()
    values = _checked_losses(losses, workers)
    return {"steps": len(values), "loss_first": values[0], "loss_last": values[-1],
            "loss_mean": sum(values) / len(values), **result}


def _train(trained: nn.Module, teacher: nn.Module, batches: Iterable[dict], adapter: ModelBehaviour,
           config: DistillConfig, workers: Workers, progress: Callable[[Iterable, int], Iterable],
           stopping: Optional[_EarlyStopping]) -> list[Tensor]:
    """The optimizer steps (stopped early when ``stopping`` says so); each step's loss, kept on the device (one
    host sync at the end, not one per step)."""
    device = next(trained.parameters()).device
    hidden, layers = _matched(_module_of(trained), adapter, config)
    captured = hidden + [name for layer in layers for name in layer.names()]
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup * config.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.steps, warmup))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    trained.train()
    losses: list[Tensor] = []
    with captured_outputs(teacher, captured) as teacher_states, \
            captured_outputs(_module_of(trained), captured) as student_states:
        for step, batch in enumerate(progress(itertools.islice(itertools.cycle(batches), config.steps),
                                              config.steps), 1):
            teacher_states.clear()
            student_states.clear()
            with autocast:
                with torch.no_grad():
                    target = adapter.forward(teacher, batch)
                loss = adapter.distillation_loss(adapter.forward(trained, batch), target, batch, config.alpha,
                                                 config.temperature)
                if hidden:
                    mask = batch.get(adapter.mask_key) if adapter.mask_key else None
                    loss = loss + _representation_loss(student_states, teacher_states, hidden, layers, mask,
                                                       config, workers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            if stopping is not None and step % config.check_every == 0 and step < config.steps:
                if stopping.check(step):
                    break
                trained.train()
    return losses


def _checked_losses(losses: list[Tensor], workers: Workers) -> list[float]:
    """The global batch's mean loss at each step; NonFiniteLoss on every rank if any rank's was NaN/Inf."""
    values = torch.stack(losses).tolist()
    bad = [step for step, value in enumerate(values) if not math.isfinite(value)]
    first_bad = workers.gather(bad[0] if bad else None)
    failed = [(rank, step) for rank, step in enumerate(first_bad) if step is not None]
    if failed:  # the caller keeps the pre-step model, so the steps taken after the first bad one do no harm
        rank, step = failed[0]
        where = f" on rank {rank}" if workers.distributed else ""
        raise NonFiniteLoss(f"distillation loss is not finite at step {step}{where}")
    return [total / workers.world_size for total in workers.sum(values)]

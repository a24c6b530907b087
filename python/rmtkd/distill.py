"""Self-distillation: fine-tune the compressed student against the model it was before the step.

L = α·task loss + (1 − α)·T²·KL(p_teacher ‖ p_student), p = softmax(logits / T), as the model's adapter defines
it (class logits, or next-token logits at every position). Plain PyTorch: AdamW, gradient clipping, bf16 autocast
on CUDA, a progress bar.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from rmtkd.adapters.base import ModelAdapter


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.7  # weight of the task loss; 1 − alpha on the teacher's soft targets
    temperature: float = 1.0
    steps: int = 100  # optimizer steps per compression step ("a short fine-tune")
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature!r}")
        if self.steps < 0:
            raise ValueError(f"steps: expected a non-negative count, got {self.steps!r}")


class NonFiniteLoss(RuntimeError):
    """The distillation loss became NaN/Inf; the caller restores the last good model."""


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[dict],
    adapter: ModelAdapter,
    config: DistillConfig,
    *,
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
) -> dict[str, Any]:
    """Run ``config.steps`` AdamW steps on batches (cycled if shorter); returns first/last/mean loss.

    Raises NonFiniteLoss (after the last step, to avoid a host sync per step) if any loss was NaN/Inf.
    """
    if config.steps == 0:
        return {"steps": 0, "loss_first": None, "loss_last": None, "loss_mean": None}
    device = next(student.parameters()).device
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / config.steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    teacher.eval()
    student.train()
    losses: list[Tensor] = []  # kept on the device: one host sync at the end, not one per step
    for batch in progress(itertools.islice(itertools.cycle(batches), config.steps), config.steps):
        with autocast:
            with torch.no_grad():
                target = adapter.forward(teacher, batch)
            loss = adapter.distillation_loss(adapter.forward(student, batch), target, batch, config.alpha,
                                             config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    student.eval()
    values = torch.stack(losses).tolist()
    bad = [step for step, value in enumerate(values) if not math.isfinite(value)]
    if bad:  # the caller keeps the pre-step model, so the steps taken after the first bad one do no harm
        raise NonFiniteLoss(f"distillation loss is {values[bad[0]]} at step {bad[0]}")
    return {"steps": len(values), "loss_first": values[0], "loss_last": values[-1],
            "loss_mean": sum(values) / len(values)}


"""Self-distillation: fine-tune the compressed student against the model it was before the step.

L = α·task loss + (1 − α)·T²·KL(p_teacher ‖ p_student), p = softmax(logits / T), as the model's adapter defines
it (class logits, or next-token logits at every position). Plain PyTorch: AdamW, gradient clipping, bf16 autocast
on CUDA, a progress bar.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from rmtkd.adapters.base import ModelAdapter
from rmtkd.distributed import SINGLE, Workers


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

    def __post_init__(self) -> None:
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(f"sharding: expected 'ddp' or 'fsdp', got {self.sharding!r}")
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


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[dict],
    adapter: ModelAdapter,
    config: DistillConfig,
    *,
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
    workers: Workers = SINGLE,
) -> dict[str, Any]:
    """Run ``config.steps`` AdamW steps on batches (cycled if shorter); returns first/last/mean loss.

    Across processes (``workers``) each rank steps on its own batches and the gradients are averaged, so N ranks
    with batches of B examples take the steps one process takes with batches of N·B: under
    DistributedDataParallel, or with ``config.sharding == "fsdp"`` on a fully_shard copy of the student whose
    trained weights are gathered back into it. Raises NonFiniteLoss on every rank (after the last step, to avoid
    a host sync per step) if any rank's loss was NaN/Inf.
    """
    if config.steps == 0:
        return {"steps": 0, "loss_first": None, "loss_last": None, "loss_mean": None}
    device = next(student.parameters()).device
    trained = _trainable(student, config, workers, device)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / config.steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    teacher.eval()
    trained.train()
    losses: list[Tensor] = []  # kept on the device: one host sync at the end, not one per step
    for batch in progress(itertools.islice(itertools.cycle(batches), config.steps), config.steps):
        with autocast:
            with torch.no_grad():
                target = adapter.forward(teacher, batch)
            loss = adapter.distillation_loss(adapter.forward(trained, batch), target, batch, config.alpha,
                                             config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    if trained is not student and not isinstance(trained, DistributedDataParallel):  # an FSDP copy
        student.load_state_dict(get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True)))
    del trained
    student.eval()
    values = torch.stack(losses).tolist()
    bad = [step for step, value in enumerate(values) if not math.isfinite(value)]
    first_bad = workers.gather(bad[0] if bad else None)
    failed = [(rank, step) for rank, step in enumerate(first_bad) if step is not None]
    if failed:  # the caller keeps the pre-step model, so the steps taken after the first bad one do no harm
        rank, step = failed[0]
        where = f" on rank {rank}" if workers.distributed else ""
        raise NonFiniteLoss(f"distillation loss is not finite at step {step}{where}")
    values = [total / workers.world_size for total in workers.sum(values)]  # the global batch's mean loss
    return {"steps": len(values), "loss_first": values[0], "loss_last": values[-1],
            "loss_mean": sum(values) / len(values)}


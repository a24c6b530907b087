"""Intermediate representations for distillation: capture the outputs of a model's blocks during a forward pass and
measure how far a student's are from a teacher's.

The blocks are the modules the model's adapter names (:meth:`rmtkd.adapters.ModelBehaviour.hidden_modules`: a
transformer's embeddings and layers, a CNN's stages). RMT-KD's projections act inside the blocks and leave their
output width unchanged, so a compressed student's block outputs live in the teacher's space and are compared
directly, with no learnt mapping (as TinyBERT needs for a narrower student).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from rmtkd.distributed import SINGLE, Workers


@contextlib.contextmanager
def captured_outputs(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """While the context is open, every forward pass of ``model`` records the output of each module in ``names``
    (its first tensor, for modules that return tuples) in the yielded dict, by module name, in the order the
    modules run (clear it between passes)."""
    outputs: dict[str, Tensor] = {}

    def keeper(name: str):
        def keep(_module: nn.Module, _inputs: tuple, output: object) -> None:
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    handles = [model.get_submodule(name).register_forward_hook(keeper(name)) for name in dict.fromkeys(names)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _rows(student: Tensor, teacher: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Student and teacher as (rows, features) tensors of at least fp32 precision (float64 stays float64): the
    real tokens with ``mask`` (a bool mask over the leading dimensions), else one row per entry of the first
    dimension."""
    if student.shape != teacher.shape:
        raise ValueError(f"student: its hidden state has shape {tuple(student.shape)} and the teacher's "
                         f"{tuple(teacher.shape)}; representations are compared only between models of one shape")
    dtype = torch.promote_types(teacher.dtype, torch.float32)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if mask is not None:
        if tuple(mask.shape) != tuple(teacher.shape[:mask.dim()]):
            raise ValueError(f"mask: expected the leading dimensions {tuple(teacher.shape[:mask.dim()])} of the "
                             f"block outputs it selects real tokens of, got shape {tuple(mask.shape)}")
        student, teacher = student[mask], teacher[mask]
    return student.flatten(1), teacher.flatten(1)


def _spreads(teachers: list[Tensor], workers: Workers) -> list[Tensor]:
    """Σ ‖t − mean‖² over the rows of each block's teacher rows, of the global batch: from every rank's row count,
    row sum and sum of squares (float64, one all-reduce for all blocks)."""
    with torch.no_grad():
        parts = [torch.cat([t.new_tensor([t.shape[0]], dtype=torch.float64), t.sum(0, dtype=torch.float64),
                            t.double().pow(2).sum().reshape(1)]) for t in teachers]
        totals = workers.all_sum(torch.cat(parts)).split([part.numel() for part in parts])
        tiny = torch.finfo(torch.float32).tiny
        return [(total[-1] - total[1:-1].pow(2).sum() / total[0].clamp_min(1)).clamp_min(tiny) for total in totals]


def unexplained_variance(student: Tensor, teacher: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """‖student − teacher‖² / ‖teacher − its mean over rows‖²: the fraction of the teacher representation's
    variance the student does not reproduce (1 − R²). With ``mask`` (a bool mask of real tokens over the leading
    dimensions) the rows are the real tokens; without, the first dimension indexes the rows. Zero exactly when the
    two agree; scale-free, so terms of layers of different magnitudes compare with each other and with the logit
    losses."""
    return hidden_state_loss([student], [teacher], mask)


def hidden_state_loss(student: list[Tensor], teacher: list[Tensor], mask: Optional[Tensor] = None,
                      workers: Workers = SINGLE) -> Tensor:
    """The mean of :func:`unexplained_variance` over the captured blocks (student and teacher in one order).

    Across data-parallel ``workers`` both sums run over the global batch: the teacher's variance is reduced over
    the ranks, and each rank's term is its share of the squared error times the number of ranks, so averaging
    the ranks' gradients (DDP, FSDP) gives one process's gradient on the whole batch."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"student: captured {len(student)} block outputs and the teacher {len(teacher)}; expected "
                         "the same positive number (one per block the adapter names)")
    mask = None if mask is None else mask.to(device=student[0].device, dtype=torch.bool)
    rows = [_rows(s, t, mask) for s, t in zip(student, teacher)]
    spreads = _spreads([t for _, t in rows], workers)
    terms = [(s - t).pow(2).sum() * workers.world_size / spread.to(s.dtype) for (s, t), spread in zip(rows, spreads)]
    return torch.stack(terms).mean()

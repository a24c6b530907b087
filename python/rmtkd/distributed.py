"""The processes a run is split over: a torch.distributed process group (data parallel), or one process.

RMT-KD is data-parallel by nature: every process streams its shard of the calibration data into its own
accumulators, and the statistics are summed once per step (``Calibration.reduce``); distillation runs under DistributedDataParallel on
each process's shard of the training data; evaluation sums (Metric's total and count) are summed. Rank 0
decides (selections, rollbacks from summed metrics, which every rank computes alike) and is the only writer.
Nothing here holds global state: the caller passes the process group it initialised.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


class Workers:
    """One process (``group=None``) or the ranks of an initialised torch.distributed process group."""

    def __init__(self, group: Optional[Any] = None) -> None:
        if group is not None and not (_dist().is_available() and _dist().is_initialized()):
            raise ValueError("group: torch.distributed is not initialised (call init_process_group first)")
        self.group = group
        self.rank = _dist().get_rank(group) if group is not None else 0
        self.world_size = _dist().get_world_size(group) if group is not None else 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that decides and writes."""
        return self.rank == 0

    def _source(self) -> int:
        return _dist().get_global_rank(self.group, 0)

    def barrier(self) -> None:
        if self.distributed:
            _dist().barrier(group=self.group)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every item once over all ranks, as DistributedSampler deals them)."""
        return list(items[self.rank::self.world_size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        buffer = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        _dist().all_reduce(buffer, group=self.group)
        return buffer.tolist()

    def all_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks (the tensor itself in one process), on its own device."""
        if not self.distributed:
            return tensor
        buffer = tensor.to(self._device())
        _dist().all_reduce(buffer, group=self.group)
        return buffer.to(tensor.device)

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        _dist().all_gather_object(values, value, group=self.group)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (picklable) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        _dist().broadcast_object_list(box, src=self._source(), group=self.group)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> nn.Module:
        """Rank 0's parameters and buffers copied into ``module`` on every rank (same structure everywhere)."""
        if self.distributed:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    _dist().broadcast(tensor, src=self._source(), group=self.group)
        return module

    def together(self, phase: Callable[[], T]) -> T:
        """Run ``phase`` on every rank; if it raised ValueError on any, raise that error on every rank (so no
        rank waits forever in a collective the failed one never reaches)."""
        error: Optional[str] = None
        result = None
        try:
            result = phase()
        except ValueError as failure:
            error = str(failure)
        if self.distributed:
            errors = self.gather(error)
            failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
            if failed:
                rank, message = failed[0]
                raise ValueError(message if rank == 0 else f"rank {rank}: {message}")
        elif error is not None:
            raise ValueError(error)
        return result

    def agree(self, value: Any, what: str) -> None:
        """Raise on every rank unless every rank holds the same ``value``."""
        values = self.gather(value)
        differing = [rank for rank, other in enumerate(values) if other != values[0]]
        if differing:
            raise ValueError(f"{what} differ across ranks (rank {differing[0]} has {values[differing[0]]!r}, rank 0 "
                             f"has {values[0]!r}); start every rank with the same command")

    def _device(self) -> torch.device:
        """Where collectives of this group run: the current CUDA device for NCCL, else the CPU."""
        backend = _dist().get_backend(self.group)
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


SINGLE = Workers()  # one process

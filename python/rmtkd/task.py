"""What a compression run works on: a model, its adapter and its data, and the measurements every part of the
run takes of a model on that data (the metric summed over the ranks' shards, the validation score, FLOPs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from torch import nn

from rmtkd.adapters.base import MetricItems, ModelAdapter
from rmtkd.calibration import discover_sites
from rmtkd.distributed import SINGLE, Workers
from rmtkd.metrics import forward_flops
from rmtkd.sites import Site


@dataclass
class Task:
    """A model, its adapter and its data, as the loop needs them. Batches are dicts of tensors.

    The loop decides only on ``validation_batches`` (held-out training data, disjoint from the calibration and
    distillation data): they are needed when a decision is asked for (``max_metric_drop``, early stopping).
    ``eval_batches`` are only measured and reported, never steered on.
    """

    adapter: ModelAdapter
    model: nn.Module
    train_batches: Callable[[int], Iterable[dict]]  # seed -> training batches for distillation
    calibration_batches: list[dict]
    eval_batches: list[dict]
    validation_batches: list[dict] = field(default_factory=list)

    def sites(self, model: nn.Module) -> list[Site]:
        """The compression sites the adapter includes, from one forward pass over a calibration batch."""
        return discover_sites(model, self.calibration_batches[0], self.adapter.forward, self.adapter.include)

    def step_groups(self, sites: list[Site], granularity: str) -> list[list[Site]]:
        """The sites the loop's steps take, in order: one site a step, or one of the adapter's blocks."""
        if granularity == "site":
            return [[site] for site in sites]
        groups: dict[str, list[Site]] = {}
        for site in sites:
            groups.setdefault(self.adapter.block_of(site), []).append(site)
        return list(groups.values())

    def measure(self, model: nn.Module, workers: Workers = SINGLE,
                batches: Optional[list[dict]] = None) -> MetricItems:
        """The metric per example over every rank's shard of ``batches`` (default: the evaluation data), in rank
        order: the same examples in the same order for every model, so two measurements pair up."""
        items = self.adapter.evaluation_items(model, self.eval_batches if batches is None else batches)
        return MetricItems.joined(workers.gather(items))

    def evaluate(self, model: nn.Module, workers: Workers = SINGLE, batches: Optional[list[dict]] = None) -> float:
        """The metric over every rank's shard of ``batches`` (default: the evaluation data)."""
        return self.adapter.metric.value(*self.measure(model, workers, batches).sums())

    def validate(self, model: nn.Module, workers: Workers = SINGLE) -> float:
        """The metric on the validation slice (what decisions are made on)."""
        return self.evaluate(model, workers, self.validation_batches)

    def validation_score(self, workers: Workers, score: str) -> Callable[[nn.Module], float]:
        """Early stopping's score of a model on the validation slice, lower is better: its task loss per item
        (``score`` "loss") or its metric ("metric")."""
        if score == "loss":
            def loss(model: nn.Module) -> float:
                total, count = workers.sum(self.adapter.loss_sums(model, self.validation_batches))
                return total / count
            return loss
        return lambda model: self.adapter.metric.worsening(0.0, self.validate(model, workers))

    def flops(self, model: nn.Module) -> int:
        """The model's forward FLOPs on the first evaluation batch (this rank's)."""
        return forward_flops(model, self.adapter.forward, self.eval_batches[0])

    def check_data(self, decides: bool) -> None:
        """Every process needs data of its own to calibrate and evaluate on, and validation data where the run
        decides on measured metrics."""
        needed = ("calibration_batches", "eval_batches") + (("validation_batches",) if decides else ())
        for name in needed:
            if len(getattr(self, name)) == 0:
                why = (" (max_metric_drop and early stopping decide on held-out training data, never on the "
                       "evaluation data)" if name == "validation_batches" else "")
                raise ValueError(f"task.{name}: this process's share of the data is empty{why}; give every "
                                 "process some")

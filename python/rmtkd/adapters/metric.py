"""The evaluation metric an adapter reports: accuracy, perplexity, or one of a new adapter's own."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class MetricItems:
    """One model's metric on each evaluated example: the example's total and count (see Metric.value)."""

    totals: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.totals.shape != self.counts.shape or self.totals.ndim != 1:
            raise ValueError(f"counts: expected one count per example total, got shapes {self.totals.shape} and "
                             f"{self.counts.shape}")

    @classmethod
    def joined(cls, parts: list["MetricItems"]) -> "MetricItems":
        """The examples of several parts (batches, ranks), in order."""
        return cls(np.concatenate([np.empty(0)] + [p.totals for p in parts]).astype(np.float64),
                   np.concatenate([np.empty(0)] + [p.counts for p in parts]).astype(np.float64))

    def __len__(self) -> int:
        return len(self.totals)

    def sums(self) -> tuple[float, float]:
        return float(self.totals.sum()), float(self.counts.sum())

    def to_dict(self) -> dict[str, list[float]]:
        return {"totals": self.totals.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> "MetricItems":
        return cls(np.asarray(data["totals"], dtype=np.float64), np.asarray(data["counts"], dtype=np.float64))


ACCURACY = Metric("accuracy", higher_is_better=True, percent=True)  # correct / examples
PERPLEXITY = Metric("perplexity", higher_is_better=False, exponential=True)  # exp(negative log-likelihood / tokens)

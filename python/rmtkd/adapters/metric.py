"""The evaluation metric an adapter reports: accuracy, perplexity, or one of a new adapter's own."""
from __future__ import annotations

import math
from dataclasses import dataclass


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

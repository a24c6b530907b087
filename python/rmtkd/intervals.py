"""How sure a measured metric is: 95% intervals by bootstrap over the evaluated examples.

A metric is a ratio of two sums over examples (correct / examples; negative log-likelihood / tokens, then exp for
perplexity: :class:`rmtkd.adapters.metric.Metric`), so one mechanism covers them all: resample the examples with
replacement, recompute the metric, and take the percentiles of the resampled values. A compressed-vs-original
difference is measured on the same examples, so its interval resamples the examples once for both models (a
paired bootstrap): the examples both models get right or wrong cancel, and the interval is much narrower than two
separate intervals would suggest. The resampling is seeded, so a report's intervals are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from rmtkd.adapters.metric import Metric, MetricItems

LEVEL = 0.95
RESAMPLES = 2000
METHOD = f"percentile bootstrap over examples, {RESAMPLES} resamples"
_CHUNK_CELLS = 4_000_000  # resample weights held at once (resamples x examples)


@dataclass(frozen=True)
class Interval:
    """A measured value and its two-sided interval at ``level``."""

    value: float
    low: float
    high: float
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level, "method": METHOD}


def _resampled_sums(items: list[MetricItems], resamples: int, seed: int) -> Iterator[list[tuple[np.ndarray,
                                                                                                 np.ndarray]]]:
    """For each chunk of resamples: each item set's (totals, counts) summed over the same resampled examples."""
    n = len(items[0])
    if n == 0:
        raise ValueError("items: an interval needs at least one evaluated example")
    if any(len(i) != n for i in items):
        raise ValueError(f"items: a paired interval needs both models measured on the same examples, got "
                         f"{[len(i) for i in items]} examples")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        yield [(weights @ i.totals, weights @ i.counts) for i in items]


def _values(metric: Metric, totals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The metric of each resample (nan where a resample has no count, e.g. only empty sequences)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(counts > 0, totals / counts, np.nan)
    return np.exp(mean) if metric.exponential else mean


def _interval(value: float, resampled: np.ndarray, level: float) -> Interval:
    resampled = resampled[np.isfinite(resampled)]
    tail = (1 - level) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail]) if len(resampled) else (np.nan, np.nan)
    return Interval(value, float(low), float(high), level)


def metric_interval(metric: Metric, items: MetricItems, *, level: float = LEVEL, resamples: int = RESAMPLES,
                    seed: int = 0) -> Interval:
    """The metric over ``items`` and its bootstrap interval at ``level``."""
    values = [_values(metric, *sums[0]) for sums in _resampled_sums([items], resamples, seed)]
    return _interval(metric.value(*items.sums()), np.concatenate(values), level)


def paired_change(metric: Metric, before: MetricItems, after: MetricItems, *, level: float = LEVEL,
                  resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """metric(after) − metric(before) on the same examples, and its paired bootstrap interval at ``level``."""
    changes = [_values(metric, *sums[1]) - _values(metric, *sums[0])
               for sums in _resampled_sums([before, after], resamples, seed)]
    value = metric.value(*after.sums()) - metric.value(*before.sums())
    return _interval(value, np.concatenate(changes), level)

"""Bootstrap intervals: they cover a known rate at the stated level, paired changes are narrower than unpaired
ones, ratio metrics (perplexity) are handled, and bad input is named."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rmtkd.adapters import ACCURACY, PERPLEXITY, MetricItems
from rmtkd.intervals import metric_interval, paired_change


def correct(flags: np.ndarray) -> MetricItems:
    return MetricItems(flags.astype(np.float64), np.ones(len(flags)))


def test_accuracy_interval_covers_the_true_rate_at_its_level():
    rng = np.random.default_rng(1)
    rate, n, trials = 0.82, 400, 300
    covered = 0
    for trial in range(trials):
        interval = metric_interval(ACCURACY, correct(rng.random(n) < rate), resamples=400, seed=trial)
        covered += interval.low <= rate <= interval.high
        assert interval.low <= interval.value <= interval.high
    # 300 trials at 95%: the count's standard deviation is ~3.8, so this band is about ±2.5 sigma
    assert 0.915 <= covered / trials <= 0.98


def test_paired_change_covers_the_true_change_and_is_narrower_than_two_intervals():
    rng = np.random.default_rng(2)
    base, lost, gained, n, trials = 0.86, 0.06, 0.2, 500, 300  # the student loses 6% of the teacher's right answers
    truth = base * (1 - lost) + (1 - base) * gained - base
    covered, widths, unpaired = 0, [], []
    for trial in range(trials):
        teacher = rng.random(n) < base
        flips = rng.random(n)
        student = np.where(teacher, flips >= lost, flips < gained)
        change = paired_change(ACCURACY, correct(teacher), correct(student), resamples=400, seed=trial)
        assert change.value == pytest.approx(student.mean() - teacher.mean())
        covered += change.low <= truth <= change.high
        widths.append(change.high - change.low)
        one = metric_interval(ACCURACY, correct(student), resamples=400, seed=trial)
        unpaired.append(one.high - one.low)
    assert 0.915 <= covered / trials <= 0.98
    assert np.mean(widths) < 0.8 * math.sqrt(2) * np.mean(unpaired)


def test_perplexity_interval_is_of_the_exponential_of_the_ratio():
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 30, size=200).astype(np.float64)
    nll = tokens * rng.normal(3.0, 0.3, size=200)
    interval = metric_interval(PERPLEXITY, MetricItems(nll, tokens))
    assert interval.value == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert interval.low < interval.value < interval.high
    same = metric_interval(PERPLEXITY, MetricItems(3.0 * tokens, tokens))  # every sequence alike: no spread
    assert same.low == pytest.approx(math.exp(3.0)) and same.high == pytest.approx(math.exp(3.0))
    unchanged = paired_change(PERPLEXITY, MetricItems(nll, tokens), MetricItems(nll, tokens))
    assert (unchanged.value, unchanged.low, unchanged.high) == (0.0, 0.0, 0.0)


def test_intervals_are_reproducible_and_bad_input_is_named():
    items = correct(np.random.default_rng(4).random(300) < 0.7)
    assert metric_interval(ACCURACY, items, seed=7) == metric_interval(ACCURACY, items, seed=7)
    with pytest.raises(ValueError, match="items: a paired interval needs both models measured on the same examples"):
        paired_change(ACCURACY, items, correct(np.ones(299)))
    with pytest.raises(ValueError, match="items: an interval needs at least one evaluated example"):
        metric_interval(ACCURACY, MetricItems(np.empty(0), np.empty(0)))
    with pytest.raises(ValueError, match="counts: expected one count per example total"):
        MetricItems(np.ones(3), np.ones(4))

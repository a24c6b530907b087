"""Estimators of the noise level σ² from the eigenvalues of a sample covariance.

All take the eigenvalues (any order) and γ = d/n, and use only the min(d, n) non-zero ones: for d > n the
other d − n are structural zeros. Each returns σ² such that the bulk looks like MP(γ, σ²).

- ``quantile``: the RMT-KD paper's rule, σ² = the τ-quantile of the eigenvalues (τ = 0.5: the median). The raw
  quantile is biased low: the MP median sits below σ² (by 17% at γ = 0.5), so the edge it implies is too low.
- ``debiased_median``: median(λ) / median(MP(γ, 1)), the median rule with that bias removed.
- ``mp_fit``: the paper's refinement, a least-squares fit of the MP density to the histogram of the bulk.
- ``bema``: Ke, Ma & Lin (2021), "Estimation of the number of spiked eigenvalues in a covariance matrix by bulk
  eigenvalue matching analysis" (isotropic BEMA): least squares between the central eigenvalues and the MP
  quantiles at their ranks, which ignores both tails (spikes and edge fluctuations).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from rmtkd.spectral.marchenko_pastur import MarchenkoPastur

NOISE_ESTIMATORS = ("quantile", "debiased_median", "mp_fit", "bema")


def nonzero_eigenvalues(eigenvalues: np.ndarray, gamma: float) -> np.ndarray:
    """The min(d, n) largest eigenvalues, ascending: for γ > 1 the d − n structural zeros are dropped."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    d = values.size
    keep = d if gamma <= 1 else max(1, int(round(d / gamma)))
    return values[d - keep:]


def quantile_rule(eigenvalues: np.ndarray, gamma: float, tau: float = 0.5) -> float:
    if not 0 < tau < 1:
        raise ValueError(f"tau: expected a quantile in (0, 1), got {tau!r}")
    return float(np.quantile(nonzero_eigenvalues(eigenvalues, gamma), tau))


def debiased_median(eigenvalues: np.ndarray, gamma: float) -> float:
    return float(np.median(nonzero_eigenvalues(eigenvalues, gamma)) / MarchenkoPastur(gamma).bulk_median())


def bema(eigenvalues: np.ndarray, gamma: float, alpha: float = 0.2) -> float:
    """σ² = argmin Σ (λ_(i) − σ² q_i)² over the central ranks i/p in [α, 1 − α] (q_i: MP(γ, 1) quantiles)."""
    if not 0 <= alpha < 0.5:
        raise ValueError(f"alpha: expected a trimming fraction in [0, 0.5), got {alpha!r}")
    values = nonzero_eigenvalues(eigenvalues, gamma)
    p = values.size
    probabilities = (np.arange(1, p + 1) - 0.5) / p
    central = (probabilities >= alpha) & (probabilities <= 1 - alpha)
    quantiles = MarchenkoPastur(gamma).bulk_quantile(probabilities[central])
    return float(np.dot(quantiles, values[central]) / np.dot(quantiles, quantiles))


def mp_fit(eigenvalues: np.ndarray, gamma: float, bins: int | None = None, iterations: int = 3) -> float:
    """Least-squares fit of the MP density to the histogram of the bulk (the paper's refinement).

    Starts from the debiased median; each round histograms the eigenvalues below 1.5 × the current edge and
    minimises, over log σ² by golden-section search, the squared difference between the histogram density and
    the MP density averaged over each bin (from the CDF). Bin averages, not bin-centre values, keep the fit
    unbiased near the edges and at γ ≈ 1, where the density diverges at 0.
    """
    values = nonzero_eigenvalues(eigenvalues, gamma)
    p = values.size
    sigma2 = debiased_median(eigenvalues, gamma)
    bins = bins or int(np.clip(math.sqrt(p), 10, 200))
    for _ in range(iterations):
        cutoff = 1.5 * MarchenkoPastur(gamma, sigma2).upper_edge
        bulk = values[values <= cutoff]
        counts, edges = np.histogram(bulk, bins=bins, range=(0.0, cutoff))
        widths = np.diff(edges)
        observed = counts / (p * widths)  # density of the non-zero eigenvalues

        def loss(log_s2: float) -> float:
            expected = np.diff(MarchenkoPastur(gamma, math.exp(log_s2)).bulk_cdf(edges)) / widths
            return float(np.sum((observed - expected) ** 2))

        sigma2 = math.exp(_golden_section(loss, math.log(sigma2) - 0.7, math.log(sigma2) + 0.7))
    return sigma2


def _golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-7) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def estimate_noise(eigenvalues: np.ndarray, gamma: float, method: str = "debiased_median", tau: float = 0.5) -> float:
    """σ² by the named estimator (see NOISE_ESTIMATORS); ``tau`` is the quantile rule's quantile."""
    if method == "quantile":
        return quantile_rule(eigenvalues, gamma, tau)
    if method == "debiased_median":
        return debiased_median(eigenvalues, gamma)
    if method == "mp_fit":
        return mp_fit(eigenvalues, gamma)
    if method == "bema":
        return bema(eigenvalues, gamma)
    raise ValueError(f"noise: expected one of {NOISE_ESTIMATORS}, got {method!r}")

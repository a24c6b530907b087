"""The Marchenko–Pastur law: the eigenvalue distribution of pure-noise sample covariances.

For X (d × n) with i.i.d. entries of variance σ², the eigenvalues of Σ = XXᵀ/n follow, as d, n → ∞ with
γ = d/n, the MP law with bulk edges λ± = σ²(1 ± √γ)² and density

    f(x) = √((λ₊ − x)(x − λ₋)) / (2π σ² γ x)   on [λ₋, λ₊],

plus a point mass 1 − 1/γ at 0 when γ > 1 (d − n eigenvalues are exactly zero). The continuous part then
carries mass min(1, 1/γ). ``bulk_*`` methods describe that continuous part alone (the law of the non-zero
eigenvalues), which is what estimators fitted to min(d, n) non-zero eigenvalues need.

CDF and quantiles are computed by quadrature in the angle θ with x = λ₋ + (λ₊ − λ₋)(1 − cos θ)/2, which turns
the square-root edges into a smooth integrand; the table is accurate to ~1e-10.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_GRID = 1 << 14


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite positive number, got {value!r}")


@dataclass(frozen=True)
class MarchenkoPastur:
    """MP law with ratio gamma = d/n and noise variance sigma2."""

    gamma: float
    sigma2: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("gamma", self.gamma)
        _check_positive("sigma2", self.sigma2)

    @property
    def lower_edge(self) -> float:
        return self.sigma2 * (1 - math.sqrt(self.gamma)) ** 2

    @property
    def upper_edge(self) -> float:
        return self.sigma2 * (1 + math.sqrt(self.gamma)) ** 2

    @property
    def atom(self) -> float:
        """Probability mass at 0: 1 − 1/γ for γ > 1, else 0."""
        return max(0.0, 1 - 1 / self.gamma)

    @property
    def bulk_mass(self) -> float:
        return 1.0 - self.atom

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        """Density of the continuous part (integrates to bulk_mass); the atom at 0 is not included."""
        x = np.asarray(x, dtype=np.float64)
        lo, hi = self.lower_edge, self.upper_edge
        inside = (x > lo) & (x < hi) & (x > 0)
        safe = np.where(inside, x, 1.0)
        value = np.sqrt(np.clip((hi - safe) * (safe - lo), 0, None)) / (2 * math.pi * self.sigma2 * self.gamma * safe)
        return np.where(inside, value, 0.0)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """P(λ <= x), atom included."""
        x = np.asarray(x, dtype=np.float64)
        return np.where(x < 0, 0.0, self.atom + self.bulk_mass * self.bulk_cdf(x))

    def bulk_cdf(self, x: np.ndarray | float) -> np.ndarray:
        """CDF of the non-zero eigenvalues (the continuous part normalised to mass 1)."""
        x = np.asarray(x, dtype=np.float64)
        lo, hi = self.lower_edge, self.upper_edge
        theta = np.arccos(np.clip(1 - 2 * (x - lo) / (hi - lo), -1, 1))
        grid, table = _standard_bulk_table(self.gamma)
        return np.interp(theta, grid, table)

    def bulk_quantile(self, q: np.ndarray | float) -> np.ndarray:
        """Inverse of bulk_cdf: the q-quantile of the non-zero eigenvalues."""
        q = np.asarray(q, dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise ValueError(f"q: expected probabilities in [0, 1], got {q}")
        grid, table = _standard_bulk_table(self.gamma)
        theta = np.interp(q, table, grid)
        lo, hi = self.lower_edge, self.upper_edge
        return lo + (hi - lo) * (1 - np.cos(theta)) / 2

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        """Inverse of cdf (atom included): 0 for q <= atom."""
        q = np.asarray(q, dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise ValueError(f"q: expected probabilities in [0, 1], got {q}")
        inner = np.clip((q - self.atom) / self.bulk_mass, 0, 1)
        return np.where(q <= self.atom, 0.0, self.bulk_quantile(inner))

    def median(self) -> float:
        return float(self.quantile(0.5))

    def bulk_median(self) -> float:
        """Median of the non-zero eigenvalues: what the median of min(d, n) eigenvalues estimates."""
        return float(self.bulk_quantile(0.5))


@functools.lru_cache(maxsize=64)
def _standard_bulk_table(gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(θ grid, normalised bulk CDF at θ) for σ² = 1; the CDF in θ does not depend on σ²."""
    lo, hi = (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2
    theta = np.linspace(0.0, math.pi, _GRID + 1)
    x = lo + (hi - lo) * (1 - np.cos(theta)) / 2
    half_width = (hi - lo) / 2
    # f(x) dx = half_width² sin²θ / (2π γ x) dθ: smooth, vanishing at both ends.
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = np.where(x > 0, half_width**2 * np.sin(theta) ** 2 / (2 * math.pi * gamma * x), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))])
    return theta, cumulative / cumulative[-1]

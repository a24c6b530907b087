"""Detection thresholds: which eigenvalues stand above the noise.

- ``mp_edge``: the paper's rule, the MP bulk edge λ₊ = σ²(1 + √γ)² (asymptotic; the largest noise eigenvalue
  exceeds it about 17% of the time at finite size).
- ``tracy_widom``: the finite-n edge at false-alarm rate α: σ²(μ + s₁₋α · s)/n with Johnstone's (2001)
  centering μ = (√(n−1) + √d)² and scale s = (√(n−1) + √d)(1/√(n−1) + 1/√d)^⅓, s₁₋α the Tracy–Widom (β = 1)
  quantile. Pure noise then yields k = 0 with probability ≈ 1 − α.
- ``gavish_donoho``: Gavish & Donoho (2014), "The optimal hard threshold for singular values is 4/√3", unknown
  noise: singular values above ω(β)·median(singular values), i.e. eigenvalues above ω(β)²·median(λ), with
  β = min(d, n)/max(d, n), ω(β) = λ*(β)/√μ_β. Optimal for reconstruction error, so stricter than the edge.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from rmtkd.spectral.marchenko_pastur import MarchenkoPastur
from rmtkd.spectral.noise import nonzero_eigenvalues

THRESHOLDS = ("mp_edge", "tracy_widom", "gavish_donoho")


def mp_edge(sigma2: float, gamma: float) -> float:
    return MarchenkoPastur(gamma, sigma2).upper_edge


def tracy_widom1_cdf(s: float, nodes: int = 96) -> float:
    """F₁(s), the GOE Tracy–Widom distribution, as the Fredholm determinant det(I − K) on L²(0, ∞) with
    K(x, y) = ½ Ai((x + y)/2 + s) (Ferrari–Spohn), by Gauss–Legendre Nyström discretisation (Bornemann 2010).
    """
    if s < -12:
        return 0.0
    length = 2 * max(16.0 - s, 1.0)  # Ai(z) < 1e-20 beyond z = 16
    x, w = np.polynomial.legendre.leggauss(nodes)
    x = (x + 1) * length / 2
    w = w * length / 2
    z = torch.from_numpy((x[:, None] + x[None, :]) / 2 + s)
    kernel = 0.5 * torch.special.airy_ai(z).numpy()
    root_w = np.sqrt(w)
    matrix = np.eye(nodes) - root_w[:, None] * kernel * root_w[None, :]
    return float(np.clip(np.linalg.det(matrix), 0.0, 1.0))


@functools.lru_cache(maxsize=32)
def tracy_widom1_quantile(probability: float) -> float:
    """s with F₁(s) = probability, by bisection on [−10, 10]."""
    if not 0 < probability < 1:
        raise ValueError(f"probability: expected a value in (0, 1), got {probability!r}")
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if tracy_widom1_cdf(mid) < probability:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def tracy_widom_edge(sigma2: float, d: int, n: float, alpha: float = 0.01) -> float:
    """Largest-eigenvalue threshold for Σ = XXᵀ/n of pure noise at false-alarm rate alpha (Johnstone 2001)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a false-alarm rate in (0, 1), got {alpha!r}")
    samples = max(n - 1, 1.0)
    root_n, root_d = math.sqrt(samples), math.sqrt(d)
    center = (root_n + root_d) ** 2
    scale = (root_n + root_d) * (1 / root_n + 1 / root_d) ** (1 / 3)
    return sigma2 * (center + tracy_widom1_quantile(1 - alpha) * scale) / n


def gavish_donoho_omega(beta: float) -> float:
    """ω(β) = λ*(β) / √μ_β, the optimal hard-threshold coefficient for unknown noise."""
    lam = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
    return lam / math.sqrt(MarchenkoPastur(beta).bulk_median())


def gavish_donoho_threshold(eigenvalues: np.ndarray, gamma: float) -> float:
    beta = min(gamma, 1 / gamma)
    return gavish_donoho_omega(beta) ** 2 * float(np.median(nonzero_eigenvalues(eigenvalues, gamma)))

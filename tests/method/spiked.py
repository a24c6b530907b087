"""Synthetic data with known truth for the spectral tests: spiked covariance models."""
from __future__ import annotations

import torch


def spiked_samples(d: int, gamma: float, spikes: list[float], sigma2: float = 1.0, seed: int = 0):
    """n = d/γ centered samples (n, d) from N(0, σ²(I + Σ θ_i u_i u_iᵀ)); returns (x, directions u (d, s))."""
    generator = torch.Generator().manual_seed(seed)
    n = int(round(d / gamma))
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) * sigma2**0.5
    directions = torch.linalg.qr(torch.randn(d, max(len(spikes), 1), generator=generator, dtype=torch.float64))[0]
    directions = directions[:, : len(spikes)]
    if spikes:
        stretch = torch.tensor([(1 + s) ** 0.5 - 1 for s in spikes], dtype=torch.float64)
        x = x + ((x @ directions) * stretch) @ directions.T
    return x, directions


def sample_covariance(x: torch.Tensor) -> torch.Tensor:
    """Centered covariance XᵀX/n (the RMT convention, ddof = 0)."""
    centered = x - x.mean(0)
    return centered.T @ centered / x.shape[0]

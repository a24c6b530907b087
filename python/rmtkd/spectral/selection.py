"""Subspace selection: which eigen-directions of an activation covariance carry signal.

    selection = select_subspace(accumulator)                      # from a CovarianceAccumulator
    selection = select_subspace(cov, n_samples=20_000, noise="bema", threshold="tracy_widom")
    selection.basis         # (d, k) float64, orthonormal, strongest direction first
    selection.reason        # plain-language account of k, always set

The eigendecomposition runs in float64 (torch.linalg.eigh). γ = d / n_eff where n_eff defaults to the sample
count; pass ``n_eff`` when samples are correlated (tokens of one sequence), see rmtkd.spectral.effective_samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from rmtkd.spectral.marchenko_pastur import MarchenkoPastur
from rmtkd.spectral.noise import NOISE_ESTIMATORS, estimate_noise
from rmtkd.spectral.thresholds import THRESHOLDS, gavish_donoho_threshold, mp_edge, tracy_widom_edge
from rmtkd_kernels import CovarianceAccumulator

# Relative tolerances for "symmetric" and "non-negative" on a float64 covariance built from fp32 partials.
SYMMETRY_TOLERANCE = 1e-6
NEGATIVE_TOLERANCE = 1e-6
# Eigenvalues below this fraction of the trace are at the rounding of a covariance of fp32 products: the
# activations have no variance there (they span fewer dimensions), so no threshold keeps such a direction.
ROUNDING = float(np.finfo(np.float32).eps)


@dataclass
class SubspaceSelection:
    """The outcome of a selection: k, the kept directions, and every number that decided it."""

    k: int
    eigenvalues: np.ndarray  # all d eigenvalues, descending
    basis: torch.Tensor  # (d, k) float64 eigenvectors of the kept eigenvalues, descending
    sigma2: float
    gamma: float
    edge: float
    noise_rule: str
    threshold_rule: str
    n_samples: float
    n_eff: float
    variance_kept: float  # fraction of the total variance (trace) in the kept directions
    reason: str
    mean: Optional[torch.Tensor] = None  # activation mean when selected from an accumulator
    options: dict[str, float] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.eigenvalues.size)

    @property
    def kept_eigenvalues(self) -> np.ndarray:
        return self.eigenvalues[: self.k]

    def mp_law(self) -> MarchenkoPastur:
        return MarchenkoPastur(self.gamma, self.sigma2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no eigenvectors)."""
        return {
            "k": self.k, "d": self.d, "sigma2": self.sigma2, "gamma": self.gamma, "edge": self.edge,
            "noise_rule": self.noise_rule, "threshold_rule": self.threshold_rule, "n_samples": self.n_samples,
            "n_eff": self.n_eff, "variance_kept": self.variance_kept, "reason": self.reason,
            "kept_eigenvalues": self.kept_eigenvalues.tolist(), "options": dict(self.options),
        }


def _as_float64_matrix(source: Any) -> torch.Tensor:
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if not isinstance(source, torch.Tensor):
        raise ValueError(f"source: expected a CovarianceAccumulator or a (d, d) matrix, got {type(source).__name__}")
    if source.dim() != 2 or source.shape[0] != source.shape[1] or source.shape[0] == 0:
        raise ValueError(f"source: expected a square (d, d) covariance matrix, got shape {tuple(source.shape)}")
    return source.detach().to(torch.float64)


def _validated_covariance(cov: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(cov).all():
        bad = int((~torch.isfinite(cov)).sum())
        raise ValueError(f"source: the covariance holds {bad} NaN/Inf entries; the activations it came from were not finite")
    scale = cov.abs().max().item()
    asymmetry = (cov - cov.T).abs().max().item()
    if asymmetry > SYMMETRY_TOLERANCE * max(scale, 1e-300):
        raise ValueError(f"source: expected a symmetric matrix, max |C − Cᵀ| = {asymmetry:.3g} (max |C| = {scale:.3g})")
    return (cov + cov.T) / 2


def _threshold(rule: str, eigenvalues: np.ndarray, sigma2: float, gamma: float, d: int, n_eff: float,
               alpha: float) -> float:
    if rule == "mp_edge":
        return mp_edge(sigma2, gamma)
    if rule == "tracy_widom":
        return tracy_widom_edge(sigma2, d, n_eff, alpha)
    if rule == "gavish_donoho":
        return gavish_donoho_threshold(eigenvalues, gamma)
    raise ValueError(f"threshold: expected one of {THRESHOLDS}, got {rule!r}")


def _reason(k: int, d: int, eigenvalues: np.ndarray, edge: float, threshold: str, noise: str) -> str:
    top = eigenvalues[0]
    if k == 0:
        return (f"k = 0: no eigenvalue exceeds the {threshold} threshold {edge:.4g} (largest eigenvalue {top:.4g}); "
                "the spectrum is consistent with pure noise, so no direction is kept as signal.")
    if k == d:
        return (f"k = d = {d}: every eigenvalue exceeds the {threshold} threshold {edge:.4g} (smallest "
                f"{eigenvalues[-1]:.4g}); no noise bulk is visible, so the {noise} noise estimate describes no "
                "noise. Too few samples for the dimension, or a layer whose inputs have no noise floor.")
    return (f"k = {k} of {d}: {k} eigenvalues exceed the {threshold} threshold {edge:.4g} (smallest kept "
            f"{eigenvalues[k - 1]:.4g}, largest dropped {eigenvalues[k]:.4g}).")


def select_subspace(
    source: CovarianceAccumulator | torch.Tensor | np.ndarray,
    n_samples: Optional[float] = None,
    *,
    noise: str = "debiased_median",
    threshold: str = "mp_edge",
    tau: float = 0.5,
    alpha: float = 0.01,
    n_eff: Optional[float] = None,
    rank: Optional[int] = None,
) -> SubspaceSelection:
    """Keep the eigen-directions of a covariance whose eigenvalues exceed the noise threshold.

    Args:
        source: a CovarianceAccumulator (its centered covariance and sample count are used) or a (d, d)
            covariance matrix (then ``n_samples`` is required).
        n_samples: number of samples behind a ready matrix; must not be given with an accumulator.
        noise: σ² estimator, one of NOISE_ESTIMATORS ("quantile" with ``tau`` is the RMT-KD paper's rule).
        threshold: one of THRESHOLDS ("mp_edge" is the paper's; "tracy_widom" uses false-alarm rate ``alpha``).
        n_eff: effective number of independent samples for γ = d / n_eff (default: n_samples).
        rank: keep exactly this many directions (a rank chosen elsewhere, e.g. by a parameter budget); the
            threshold is still computed and the reason says what it alone would keep.
    """
    mean = None
    if isinstance(source, CovarianceAccumulator):
        if n_samples is not None:
            raise ValueError("n_samples: not accepted with a CovarianceAccumulator, which counts its own samples")
        cov = source.covariance()  # raises on NaN/Inf rows or fewer than 2 samples
        n_samples = float(source.count)
        mean = source.mean()
    else:
        cov = _as_float64_matrix(source)
        if n_samples is None:
            raise ValueError("n_samples: required with a ready covariance matrix (how many samples built it)")
    if not (isinstance(n_samples, (int, float)) and math.isfinite(n_samples) and n_samples >= 2):
        raise ValueError(f"n_samples: expected at least 2 samples, got {n_samples!r}")
    n_eff = float(n_samples if n_eff is None else n_eff)
    if not (math.isfinite(n_eff) and 2 <= n_eff <= n_samples):
        raise ValueError(f"n_eff: expected a number in [2, n_samples = {n_samples:g}], got {n_eff!r}")
    if noise not in NOISE_ESTIMATORS:
        raise ValueError(f"noise: expected one of {NOISE_ESTIMATORS}, got {noise!r}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold: expected one of {THRESHOLDS}, got {threshold!r}")
    cov = _validated_covariance(cov)

    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)
    eigenvalues = values.cpu().numpy()
    d = eigenvalues.size
    largest = max(abs(eigenvalues[0]), 1e-300)
    if eigenvalues[-1] < -NEGATIVE_TOLERANCE * largest * d:
        raise ValueError(f"source: not positive semi-definite: eigenvalue {eigenvalues[-1]:.4g} is below "
                         f"−{NEGATIVE_TOLERANCE:g}·d·λmax; a covariance cannot have it")
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    if eigenvalues[0] <= 0:
        raise ValueError("source: the covariance is zero: every activation was constant")

    gamma = d / n_eff
    sigma2 = estimate_noise(eigenvalues, gamma, noise, tau)
    edge = _threshold(threshold, eigenvalues, sigma2, gamma, d, n_eff, alpha)
    k = int(np.sum(eigenvalues > edge))
    reason = _reason(k, d, eigenvalues, edge, threshold, noise)
    resolved = int(np.sum(eigenvalues > ROUNDING * eigenvalues.sum()))
    if k > resolved:
        reason = (f"k = {resolved} of {d}: the activations span {resolved} dimensions (the other eigenvalues are "
                  f"below ε₃₂ · trace = {ROUNDING * eigenvalues.sum():.3g}, the rounding of the covariance), so the "
                  f"noise fit sees rounding and {k} eigenvalues exceed its threshold {edge:.4g}; only the "
                  f"{resolved} resolved directions are kept.")
        k = resolved
    if rank is not None:
        if not (isinstance(rank, int) and 1 <= rank <= d):
            raise ValueError(f"rank: expected a whole number of directions in [1, d = {d}], got {rank!r}")
        reason = f"k = {rank} of {d}: set by the rank budget; by the threshold alone: {reason}"
        k = rank
    return SubspaceSelection(
        k=k, eigenvalues=eigenvalues, basis=vectors[:, :k].contiguous(), sigma2=sigma2, gamma=gamma, edge=edge,
        noise_rule=noise, threshold_rule=threshold, n_samples=float(n_samples), n_eff=n_eff,
        variance_kept=float(eigenvalues[:k].sum() / eigenvalues.sum()), reason=reason, mean=mean,
        options={"tau": tau, "alpha": alpha},
    )

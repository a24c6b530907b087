"""Noise estimators, thresholds and subspace selection on spiked models with known truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rmtkd.spectral import (
    NOISE_ESTIMATORS, DesignEffectEstimator, MarchenkoPastur, select_subspace, tracy_widom1_cdf,
    tracy_widom1_quantile,
)
from rmtkd_kernels import CovarianceAccumulator
from tests.method.spiked import sample_covariance, spiked_samples

CASES = [(300, 0.05), (500, 0.5), (1000, 0.2), (400, 1.0), (600, 2.0)]  # (d, γ = d/n)


def test_tracy_widom_matches_published_values():
    # Tracy & Widom (1996) / Johnstone (2001), Table 1: F1 percentiles
    assert tracy_widom1_quantile(0.95) == pytest.approx(0.9793, abs=2e-3)
    assert tracy_widom1_quantile(0.99) == pytest.approx(2.0234, abs=2e-3)
    assert tracy_widom1_cdf(-3.8954) == pytest.approx(0.01, abs=5e-4)
    grid = np.linspace(-8, 6, 1401)
    density = np.gradient([tracy_widom1_cdf(s) for s in grid], grid)
    assert float(np.sum(grid * density) * (grid[1] - grid[0])) == pytest.approx(-1.2065, abs=5e-3)  # mean


@pytest.mark.parametrize("d,gamma", CASES)
def test_spikes_above_bbp_are_found_and_below_are_not(d, gamma):
    """Population spikes σ²(1 + θ): θ well above √γ (the BBP threshold) are found, θ = 0.3√γ is not.

    "Found" means the kept subspace holds the spike's direction as far as the sample allows: above the BBP
    threshold the top sample eigenvector's squared overlap with the true one tends to
    (1 − γ/θ²)/(1 + γ/θ) (Paul 2007), not 1; below it the overlap tends to 0.
    """
    root = gamma**0.5
    strong, weak = [6 * root + 2, 3 * root + 0.5, 2.5 * root], [0.3 * root]
    overlap = torch.tensor([(1 - gamma / t**2) / (1 + gamma / t) for t in strong], dtype=torch.float64)
    sigma2 = 2.5
    x, directions = spiked_samples(d, gamma, strong + weak, sigma2=sigma2, seed=d)
    cov = sample_covariance(x)
    for noise in NOISE_ESTIMATORS:
        if noise == "quantile":
            continue  # the paper's raw rule is biased by design; see test_pure_noise_false_alarms
        for threshold in ("mp_edge", "tracy_widom"):
            selection = select_subspace(cov, x.shape[0], noise=noise, threshold=threshold)
            assert selection.sigma2 == pytest.approx(sigma2, rel=0.03), (noise, threshold)
            captured = (selection.basis.T @ directions).square().sum(0)  # |P Pᵀ u_i|² per true spike
            assert (captured[: len(strong)] > 0.6 * overlap).all(), (noise, threshold, captured, overlap)
            assert captured[len(strong)] < 0.2, (noise, threshold, captured)
            assert len(strong) <= selection.k <= len(strong) + (1 if threshold == "mp_edge" else 0)
            assert selection.basis.shape == (d, selection.k)
            torch.testing.assert_close(selection.basis.T @ selection.basis,
                                       torch.eye(selection.k, dtype=torch.float64))


def false_alarm_study(trials: int = 200, d: int = 150, gamma: float = 0.5) -> dict[tuple[str, str], np.ndarray]:
    """k chosen on pure noise, per (noise, threshold) rule, over ``trials`` independent draws."""
    covs = [sample_covariance(spiked_samples(d, gamma, [], seed=1000 + t)[0]) for t in range(trials)]
    n = round(d / gamma)
    rules = [("debiased_median", "tracy_widom"), ("bema", "tracy_widom"), ("mp_fit", "tracy_widom"),
             ("debiased_median", "mp_edge"), ("quantile", "mp_edge"), ("debiased_median", "gavish_donoho")]
    return {rule: np.array([select_subspace(c, n, noise=rule[0], threshold=rule[1]).k for c in covs])
            for rule in rules}


def test_pure_noise_false_alarms():
    """Measured at d = 150, γ = 0.5, 200 trials (numbers quoted in the README):
    Tracy–Widom (α = 0.01) keeps k = 0 in ≥ 95% of trials with the debiased median, BEMA or MP fit; the
    asymptotic MP edge in ~80%; the paper's raw-median rule never, keeping ~4% of the directions as 'signal'.
    """
    ks = false_alarm_study()
    for noise in ("debiased_median", "bema", "mp_fit"):
        assert np.mean(ks[(noise, "tracy_widom")] == 0) >= 0.95, noise
    assert 0.6 <= np.mean(ks[("debiased_median", "mp_edge")] == 0) < 0.95
    raw = ks[("quantile", "mp_edge")]
    assert np.mean(raw == 0) <= 0.05 and raw.mean() >= 0.02 * 150  # over-selects several % of d, every time
    assert np.mean(ks[("debiased_median", "gavish_donoho")] == 0) >= 0.99


def correlated_tokens(groups: int, tokens: int, d: int, rho: float, seed: int) -> torch.Tensor:
    """Pure noise with intra-sequence correlation rho: x_gt = a_g + e_gt, Var = 1 per coordinate."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(groups, 1, d, generator=generator, dtype=torch.float64) * rho**0.5
    return shared + torch.randn(groups, tokens, d, generator=generator, dtype=torch.float64) * (1 - rho) ** 0.5


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_effective_samples_for_correlated_tokens(rho):
    """Counting correlated tokens as samples invents signal; n_eff from the design effect removes it."""
    groups, tokens, d = 60, 32, 192
    x = correlated_tokens(groups, tokens, d, rho, seed=1)
    estimator = DesignEffectEstimator(d)
    estimator.update(x[:25])
    estimator.update(x[25:])
    assert estimator.design_effect() == pytest.approx(1 + (tokens - 1) * rho, rel=0.15, abs=0.1)
    flat = x.reshape(-1, d)
    cov = sample_covariance(flat)
    naive = select_subspace(cov, flat.shape[0])
    corrected = select_subspace(cov, flat.shape[0], n_eff=estimator.n_eff())
    assert corrected.k == 0
    if rho == 0:
        assert naive.k == 0 and estimator.n_eff() == pytest.approx(flat.shape[0], rel=0.1)
    else:
        assert naive.k >= 20  # the sequence-level noise looks like dozens of 'signal' directions


def test_design_effect_respects_padding_mask():
    x = correlated_tokens(40, 16, 24, 0.5, seed=2)
    mask = torch.arange(16).expand(40, 16) < torch.randint(4, 17, (40, 1), generator=torch.Generator().manual_seed(0))
    masked = DesignEffectEstimator(24)
    masked.update(torch.where(mask[..., None], x, torch.full_like(x, 1e6)), mask)  # padding holds junk
    assert masked.tokens == int(mask.sum()) and masked.groups == 40
    assert 1 < masked.design_effect() < 16


def test_non_isotropic_bulk_keeps_the_spikes():
    """A bulk of two noise levels (0.7 and 1.3) is not one MP law; strong spikes are still all found."""
    d, gamma = 300, 0.25
    x, directions = spiked_samples(d, gamma, [8.0, 5.0, 3.0], seed=5)
    levels = torch.ones(d, dtype=torch.float64)
    levels[: d // 2], levels[d // 2:] = 0.7, 1.3
    x = x * levels.sqrt()
    selection = select_subspace(sample_covariance(x), x.shape[0], threshold="tracy_widom")
    captured = (selection.basis.T @ directions).square().sum(0)
    assert (captured > 0.5).all()
    assert selection.k < d // 10  # some top-level bulk directions may pass, not a large share


def test_selection_from_accumulator_reports_everything():
    d = 64
    x, _ = spiked_samples(d, 0.1, [20.0, 10.0], sigma2=0.5, seed=9)
    accumulator = CovarianceAccumulator(d)
    for chunk in (x + 3.0).split(100):
        accumulator.update(chunk.float())
    selection = select_subspace(accumulator, threshold="tracy_widom")
    assert selection.k == 2 and selection.n_samples == x.shape[0] == selection.n_eff
    assert selection.gamma == pytest.approx(d / x.shape[0])
    torch.testing.assert_close(selection.mean, torch.full((d,), 3.0, dtype=torch.float64), atol=0.1, rtol=0)
    assert np.all(np.diff(selection.eigenvalues) <= 0) and selection.eigenvalues.size == d
    assert 0 < selection.variance_kept < 1
    assert selection.edge > MarchenkoPastur(selection.gamma, selection.sigma2).upper_edge  # TW is the finite-n edge
    summary = selection.to_dict()
    assert summary["k"] == 2 and len(summary["kept_eigenvalues"]) == 2 and summary["threshold_rule"] == "tracy_widom"
    assert selection.reason.startswith("k = 2 of 64")


def test_pure_noise_reason_says_so():
    x, _ = spiked_samples(80, 0.2, [], seed=3)
    selection = select_subspace(sample_covariance(x), x.shape[0], threshold="gavish_donoho")
    assert selection.k == 0 and selection.basis.shape == (80, 0)
    assert "k = 0" in selection.reason and "pure noise" in selection.reason


def test_paper_quantile_rule_uses_tau():
    x, _ = spiked_samples(200, 0.5, [], seed=4)
    cov = sample_covariance(x)
    values = torch.linalg.eigvalsh(cov).numpy()
    for tau in (0.4, 0.5):
        selection = select_subspace(cov, x.shape[0], noise="quantile", tau=tau)
        assert selection.sigma2 == pytest.approx(float(np.quantile(values, tau)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activations_in_a_subspace_keep_its_dimensions_not_rounding(dtype):
    """Activations that span r < d dimensions (a layer after a rank-r projection) have d − r eigenvalues at the
    covariance's rounding; a noise fit to those sees rounding, and without a floor the count above its edge
    would depend on the rounding (which differs between one process and several). Exactly r are kept."""
    d, r = 32, 11
    generator = torch.Generator().manual_seed(5)
    x = (torch.randn(2000, r, generator=generator, dtype=torch.float64)
         @ torch.randn(r, d, generator=generator, dtype=torch.float64) + 2.0)
    accumulator = CovarianceAccumulator(d)
    for chunk in x.to(dtype).split(300):
        accumulator.update(chunk)
    for noise in ("quantile", "debiased_median"):
        selection = select_subspace(accumulator, noise=noise, tau=0.5)
        assert selection.k == r, selection.reason
        assert selection.reason.startswith(f"k = {r} of {d}: the activations span {r} dimensions")
    full = spiked_samples(d, 0.05, [30.0, 10.0], sigma2=1e-6, seed=2)[0]  # full rank, a tiny noise floor
    assert select_subspace(sample_covariance(full), full.shape[0], noise="quantile", tau=0.5).k == 2


def test_bad_input_is_named():
    cov = sample_covariance(spiked_samples(20, 0.5, [], seed=0)[0])
    with pytest.raises(ValueError, match="n_samples: required with a ready covariance"):
        select_subspace(cov)
    with pytest.raises(ValueError, match="n_samples: expected at least 2 samples"):
        select_subspace(cov, 1)
    asymmetric = cov.clone()
    asymmetric[0, 1] += 0.5
    with pytest.raises(ValueError, match="source: expected a symmetric matrix"):
        select_subspace(asymmetric, 40)
    broken = cov.clone()
    broken[2, 2] = float("nan")
    with pytest.raises(ValueError, match="source: the covariance holds 1 NaN/Inf"):
        select_subspace(broken, 40)
    with pytest.raises(ValueError, match="source: not positive semi-definite"):
        select_subspace(cov - 2 * torch.eye(20, dtype=torch.float64), 40)
    with pytest.raises(ValueError, match=r"source: expected a square \(d, d\)"):
        select_subspace(cov[:, :5], 40)
    with pytest.raises(ValueError, match=r"n_eff: expected a number in \[2, n_samples = 40\]"):
        select_subspace(cov, 40, n_eff=50)
    with pytest.raises(ValueError, match="noise: expected one of"):
        select_subspace(cov, 40, noise="mean")
    with pytest.raises(ValueError, match="threshold: expected one of"):
        select_subspace(cov, 40, threshold="elbow")
    with pytest.raises(ValueError, match=r"tau: expected a quantile in \(0, 1\)"):
        select_subspace(cov, 40, noise="quantile", tau=1.5)
    accumulator = CovarianceAccumulator(20)
    accumulator.update(torch.randn(30, 20))
    with pytest.raises(ValueError, match="n_samples: not accepted with a CovarianceAccumulator"):
        select_subspace(accumulator, 30)
    poisoned = CovarianceAccumulator(20)
    poisoned.update(torch.full((5, 20), float("inf")))
    with pytest.raises(ValueError, match="5 of the 5 rows passed to update\\(\\) held NaN or Inf"):
        select_subspace(poisoned)

"""The MP law against independent numerical integration and simulated Wishart matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rmtkd.spectral import MarchenkoPastur

GAMMAS = [0.05, 0.3, 1.0, 2.0, 5.0]


def midpoint_integral(law: MarchenkoPastur, upper: float, points: int = 2_000_000) -> float:
    """∫ pdf from the lower edge to ``upper`` by the plain midpoint rule in x (independent of the θ table)."""
    lo = law.lower_edge
    h = (upper - lo) / points
    x = lo + h * (np.arange(points) + 0.5)
    return float(law.pdf(x).sum() * h)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_density_integrates_to_bulk_mass(gamma):
    law = MarchenkoPastur(gamma, sigma2=1.7)
    expected = 1.0 if gamma <= 1 else 1 / gamma
    assert law.bulk_mass == pytest.approx(expected)
    tolerance = 3e-3 if gamma == 1.0 else 1e-5  # 1/√x singularity at 0 when γ = 1 slows the midpoint rule
    assert midpoint_integral(law, law.upper_edge) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_cdf_matches_integrated_density_and_inverts_quantile(gamma):
    law = MarchenkoPastur(gamma, sigma2=0.6)
    for fraction in (0.1, 0.5, 0.9):
        x = law.lower_edge + fraction * (law.upper_edge - law.lower_edge)
        tolerance = 3e-3 if gamma == 1.0 else 1e-5
        assert float(law.cdf(x)) == pytest.approx(law.atom + midpoint_integral(law, x), abs=tolerance)
    q = np.linspace(law.atom + 1e-3, 1 - 1e-3, 41)
    np.testing.assert_allclose(law.cdf(law.quantile(q)), q, atol=1e-8)
    x = np.linspace(law.lower_edge, law.upper_edge, 17)[1:-1]
    np.testing.assert_allclose(law.quantile(law.cdf(x)), x, rtol=1e-7)
    assert float(law.cdf(-1.0)) == 0.0 and float(law.cdf(law.upper_edge * 2)) == pytest.approx(1.0)


def test_known_values():
    law = MarchenkoPastur(0.5)
    assert law.lower_edge == pytest.approx((1 - 0.5**0.5) ** 2)
    assert law.upper_edge == pytest.approx((1 + 0.5**0.5) ** 2)
    assert law.median() == pytest.approx(0.8305, abs=1e-4)  # the raw median is 17% below σ² at γ = 0.5
    wide = MarchenkoPastur(2.0)
    assert wide.atom == pytest.approx(0.5) and wide.median() == 0.0
    assert wide.bulk_median() == pytest.approx(2 * law.bulk_median())  # companion law: γ·MP(1/γ)


@pytest.mark.parametrize("d,n", [(400, 800), (600, 300)])
def test_median_and_edges_match_simulated_wishart(d, n):
    sigma2 = 1.7
    generator = torch.Generator().manual_seed(11)
    eigenvalues = []
    for _ in range(4):
        x = torch.randn(n, d, generator=generator, dtype=torch.float64) * sigma2**0.5
        eigenvalues.append(torch.linalg.eigvalsh(x.T @ x / n).numpy())
    values = np.concatenate(eigenvalues)
    law = MarchenkoPastur(d / n, sigma2)
    nonzero = values[values > 1e-8]
    assert nonzero.size / values.size == pytest.approx(law.bulk_mass, abs=1e-3)
    assert np.median(nonzero) == pytest.approx(law.bulk_median(), rel=0.01)
    for q in (0.3, 0.5, 0.8):
        if abs(q - law.atom) > 0.05:  # at q = atom the sample quantile sits between 0 and the bulk
            assert np.quantile(values, q) == pytest.approx(float(law.quantile(q)), rel=0.01, abs=1e-9)
    assert nonzero.max() == pytest.approx(law.upper_edge, rel=0.03)
    assert nonzero.min() == pytest.approx(law.lower_edge, rel=0.1, abs=0.01)


def test_bad_parameters():
    with pytest.raises(ValueError, match="gamma: expected a finite positive number"):
        MarchenkoPastur(0.0)
    with pytest.raises(ValueError, match="sigma2: expected a finite positive number"):
        MarchenkoPastur(0.5, float("nan"))
    with pytest.raises(ValueError, match=r"q: expected probabilities in \[0, 1\]"):
        MarchenkoPastur(0.5).quantile(1.5)

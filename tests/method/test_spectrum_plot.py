"""The spectrum plot is written, atomically, on linear and log axes."""
import pytest

from rmtkd.spectral import select_subspace
from rmtkd.spectral.plot import plot_spectrum
from tests.method.spiked import sample_covariance, spiked_samples


@pytest.mark.parametrize("spikes", [[3.0, 1.5], [2000.0, 300.0, 30.0]], ids=["linear-axis", "log-axis"])
def test_plot_writes_png(tmp_path, spikes):
    x, _ = spiked_samples(120, 0.25, spikes, seed=1)
    selection = select_subspace(sample_covariance(x), x.shape[0])
    path = plot_spectrum(selection, tmp_path / "plots" / "layer.png", title="encoder.layer.0 FFN input")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["layer.png"]  # no temporary file left behind


def test_plot_of_pure_noise(tmp_path):
    x, _ = spiked_samples(60, 2.0, [], seed=2)
    selection = select_subspace(sample_covariance(x), x.shape[0])
    assert plot_spectrum(selection, tmp_path / "noise.png").stat().st_size > 10_000

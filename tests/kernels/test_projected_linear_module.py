"""ProjectedLinear: folding a trained Linear, counts, persistence, training and torch.compile."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rmtkd_kernels import ProjectedLinear
from tests.kernels.helpers import backend_params


def orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:, :k].float()


def test_full_rank_basis_reproduces_the_linear():
    torch.manual_seed(0)
    linear = nn.Linear(31, 17)
    layer = ProjectedLinear.from_linear(linear, orthonormal(31, 31))
    x = torch.randn(4, 9, 31)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.to_linear().weight, linear.weight, rtol=1e-5, atol=1e-5)


def test_low_rank_inputs_with_mean_are_exact():
    """Inputs in μ + span(P): the projection loses nothing once the mean is folded into the bias."""
    torch.manual_seed(1)
    d, k = 40, 6
    basis = orthonormal(d, k, seed=2)
    mean = torch.randn(d) * 3
    x = mean + torch.randn(128, k) @ basis.T
    linear = nn.Linear(d, 23)
    layer = ProjectedLinear.from_linear(linear, basis, mean=mean)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-4, atol=1e-4)
    without_mean = ProjectedLinear.from_linear(linear, basis)
    assert (without_mean(x) - linear(x)).abs().max() > 1e-2  # the mean's residual is what the bias carries


def test_counts_and_repr():
    layer = ProjectedLinear(768, 3072, 128)
    assert layer.num_parameters() == sum(p.numel() for p in layer.parameters()) == 128 * (768 + 3072) + 3072
    assert layer.flops(rows=10) == 2 * 10 * 128 * (768 + 3072)
    assert repr(layer) == "ProjectedLinear(in_features=768, rank=128, out_features=3072, bias=True)"
    assert ProjectedLinear(8, 4, 2, bias=False).num_parameters() == 2 * 12


def test_state_dict_round_trip():
    layer = ProjectedLinear(20, 12, 5)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = ProjectedLinear(20, 12, 5)
    restored.load_state_dict(torch.load(buffer))
    x = torch.randn(3, 20)
    assert torch.equal(layer(x), restored(x))


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_flop_counter_charges_every_backend_the_layers_two_products(device, backend):
    """A fused kernel is opaque to torch's FLOP counter: the op's registered formula charges what the reference's
    two matmuls are charged, so reports and FLOP budgets count alike on every backend."""
    layer = ProjectedLinear(37, 29, 7, backend=backend).to(device)
    x = torch.randn(3, 11, 37, device=device)[:, ::2]  # 18 rows, not contiguous
    expected = layer.flops(rows=18)
    assert expected == 2 * 18 * 7 * (37 + 29)
    for run in (lambda: layer(x),  # as the layer dispatches it (the reference is plain torch)
                lambda: torch.ops.rmtkd.projected_linear(x.reshape(-1, 37), layer.basis, layer.weight, layer.bias,
                                                         backend)):  # through the opaque op
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            run()
        assert counter.get_total_flops() == expected


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_trains(device, backend):
    """A few Adam steps on a regression target reduce the loss, through the op's autograd."""
    torch.manual_seed(3)
    layer = ProjectedLinear(16, 8, 4, backend=backend).to(device)
    target = nn.Linear(16, 8).to(device)
    x = torch.randn(64, 16, device=device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (layer(x) - target(x).detach()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_autocast_runs_in_autocast_dtype():
    layer = ProjectedLinear(16, 8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(5, 16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_torch_compile_fullgraph_matches_eager(device, backend):
    """The reference is traced as plain torch; the other backends go through the custom op and its fake."""
    torch.manual_seed(4)
    model = nn.Sequential(ProjectedLinear(24, 32, 8, backend=backend), nn.GELU(),
                          ProjectedLinear(32, 5, 6, backend=backend)).to(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(7, 24, device=device, requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()  # autograd through the compiled graph
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_input_names_the_argument():
    linear = nn.Linear(10, 4)
    with pytest.raises(ValueError, match="basis: expected shape \\(10, k\\)"):
        ProjectedLinear.from_linear(linear, torch.randn(9, 3))
    with pytest.raises(ValueError, match="basis: expected orthonormal"):
        ProjectedLinear.from_linear(linear, torch.randn(10, 3))
    with pytest.raises(ValueError, match="mean: expected shape \\(10,\\)"):
        ProjectedLinear.from_linear(linear, orthonormal(10, 3), mean=torch.zeros(3))
    with pytest.raises(ValueError, match="linear: expected an nn.Linear"):
        ProjectedLinear.from_linear(nn.Conv1d(10, 4, 1), orthonormal(10, 3))
    with pytest.raises(ValueError, match="rank: expected a positive int"):
        ProjectedLinear(10, 4, 0)
    with pytest.raises(ValueError, match="x: expected a tensor of shape \\(..., 10\\), got shape \\(2, 11\\)"):
        ProjectedLinear(10, 4, 3)(torch.randn(2, 11))
    with pytest.raises(ValueError, match="x: expected a tensor of shape \\(..., 10\\), got shape \\(\\)"):
        ProjectedLinear(10, 4, 3)(torch.tensor(1.0))
    with pytest.raises(ValueError, match="x: expected a tensor of shape \\(..., 10\\), got list"):
        ProjectedLinear(10, 4, 3)([1.0] * 10)
    with pytest.raises(ValueError, match="x: expected dtype torch.float32 .*got torch.float64"):
        ProjectedLinear(10, 4, 3)(torch.randn(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: expected a tensor on cpu"):
        ProjectedLinear(10, 4, 3)(torch.randn(2, 10, device="meta"))


def test_non_finite_bases_and_impossible_sizes_are_named():
    linear = nn.Linear(8, 5)
    with pytest.raises(ValueError, match="basis: expected finite values, got 16 NaN/Inf entries"):
        ProjectedLinear.from_linear(linear, torch.full((8, 2), float("nan")))
    with pytest.raises(ValueError, match="mean: expected finite values"):
        ProjectedLinear.from_linear(linear, torch.eye(8)[:, :2], mean=torch.full((8,), float("inf")))
    with pytest.raises(ValueError, match=r"in_features: a 100000000 × 100000000 basis needs"):
        ProjectedLinear(100_000_000, 4, 100_000_000)

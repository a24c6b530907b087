"""rmtkd::projected_linear: every backend against float64, autograd, opcheck."""
from __future__ import annotations

import pytest
import torch

from rmtkd_kernels.ops import projected_linear
from tests.kernels.helpers import backend_params, dtypes_for, in_layout

# (rows, d_in, k, d_out): odd sizes, k = 1, k > one Triton k-slice, d_in > one d-panel
SHAPES = [(1, 45, 19, 70), (7, 130, 1, 33), (33, 45, 40, 70), (50, 17, 17, 129)]


def make_inputs(rows, d_in, k, d_out, dtype, device, layout, seed):
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, d_in, device=device, generator=generator)
    basis = torch.randn(d_in, k, device=device, generator=generator) / d_in**0.5
    weight = torch.randn(d_out, k, device=device, generator=generator) / k**0.5
    bias = torch.randn(d_out, device=device, generator=generator)
    x, basis, weight = (in_layout(t.to(dtype), layout) for t in (x, basis, weight))
    return x, basis, weight, bias.to(dtype)


def float64_reference(x, basis, weight, bias):
    y = (x.double() @ basis.double()) @ weight.double().T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_float64_within_torch_lowprec_error(device, backend, shape, layout, with_bias):
    """The kernel's error against float64 is at most twice that of torch's two matmuls in the same dtype."""
    for dtype in dtypes_for(backend, device):
        x, basis, weight, bias = make_inputs(*shape, dtype, device, layout, seed=sum(shape))
        bias = bias if with_bias else None
        exact = float64_reference(x, basis, weight, bias)
        y = projected_linear(x, basis, weight, bias, backend=backend)
        assert y.dtype == dtype and y.shape == exact.shape
        torch_err = (projected_linear(x, basis, weight, bias, backend="reference").double() - exact).abs().max()
        err = (y.double() - exact).abs().max()
        floor = 1e-6 * exact.abs().max()  # fp32 torch can be exact on tiny sizes
        assert err <= 2 * torch_err + floor, f"{dtype}: error {err:.3g} vs torch {torch_err:.3g}"


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_leading_dimensions_and_empty_input(device, backend):
    x = torch.randn(2, 3, 5, 24, device=device)
    basis, weight = torch.randn(24, 6, device=device), torch.randn(11, 6, device=device)
    y = projected_linear(x, basis, weight, backend=backend)
    assert y.shape == (2, 3, 5, 11)
    torch.testing.assert_close(y.double(), float64_reference(x.reshape(-1, 24), basis, weight, None).reshape(y.shape),
                               rtol=1e-5, atol=1e-5)
    assert projected_linear(x[:0], basis, weight, backend=backend).shape == (0, 3, 5, 11)


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_gradients_match_float64(device, backend):
    x, basis, weight, bias = make_inputs(9, 21, 7, 13, torch.float32, device, "contiguous", seed=3)
    leaves = [t.detach().clone().requires_grad_() for t in (x, basis, weight, bias)]
    projected_linear(*leaves, backend=backend).square().sum().backward()
    exact = [t.detach().double().requires_grad_() for t in (x, basis, weight, bias)]
    float64_reference(*exact).square().sum().backward()
    for leaf, ref in zip(leaves, exact):
        torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64():
    inputs = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((6, 9), (9, 4), (5, 4), (5,))]
    assert torch.autograd.gradcheck(lambda *a: projected_linear(*a, backend="reference"), inputs)
    assert torch.autograd.gradcheck(lambda x, p, w: projected_linear(x, p, w, backend="reference"), inputs[:3])


@pytest.mark.parametrize("device,backend", backend_params("projected_linear"))
def test_opcheck(device, backend):
    x, basis, weight, bias = make_inputs(5, 20, 6, 10, torch.float32, device, "contiguous", seed=1)
    for b in (bias, None):
        args = (x, basis.requires_grad_(), weight.requires_grad_(), b, backend)
        torch.library.opcheck(torch.ops.rmtkd.projected_linear.default, args)

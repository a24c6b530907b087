"""The public custom ops ``rmtkd::cov_accumulate`` and ``rmtkd::projected_linear``.

Each is a torch.library custom op with a fake (meta) kernel, and projected_linear has autograd, so both work
under torch.compile(fullgraph=True) and in training. The op takes the backend's name as its last argument and
runs that backend's kernel from the registry (rmtkd_kernels.backends); the Python wrappers below validate
arguments, choose the backend and call the op.
Decision: the reference backend is called directly, not through the op. It is plain differentiable torch that
autograd and torch.compile already see through, and the custom-op boundary would cost ~5 µs a call (twice a
two-matmul layer's own time at batch 1 on CPU). The op accepts "reference" too, so opcheck covers it.
"""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from rmtkd_kernels import reference
from rmtkd_kernels.backends import choose_backend, get_backend
from rmtkd_kernels.backends.chooser import is_forced, report_failure
from rmtkd_kernels.validation import check_cov_args, check_projected_linear_args


# ---------------------------------------------------------------- cov_accumulate
@torch.library.custom_op("rmtkd::cov_accumulate", mutates_args=("gram", "colsum", "nonfinite_rows"))
def _cov_accumulate_op(
    x: Tensor, gram: Tensor, colsum: Tensor, nonfinite_rows: Tensor, row_mask: Optional[Tensor], backend: str
) -> None:
    get_backend(backend).kernel("cov_accumulate")(x, gram, colsum, nonfinite_rows, row_mask)


@_cov_accumulate_op.register_fake
def _cov_accumulate_fake(x, gram, colsum, nonfinite_rows, row_mask, backend) -> None:
    return None


def cov_accumulate(
    x: Tensor,
    gram: Tensor,
    colsum: Tensor,
    nonfinite_rows: Tensor,
    row_mask: Optional[Tensor] = None,
    *,
    backend: Optional[str] = None,
) -> None:
    """Streaming covariance step, in place: gram += XᵀX, colsum += Σ rows of X, nonfinite_rows += #bad rows.

    x: (n, d) chunk, float32/float16/bfloat16/float64, any strides. gram: (d, d) float64 or float32,
    contiguous; on return its upper triangle (diagonal included) holds the sum, its strict lower triangle is
    unspecified (read it through CovarianceAccumulator or ``torch.triu`` + transpose). colsum: (d,) float64.
    nonfinite_rows: int64 scalar counting counted rows that held NaN/Inf (they poison gram; the accumulator
    raises when read). row_mask: optional bool (n,), False rows (e.g. padding) contribute nothing.
    Products are formed in fp32 (float64 for float64 input) and added into gram's dtype.
    """
    check_cov_args(x, gram, colsum, nonfinite_rows, row_mask)
    name = choose_backend("cov_accumulate", x, backend)
    if name == "reference":
        reference.cov_accumulate_ref(x, gram, colsum, nonfinite_rows, row_mask)
        return
    # Every kernel writes the caller's buffers only in its last launch, so one that raises has written nothing.
    _run_or_fall_back(
        "cov_accumulate", x, tuple(x.shape), backend, name,
        lambda: torch.ops.rmtkd.cov_accumulate(x, gram, colsum, nonfinite_rows, row_mask, name),
        lambda: reference.cov_accumulate_ref(x, gram, colsum, nonfinite_rows, row_mask))


Result = TypeVar("Result")


def _run_or_fall_back(op: str, x: Tensor, sizes: tuple[int, ...], backend: Optional[str], name: str,
                      call: Callable[[], Result], fallback: Callable[[], Result]) -> Result:
    """Run an automatically chosen kernel; if it raises (a compile or launch failure its trials did not meet),
    demote it for this size bucket with one warning and run the reference instead. A forced backend raises."""
    if torch.compiler.is_compiling() or is_forced(op, backend):
        return call()
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - any failure of the kernel; the reference is always correct
        report_failure(op, x, sizes, name, error)
        return fallback()


# ---------------------------------------------------------------- projected_linear
@torch.library.custom_op("rmtkd::projected_linear", mutates_args=())
def _projected_linear_op(x: Tensor, basis: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    return get_backend(backend).kernel("projected_linear")(x, basis, weight, bias)


@_projected_linear_op.register_fake
def _projected_linear_fake(x, basis, weight, bias, backend) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _projected_linear_setup(ctx, inputs, output) -> None:
    x, basis, weight, bias, _ = inputs
    ctx.save_for_backward(x, basis, weight)
    ctx.has_bias = bias is not None


def _projected_linear_backward(ctx, grad: Tensor):
    """Gradients of y = (x P) Wᵀ + b; the intermediate x P is recomputed rather than stored."""
    x, basis, weight = ctx.saved_tensors
    grad_hidden = grad @ weight
    grad_x = grad_hidden @ basis.T if ctx.needs_input_grad[0] else None
    grad_basis = x.T @ grad_hidden if ctx.needs_input_grad[1] else None
    grad_weight = grad.T @ (x @ basis) if ctx.needs_input_grad[2] else None
    grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return grad_x, grad_basis, grad_weight, grad_bias, None


_projected_linear_op.register_autograd(_projected_linear_backward, setup_context=_projected_linear_setup)


@register_flop_formula(torch.ops.rmtkd.projected_linear)
def _projected_linear_flops(x_shape, basis_shape, weight_shape, *args, **kwargs) -> int:
    """What torch's FLOP counter charges the op: its two products, as it charges the reference's two matmuls (a
    backend's kernel is opaque to the counter, which would otherwise count nothing)."""
    rows, rank, out_features = x_shape[0], basis_shape[1], weight_shape[0]
    return 2 * rows * rank * (basis_shape[0] + out_features)


def projected_linear(
    x: Tensor, basis: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: Optional[str] = None
) -> Tensor:
    """y = (x @ basis) @ weightᵀ + bias with x (..., d_in), basis (d_in, k), weight (d_out, k), bias (d_out,).

    The fused backends keep the k-wide intermediate on chip; the reference runs two matmuls.
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a tensor of shape (..., d_in) with d_in >= 1, got {type(x).__name__}"
                         + (f" of shape {tuple(x.shape)}" if isinstance(x, Tensor) else ""))
    check_projected_linear_args(x.reshape(-1, x.shape[-1]), basis, weight, bias)
    return projected_linear_unchecked(x, basis, weight, bias, backend)


def projected_linear_unchecked(
    x: Tensor, basis: Tensor, weight: Tensor, bias: Optional[Tensor], backend: Optional[str]
) -> Tensor:
    """:func:`projected_linear` without its argument checks, for callers whose arguments are known to fit
    (ProjectedLinear checks x against its own parameters). The full checks take ~5 µs, about a third of a
    384-wide layer's time for one row on CPU."""
    sizes = (x.numel() // x.shape[-1], x.shape[-1], basis.shape[1], weight.shape[0])
    name = choose_backend("projected_linear", x, backend, sizes)
    if name == "reference":
        return reference.projected_linear_ref(x, basis, weight, bias)
    y = _run_or_fall_back(
        "projected_linear", x, sizes, backend, name,
        lambda: torch.ops.rmtkd.projected_linear(x.reshape(-1, x.shape[-1]), basis, weight, bias, name),
        lambda: reference.projected_linear_ref(x.reshape(-1, x.shape[-1]), basis, weight, bias))
    return y.reshape(*x.shape[:-1], weight.shape[0])

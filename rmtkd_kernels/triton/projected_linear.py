"""Triton fused projected linear: y = (x @ P) @ Wᵀ + b with the k-wide intermediate kept in registers.

Grid: (row blocks, output blocks). Each program walks k in BLOCK_K slices: it computes the slice
h = x_blk @ P[:, slice] (fp32 accumulation) and immediately folds it into y_blk += h @ W[out_blk, slice]ᵀ, so no
intermediate ever reaches global memory. Programs sharing a row block recompute h (cheap while rows are few:
the op is memory-bound there, and P stays in L2); at large row counts the dispatcher uses two GEMMs instead.
The intermediate is rounded to the input dtype before the second product, as the two-matmul path does.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from rmtkd_kernels.triton.launch import device_of


@triton.jit
def _projected_linear_kernel(
    x_ptr, p_ptr, w_ptr, b_ptr, y_ptr,
    M, D_IN, K, D_OUT,
    stride_xm, stride_xd, stride_pd, stride_pk, stride_wo, stride_wk, stride_ym, stride_yo,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    r_ok = rows < M
    o_ok = outs < D_OUT
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm  # every index · stride product in int64
    outs64 = outs.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        hidden = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D_IN, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D_IN
            ds64 = ds.to(tl.int64)
            xt = tl.load(x_rows + ds64[None, :] * stride_xd, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
            pt = tl.load(p_ptr + ds64[:, None] * stride_pd + ks[None, :].to(tl.int64) * stride_pk,
                         mask=d_ok[:, None] & k_ok[None, :], other=0.0)
            hidden = tl.dot(xt, pt, hidden, input_precision=INPUT_PRECISION)
        wt = tl.load(w_ptr + outs64[None, :] * stride_wo + ks[:, None].to(tl.int64) * stride_wk,
                     mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(hidden.to(wt.dtype), wt, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + outs, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_ym + outs64[None, :] * stride_yo
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=r_ok[:, None] & o_ok[None, :])


def projected_linear_triton(
    x: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    m, d_in = x.shape
    k, d_out = basis.shape[1], weight.shape[0]
    y = torch.empty((m, d_out), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    block_m, block_d, block_k, block_o = 16, 64, 32, 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(d_out, block_o))
    bias = bias.contiguous() if bias is not None else None  # the kernel reads the bias with stride 1
    with device_of(x):
        _projected_linear_kernel[grid](
            x, basis, weight, bias if bias is not None else y, y,
            m, d_in, k, d_out,
            x.stride(0), x.stride(1), basis.stride(0), basis.stride(1),
            weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None,
            INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_K=block_k, BLOCK_O=block_o,
            num_warps=4,
        )
    return y

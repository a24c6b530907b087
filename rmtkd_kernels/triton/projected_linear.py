"""Triton fused projected linear: y = (x @ P) @ Wᵀ + b with the k-wide intermediate computed once and kept on chip.

Grid: (row blocks, d_in splits). A program computes its row block's intermediate h = x_blk @ P (k ≤ 256, padded
to a power of two, fp32 accumulation) over its slice of d_in, then loops over the output tiles, multiplying the
same on-chip h by each W tile, as FlashAttention keeps its scores on chip while it walks the values. No
intermediate reaches global memory and no FLOP is repeated.

Small row counts leave most of the GPU idle with one program per row block, so there the d_in reduction is
spread over several programs (split-K): y is linear in each slice's partial h, so each program adds its partial
output into an fp32 workspace with relaxed atomics (the bias added once), cast to y's dtype at the end.
The intermediate is rounded to the input dtype before the second product, as the two-matmul path does. fp32
input is multiplied as the SYRK does (``launch.fp32_precision``).
Automatic choice uses this kernel only where its trials show it faster than the two-matmul reference.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from rmtkd_kernels.triton.launch import device_of, fp32_precision

MAX_K = 256  # the intermediate (BLOCK_M × k) lives in registers
# (BLOCK_M, BLOCK_D, BLOCK_O, num_warps, num_stages) the launcher picks from, by input width and row count. fp32
# tiles are the largest that keep a 256-wide intermediate without spills on sm_80 and sm_90.
CONFIGS = {"16bit-few-rows": (16, 64, 64, 4, 3), "16bit-many-rows": (64, 64, 64, 8, 2), "fp32": (16, 32, 32, 4, 2)}
FEW_ROWS = 64
INTERPRETER_CONFIG = (16, 32, 32, 4, 1)


@triton.jit
def _projected_linear_kernel(
    x_ptr, p_ptr, w_ptr, b_ptr, y_ptr, ws_ptr,
    M, D_IN, K, D_OUT, d_per_split,
    stride_xm, stride_xd, stride_pd, stride_pk, stride_wo, stride_wk, stride_ym, stride_yo,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < M
    ks = tl.arange(0, K_PAD)
    k_ok = ks < K
    ks64 = ks.to(tl.int64)
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm  # every index · stride product in int64
    d_begin = tl.program_id(1) * d_per_split
    d_end = tl.minimum(d_begin + d_per_split, D_IN)
    hidden = tl.zeros((BLOCK_M, K_PAD), dtype=tl.float32)
    for d0 in range(d_begin, d_end, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < d_end
        ds64 = ds.to(tl.int64)
        xt = tl.load(x_rows + ds64[None, :] * stride_xd, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        pt = tl.load(p_ptr + ds64[:, None] * stride_pd + ks64[None, :] * stride_pk,
                     mask=d_ok[:, None] & k_ok[None, :], other=0.0)
        hidden = tl.dot(xt, pt, hidden, input_precision=INPUT_PRECISION)
    h = hidden.to(x_ptr.dtype.element_ty)
    first_split = tl.program_id(1) == 0  # adds the bias (once, whatever the split)
    for o0 in range(0, D_OUT, BLOCK_O):
        outs = o0 + tl.arange(0, BLOCK_O)
        o_ok = outs < D_OUT
        outs64 = outs.to(tl.int64)
        wt = tl.load(w_ptr + outs64[None, :] * stride_wo + ks64[:, None] * stride_wk,
                     mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(h, wt, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + outs, mask=o_ok & first_split, other=0.0).to(tl.float32)[None, :]
        out_ok = r_ok[:, None] & o_ok[None, :]
        if SPLIT:
            ws_ptrs = ws_ptr + rows[:, None].to(tl.int64) * D_OUT + outs64[None, :]
            tl.atomic_add(ws_ptrs, acc, mask=out_ok, sem="relaxed")
        else:
            y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_ym + outs64[None, :] * stride_yo
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def k_padded(k: int) -> int:
    """The intermediate's width in the kernel: k rounded up to a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(k))


def launch_config(m: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_O, num_warps, num_stages) for m rows of dtype."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    if dtype == torch.float32:
        return CONFIGS["fp32"]
    return CONFIGS["16bit-few-rows" if m <= FEW_ROWS else "16bit-many-rows"]


def d_splits(row_blocks: int, d_in: int, block_d: int, device: torch.device) -> int:
    """How many programs share one row block's d_in reduction: enough to give every SM one program, each
    keeping at least two d-panels; one where the row blocks already fill the GPU (or on the interpreter)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if row_blocks >= sms:
        return 1
    return max(1, min(triton.cdiv(sms, row_blocks), d_in // (2 * block_d)))


def projected_linear_triton(
    x: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    m, d_in = x.shape
    k, d_out = basis.shape[1], weight.shape[0]
    if k > MAX_K:
        raise ValueError(f"basis: the triton projected_linear keeps the k-wide intermediate in registers and takes "
                         f"k <= {MAX_K}, got k = {k} (the reference backend runs any k)")
    y = torch.empty((m, d_out), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    block_m, block_d, block_o, num_warps, num_stages = launch_config(m, x.dtype, x.device)
    row_blocks = triton.cdiv(m, block_m)
    splits = d_splits(row_blocks, d_in, block_d, x.device)
    d_per_split = triton.cdiv(triton.cdiv(d_in, splits), block_d) * block_d
    splits = triton.cdiv(d_in, d_per_split)
    workspace = torch.zeros((m, d_out), dtype=torch.float32, device=x.device) if splits > 1 else y
    bias = bias.contiguous() if bias is not None else None  # the kernel reads the bias with stride 1
    with device_of(x):
        _projected_linear_kernel[(row_blocks, splits)](
            x, basis, weight, bias if bias is not None else y, y, workspace,
            m, d_in, k, d_out, d_per_split,
            x.stride(0), x.stride(1), basis.stride(0), basis.stride(1),
            weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None,
            SPLIT=splits > 1,
            INPUT_PRECISION=fp32_precision() if x.dtype == torch.float32 else "tf32",  # tf32: unused for 16-bit
            BLOCK_M=block_m, BLOCK_D=block_d, K_PAD=k_padded(k), BLOCK_O=block_o,
            num_warps=num_warps, num_stages=num_stages,
        )
    if splits > 1:
        y.copy_(workspace)
    return y

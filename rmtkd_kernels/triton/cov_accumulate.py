"""Triton SYRK for the streaming covariance: gram += XᵀX (upper tiles only), colsum += Σ rows, NaN/Inf rows flagged.

One program owns one upper-triangle output tile (tile_i <= tile_j) and one slice of the rows (split-K, so that
small d still fills the GPU). It keeps its BLOCK_D × BLOCK_D tile in fp32 registers over all its rows
(tensor cores for fp16/bf16; exact fp32 ``ieee`` products for fp32 input, never TF32) and adds the partial
into the float64/float32 accumulator with one atomic add per element at the end. Diagonal programs see every
element of their column block once, so they also produce the column sums and flag rows holding NaN/Inf: no
extra pass over X and no host synchronisation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from rmtkd_kernels.triton.launch import device_of


@triton.jit
def _cov_syrk_kernel(
    x_ptr, mask_ptr, gram_ptr, colsum_ptr, flag_ptr,
    n, d, rows_per_split,
    stride_xn, stride_xd,
    HAS_MASK: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tile_i = tl.program_id(0)
    tile_j = tl.program_id(1)
    if tile_i > tile_j:
        return
    row_start = tl.program_id(2) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n)
    cols_i = tile_i * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_j = tile_j * BLOCK_D + tl.arange(0, BLOCK_D)
    # Offsets in int64: a column-major x with 10⁶ rows has stride_xd = 10⁶, and col · stride passes 2³¹.
    col_off_i = cols_i[None, :].to(tl.int64) * stride_xd
    col_off_j = cols_j[None, :].to(tl.int64) * stride_xd
    ci_ok = cols_i < d
    cj_ok = cols_j < d
    is_diag = tile_i == tile_j
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    col_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        r_ok = rows < row_end
        if HAS_MASK:
            r_ok = r_ok & (tl.load(mask_ptr + rows, mask=r_ok, other=0) != 0)
        row_off = rows[:, None].to(tl.int64) * stride_xn
        a = tl.load(x_ptr + row_off + col_off_i, mask=r_ok[:, None] & ci_ok[None, :], other=0.0)
        b = tl.load(x_ptr + row_off + col_off_j, mask=r_ok[:, None] & cj_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)
        if is_diag:
            a32 = a.to(tl.float32)
            col_acc += tl.sum(a32, axis=0)
            nonfinite = (a32 != a32) | (tl.abs(a32) == float("inf"))
            row_bad = tl.sum(nonfinite.to(tl.int32), axis=1) > 0
            tl.atomic_max(flag_ptr + rows, tl.full((BLOCK_N,), 1, tl.int32), mask=row_bad)
    out_ptrs = gram_ptr + cols_i[:, None].to(tl.int64) * d + cols_j[None, :]
    if ACC_FP64:
        tl.atomic_add(out_ptrs, acc.to(tl.float64), mask=ci_ok[:, None] & cj_ok[None, :])
    else:
        tl.atomic_add(out_ptrs, acc, mask=ci_ok[:, None] & cj_ok[None, :])
    if is_diag:
        tl.atomic_add(colsum_ptr + cols_i, col_acc.to(tl.float64), mask=ci_ok)


def _launch_shape(n: int, d: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_N, splits, rows_per_split, num_warps): enough programs to fill the device.

    Heuristic, not autotuned: autotuning would re-run an accumulating kernel and add XᵀX several times.
    """
    if device.type != "cuda":  # interpreter: few, large programs keep numpy overhead down
        return 32, 32, 1, max(n, 1), 4
    block_d, block_n = 128, 32
    tiles = math.ceil(d / block_d) * (math.ceil(d / block_d) + 1) // 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    splits = max(1, min(math.ceil(2 * sms / tiles), math.ceil(n / 512)))
    rows_per_split = math.ceil(math.ceil(n / splits) / block_n) * block_n
    splits = math.ceil(n / rows_per_split) if n else 1
    return block_d, block_n, splits, rows_per_split, 8


def cov_accumulate_triton(
    x: torch.Tensor,
    gram: torch.Tensor,
    colsum: torch.Tensor,
    nonfinite_rows: torch.Tensor,
    row_mask: Optional[torch.Tensor] = None,
) -> None:
    n, d = x.shape
    if n == 0:
        return
    block_d, block_n, splits, rows_per_split, num_warps = _launch_shape(n, d, x.device)
    flags = torch.zeros(n, dtype=torch.int32, device=x.device)
    mask = row_mask.contiguous() if row_mask is not None else flags  # any pointer; unused without HAS_MASK
    tiles = triton.cdiv(d, block_d)
    with device_of(x):
        _cov_syrk_kernel[(tiles, tiles, splits)](
            x, mask, gram, colsum, flags,
            n, d, rows_per_split,
            x.stride(0), x.stride(1),
            HAS_MASK=row_mask is not None,
            ACC_FP64=gram.dtype == torch.float64,
            INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    nonfinite_rows += flags.sum()

"""Triton SYRK for the streaming covariance: gram += XᵀX (upper tiles only), colsum += Σ rows, NaN/Inf rows counted.

Two kernels. The SYRK: one program owns one upper-triangle output tile (a 1-D grid over the list of upper tile
pairs, so no program starts only to return) and one slice of the rows (split-K, so that small d still fills the
GPU). It keeps its BLOCK_D × BLOCK_D tile in fp32 registers over its rows (tensor cores: fp16/bf16 directly,
fp32 through ``tf32x3``, three TF32 products that recover fp32 accuracy; exact ``ieee`` FMAs where
RMTKD_TRITON_FP32=ieee) and adds the partial into the float64/float32 accumulator with one relaxed atomic add
per element (no memory fence: the adds commute, and the launch boundary orders them for the reader). The
column sums and NaN/Inf row flags are a second, memory-bound pass over X, so the SYRK's diagonal programs do no
more work than the others. No host synchronisation either way.

The split count makes the grid fill whole waves at the occupancy the compiled kernel really has (read from its
register and shared-memory use after the first launch).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl

from rmtkd_kernels.triton.launch import device_of, fp32_precision

# (BLOCK_D, BLOCK_N, num_warps, num_stages) the launcher picks from, by input width and d; the static checks
# compile each (row-major, column-major, d without a factor of 16). fp32 operands take twice the registers and
# shared memory (and tf32x3 three products): smaller tiles, the largest without spills on sm_80 and sm_90
# (benchmarks/results/static/).
SYRK_CONFIGS = {"16bit-wide": (128, 32, 8, 3), "16bit-narrow": (64, 64, 4, 3), "fp32": (64, 32, 8, 3)}
COLSUM_CONFIG = (128, 64, 4)  # BLOCK_C, BLOCK_N, num_warps
INTERPRETER_BLOCK = 32  # few, large programs keep the interpreter's numpy overhead down


@triton.jit
def _cov_syrk_kernel(
    x_ptr, mask_ptr, gram_ptr, pairs_ptr,
    n, d, rows_per_split,
    stride_xn, stride_xd,
    HAS_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tile_i = tl.load(pairs_ptr + 2 * tl.program_id(0))
    tile_j = tl.load(pairs_ptr + 2 * tl.program_id(0) + 1)
    row_start = tl.program_id(1) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n)
    # Block pointers: bounds checked against (n, d) without materialising 2-D offset and mask tensors (the
    # registers they would take are what tiles this large cannot spare). rows_per_split is a multiple of
    # BLOCK_N, so no step reads into the next split's rows.
    # Their offsets and strides are 64-bit: col · stride_xd may pass 2³¹ for a column-major x.
    a_blocks = tl.make_block_ptr(x_ptr, shape=(n, d), strides=(stride_xn, stride_xd),
                                 offsets=(row_start, tile_i * BLOCK_D), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    b_blocks = tl.make_block_ptr(x_ptr, shape=(n, d), strides=(stride_xn, stride_xd),
                                 offsets=(row_start, tile_j * BLOCK_D), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        a = tl.load(a_blocks, boundary_check=(0, 1), padding_option="zero")
        b = tl.load(b_blocks, boundary_check=(0, 1), padding_option="zero")
        if HAS_MASK:
            rows = start + tl.arange(0, BLOCK_N)
            keep = tl.load(mask_ptr + rows, mask=rows < row_end, other=0) != 0
            a = tl.where(keep[:, None], a, tl.zeros_like(a))  # both: a masked-out row may hold NaN
            b = tl.where(keep[:, None], b, tl.zeros_like(b))
        acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)
        a_blocks = tl.advance(a_blocks, (BLOCK_N, 0))
        b_blocks = tl.advance(b_blocks, (BLOCK_N, 0))
    # Epilogue in two halves (even and odd columns): a whole tile converted to float64 at once, with its 64-bit
    # addresses, would need twice the registers of the fp32 tile.
    cols_i = tile_i * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_even = tile_j * BLOCK_D + 2 * tl.arange(0, BLOCK_D // 2)
    even, odd = tl.split(tl.reshape(acc, (BLOCK_D, BLOCK_D // 2, 2)))
    rows_ptr = gram_ptr + cols_i[:, None].to(tl.int64) * d
    ci_ok = cols_i[:, None] < d
    cols_odd = cols_even + 1
    out_type = gram_ptr.dtype.element_ty
    # "+ 0.0" gives the interpreter a fresh array: its atomic_add misreads the strided view tl.split returns.
    tl.atomic_add(rows_ptr + cols_even[None, :], even.to(out_type) + 0.0, mask=ci_ok & (cols_even[None, :] < d),
                  sem="relaxed")
    tl.atomic_add(rows_ptr + cols_odd[None, :], odd.to(out_type) + 0.0, mask=ci_ok & (cols_odd[None, :] < d),
                  sem="relaxed")


@triton.jit
def _colsum_kernel(
    x_ptr, mask_ptr, colsum_ptr, flag_ptr,
    n, d, rows_per_split,
    stride_xn, stride_xd,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """colsum += fp32 partial column sums of counted rows; flag[row] = 1 for counted rows holding NaN/Inf."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < d
    col_off = cols[None, :].to(tl.int64) * stride_xd
    row_start = tl.program_id(1) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n)
    sums = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        r_ok = rows < row_end
        if HAS_MASK:
            r_ok = r_ok & (tl.load(mask_ptr + rows, mask=r_ok, other=0) != 0)
        v = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xn + col_off, mask=r_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
        sums += tl.sum(v, axis=0)
        nonfinite = (v != v) | (tl.abs(v) == float("inf"))
        row_bad = tl.sum(nonfinite.to(tl.int32), axis=1) > 0
        tl.atomic_max(flag_ptr + rows, tl.full((BLOCK_N,), 1, tl.int32), mask=row_bad, sem="relaxed")
    tl.atomic_add(colsum_ptr + cols, sums.to(tl.float64), mask=c_ok, sem="relaxed")


def syrk_config(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps, num_stages) for x (n, d): by its dtype and width."""
    if x.device.type != "cuda":
        return INTERPRETER_BLOCK, INTERPRETER_BLOCK, 4, 1
    if x.dtype == torch.float32:
        return SYRK_CONFIGS["fp32"]
    return SYRK_CONFIGS["16bit-narrow" if x.shape[1] <= 128 else "16bit-wide"]


# Resident programs per SM of each compiled SYRK variant, learnt from its first launch: key -> count.
_PROGRAMS_PER_SM: dict[tuple, int] = {}
_TILE_PAIRS: dict[tuple[int, str], torch.Tensor] = {}


def programs_per_sm(compiled, num_warps: int, device: torch.device) -> int:
    """How many programs of a compiled kernel fit on one SM at once (registers, shared memory, threads)."""
    props = torch.cuda.get_device_properties(device)
    threads = 32 * num_warps
    limits = [props.max_threads_per_multi_processor // threads]
    regs = getattr(compiled, "n_regs", 0) or 0
    if regs:
        limits.append(props.regs_per_multiprocessor // (regs * threads))
    shared = getattr(getattr(compiled, "metadata", None), "shared", 0) or 0
    if shared:
        limits.append(props.shared_memory_per_multiprocessor // shared)
    return max(1, min(limits))


def split_count(tiles: int, n: int, block_n: int, slots: int) -> int:
    """Row splits so that tiles · splits programs fill whole waves of ``slots`` resident programs: the fewest
    splits within 5% of full waves, each split keeping at least four row blocks."""
    most = max(1, min(64, n // (4 * block_n)))

    def idle(splits: int) -> float:
        programs = tiles * splits
        return math.ceil(programs / slots) * slots / programs - 1

    good = [s for s in range(1, most + 1) if idle(s) <= 0.05]
    return good[0] if good else min(range(1, most + 1), key=lambda s: (idle(s), s))


def tile_pairs(tiles: int, device: torch.device) -> torch.Tensor:
    """The (i, j) index pairs of the upper-triangle tiles (i <= j), int32, on device (cached)."""
    key = (tiles, str(device))
    if key not in _TILE_PAIRS:
        i, j = torch.triu_indices(tiles, tiles)
        _TILE_PAIRS[key] = torch.stack([i, j], dim=1).to(device=device, dtype=torch.int32).contiguous()
    return _TILE_PAIRS[key]


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
    block_d, block_n, num_warps, num_stages = syrk_config(x)
    precision = fp32_precision() if x.dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit input
    tiles = triton.cdiv(d, block_d)
    pairs = tile_pairs(tiles, x.device)
    key = (block_d, block_n, num_warps, num_stages, x.dtype, gram.dtype, row_mask is not None, precision,
           str(x.device))
    if x.device.type == "cuda":
        slots = torch.cuda.get_device_properties(x.device).multi_processor_count * _PROGRAMS_PER_SM.get(key, 1)
    else:
        slots = len(pairs)  # the interpreter runs programs one by one: one split
    splits = split_count(len(pairs), n, block_n, slots)
    rows_per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    splits = triton.cdiv(n, rows_per_split)
    flags = torch.zeros(n, dtype=torch.int32, device=x.device)
    mask = row_mask.contiguous() if row_mask is not None else flags  # any pointer; unused without HAS_MASK
    if x.device.type == "cuda":  # up to 64 row slices: enough programs to stream X at full bandwidth
        block_c, block_cn, colsum_warps = COLSUM_CONFIG
        colsum_rows = triton.cdiv(triton.cdiv(n, 64), block_cn) * block_cn
    else:
        block_c, block_cn, colsum_warps, colsum_rows = INTERPRETER_BLOCK, INTERPRETER_BLOCK, 4, n
    with device_of(x), warnings.catch_warnings():
        # Block pointers are deprecated in Triton 3.8 in favour of tensor descriptors, which Triton 3.6 (still
        # supported here) lowers only on sm_90; the block pointers compile on both and on sm_80.
        warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")
        # The column sums go to scratch first and the SYRK, the only launch that writes a caller's buffer, runs
        # last: if either fails to compile or launch, the caller's accumulator is untouched (and automatic choice
        # can fall back to another backend without adding anything twice).
        sums = torch.zeros(d, dtype=torch.float64, device=x.device)
        _colsum_kernel[(triton.cdiv(d, block_c), triton.cdiv(n, colsum_rows))](
            x, mask, sums, flags,
            n, d, colsum_rows,
            x.stride(0), x.stride(1),
            HAS_MASK=row_mask is not None,
            BLOCK_C=block_c,
            BLOCK_N=block_cn,
            num_warps=colsum_warps,
        )
        compiled = _cov_syrk_kernel[(len(pairs), splits)](
            x, mask, gram, pairs,
            n, d, rows_per_split,
            x.stride(0), x.stride(1),
            HAS_MASK=row_mask is not None,
            INPUT_PRECISION=precision,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    colsum += sums
    if x.device.type == "cuda" and key not in _PROGRAMS_PER_SM:
        _PROGRAMS_PER_SM[key] = programs_per_sm(compiled, num_warps, x.device)
    nonfinite_rows += flags.sum()

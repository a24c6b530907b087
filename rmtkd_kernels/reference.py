"""Pure-torch oracles of every op: the semantics the fused kernels must reproduce, and the fallback backend.

Readable rather than fast: cov_accumulate computes the full Gram matrix (not only the upper triangle).
"""
from __future__ import annotations

from typing import Optional

import torch


def nonfinite_row_flags(x: torch.Tensor, row_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Bool (n,): rows of x that are counted (row_mask) and hold a NaN or Inf."""
    bad = ~torch.isfinite(x).all(dim=1)
    return bad if row_mask is None else bad & row_mask


def cov_accumulate_ref(
    x: torch.Tensor,
    gram: torch.Tensor,
    colsum: torch.Tensor,
    nonfinite_rows: torch.Tensor,
    row_mask: Optional[torch.Tensor] = None,
) -> None:
    """gram += XᵀX (fp32 partial, float64 for float64 input), colsum += column sums, count NaN/Inf rows.

    Masked-out rows (row_mask False) contribute nothing, whatever they hold.
    """
    if row_mask is not None:
        x = torch.where(row_mask[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        # Tensor cores with fp32 accumulation: the products of 16-bit values are exact in fp32, as in the upcast
        # below, at the 16-bit GEMM's speed.
        gram += _gram_fp32_accumulate(x).to(gram.dtype)
    else:
        xp = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        gram += (xp.T @ xp).to(gram.dtype)
    colsum += x.sum(dim=0, dtype=torch.float64)
    nonfinite_rows += nonfinite_row_flags(x, row_mask).sum()


def _gram_fp32_accumulate(x: torch.Tensor) -> torch.Tensor:
    """xᵀx of a 16-bit CUDA tensor in fp32: ``torch.mm(..., out_dtype=torch.float32)`` where this torch has it,
    else the fp32 upcast."""
    try:
        return torch.mm(x.T, x, out_dtype=torch.float32)
    except (TypeError, RuntimeError):  # a torch without out_dtype for mm
        x32 = x.float()
        return x32.T @ x32


def projected_linear_ref(
    x: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """y = (x @ basis) @ weightᵀ + bias, the two-matmul path that the fused kernels replace."""
    hidden = x @ basis
    return torch.nn.functional.linear(hidden, weight, bias)

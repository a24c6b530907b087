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
    partial_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xp = x.to(partial_dtype)
    if row_mask is not None:
        xp = torch.where(row_mask[:, None], xp, torch.zeros((), dtype=partial_dtype, device=x.device))
    gram += (xp.T @ xp).to(gram.dtype)
    colsum += xp.sum(dim=0, dtype=torch.float64)
    nonfinite_rows += nonfinite_row_flags(x, row_mask).sum()


def projected_linear_ref(
    x: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """y = (x @ basis) @ weightᵀ + bias, the two-matmul path that the fused kernels replace."""
    hidden = x @ basis
    return torch.nn.functional.linear(hidden, weight, bias)

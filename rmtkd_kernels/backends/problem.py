"""One op call as automatic choice sees it: the op, its sizes and its input's layout, and the size bucket that
calls share one decision in."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def layout_of(x: torch.Tensor) -> str:
    """How x's rows are laid out: kernels are compiled per layout (a unit stride becomes a constant), so a
    decision made on one layout says nothing about another."""
    if x.is_contiguous():
        return "row-major"
    return "column-major" if x.dim() == 2 and x.stride(0) == 1 else "strided"


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of a row-major x stored in ``layout``."""
    if layout == "column-major":
        return x.T.contiguous().T
    if layout == "strided":
        wide = torch.empty(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=x.device)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@dataclass(frozen=True)
class Problem:
    """One op call as trials see it: its sizes (cov_accumulate (n, d); projected_linear (rows, d_in, k, d_out))
    and its input's layout."""

    op: str
    sizes: tuple[int, ...]
    layout: str = "row-major"

    @classmethod
    def of_call(cls, op: str, x: torch.Tensor, sizes: tuple[int, ...]) -> "Problem":
        return cls(op, tuple(int(s) for s in sizes), layout_of(x))

    def bucket(self) -> tuple:
        """Sizes rounded up to powers of two (rows capped at 2¹⁴: past that, time grows linearly in rows and the
        ranking of backends no longer changes), and the layout; calls in one bucket share one decision."""
        rows = min(self.sizes[0], 1 << 14)
        return (_pow2(rows),) + tuple(_pow2(s) for s in self.sizes[1:]) + (self.layout,)

    def trial_sizes(self) -> tuple[int, ...]:
        """The sizes a trial runs at: the call's own, rows capped as in :meth:`bucket`."""
        return (min(self.sizes[0], 1 << 14),) + self.sizes[1:]


def _pow2(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()

"""CovarianceAccumulator: streaming first and second moments of activations with O(d²) memory.

Holds gram = Σ xxᵀ (upper triangle, float64 by default), colsum = Σ x (float64), the sample count and the
number of NaN/Inf rows seen, all as device tensors so that update() never synchronises with the host. Reading
(mean, second_moment, covariance) checks the NaN/Inf count and the sample count and raises a clear error.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn

from rmtkd_kernels.ops import cov_accumulate
from rmtkd_kernels.validation import ACCUMULATOR_DTYPES


class CovarianceAccumulator:
    """Streams chunks x (..., d) into Σxxᵀ and Σx; reads out mean, second moment and centered covariance.

    Args:
        dim: feature dimension d.
        dtype: accumulator dtype, float64 (default: 10⁷ rows lose nothing float64 keeps) or float32.
        device: where the statistics live; chunks must be on this device.
        backend: force a cov_accumulate backend (see rmtkd_kernels.backends); None chooses automatically.
    """

    def __init__(
        self,
        dim: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: Optional[torch.device | str] = None,
        backend: Optional[str] = None,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if dtype not in ACCUMULATOR_DTYPES:
            raise ValueError(f"dtype: expected torch.float64 or torch.float32, got {dtype}")
        self.dim = dim
        self.backend = backend
        self.gram = torch.zeros(dim, dim, dtype=dtype, device=device)
        self.colsum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count_tensor = torch.zeros((), dtype=torch.int64, device=device)
        self.nonfinite_rows = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.gram.device

    # ------------------------------------------------------------------ writing
    def update(self, x: Tensor, mask: Optional[Tensor] = None) -> None:
        """Add the rows of x (..., d). mask (same leading shape as x, bool): True rows count, False are skipped."""
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor of shape (..., {self.dim}), got {shape}")
        if x.device != self.device:
            raise ValueError(f"x: expected a tensor on {self.device} (the accumulator's device), got {x.device}")
        rows = x.detach().reshape(-1, self.dim)
        row_mask = None
        if mask is not None:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[:-1]):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask: expected shape {tuple(x.shape[:-1])} (x without its last dim), got {got}")
            row_mask = mask.detach().reshape(-1).to(device=rows.device, dtype=torch.bool)
        cov_accumulate(rows, self.gram, self.colsum, self.nonfinite_rows, row_mask, backend=self.backend)
        self.count_tensor += rows.shape[0] if row_mask is None else row_mask.sum()

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Add another accumulator's statistics (same dim) into this one; returns self."""
        if not isinstance(other, CovarianceAccumulator) or other.dim != self.dim:
            raise ValueError(f"other: expected a CovarianceAccumulator of dim {self.dim}, got "
                             f"{getattr(other, 'dim', type(other).__name__)}")
        self.gram += torch.triu(other.gram).to(device=self.device, dtype=self.gram.dtype)
        for mine, theirs in ((self.colsum, other.colsum), (self.count_tensor, other.count_tensor),
                             (self.nonfinite_rows, other.nonfinite_rows)):
            mine += theirs.to(self.device)
        return self

    def all_reduce(self, group: Optional[Any] = None) -> "CovarianceAccumulator":
        """Sum the statistics over all ranks of a torch.distributed process group, in place; returns self."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce: torch.distributed is not initialised (call init_process_group first)")
        self.gram.copy_(torch.triu(self.gram))  # the strict lower triangle is unspecified per rank
        for t in (self.gram, self.colsum, self.count_tensor, self.nonfinite_rows):
            dist.all_reduce(t, group=group)
        return self

    def reset(self) -> None:
        for t in (self.gram, self.colsum, self.count_tensor, self.nonfinite_rows):
            t.zero_()

    # ------------------------------------------------------------------ reading
    @property
    def count(self) -> int:
        """Number of rows folded in so far (synchronises with the device)."""
        return int(self.count_tensor.item())

    def _checked_count(self, needed: int, what: str) -> int:
        bad = int(self.nonfinite_rows.item())
        count = self.count
        if bad:
            raise ValueError(f"CovarianceAccumulator: {bad} of the {count} rows passed to update() held NaN or Inf; "
                             "the statistics are invalid. Fix the activations or mask those rows, then reset().")
        if count < needed:
            raise ValueError(f"CovarianceAccumulator: {what} needs at least {needed} samples, has {count}")
        return count

    def mean(self) -> Tensor:
        """Per-feature mean (float64, shape (d,))."""
        return self.colsum / self._checked_count(1, "mean")

    def sum_of_outer_products(self) -> Tensor:
        """The full symmetric Σxxᵀ in the accumulator dtype, built from the upper triangle."""
        upper = torch.triu(self.gram)
        return upper + torch.triu(self.gram, diagonal=1).T

    def second_moment(self) -> Tensor:
        """E[xxᵀ] = Σxxᵀ / n (float64, shape (d, d)), uncentered."""
        count = self._checked_count(1, "second_moment")
        return self.sum_of_outer_products().double() / count

    def covariance(self, ddof: Literal[0, 1] = 0) -> Tensor:
        """Centered covariance (Σxxᵀ − n μμᵀ) / (n − ddof), float64 (d, d). ddof=0 is RMT's XXᵀ/n convention."""
        count = self._checked_count(2, "covariance")
        mean = self.colsum / count
        centered = self.sum_of_outer_products().double() - count * torch.outer(mean, mean)
        return centered / (count - ddof)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        return {
            "gram": torch.triu(self.gram),
            "colsum": self.colsum.clone(),
            "count": self.count_tensor.clone(),
            "nonfinite_rows": self.nonfinite_rows.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        gram = state.get("gram")
        if not isinstance(gram, Tensor) or tuple(gram.shape) != (self.dim, self.dim):
            got = tuple(gram.shape) if isinstance(gram, Tensor) else gram
            raise ValueError(f"state['gram']: expected shape ({self.dim}, {self.dim}), got {got}")
        self.gram.copy_(gram)
        self.colsum.copy_(state["colsum"])
        self.count_tensor.copy_(state["count"])
        self.nonfinite_rows.copy_(state["nonfinite_rows"])

    # ------------------------------------------------------------------ hooks
    def attach(
        self,
        module: nn.Module,
        *,
        on: Literal["input", "output"] = "input",
        mask_fn: Optional[Callable[[], Optional[Tensor]]] = None,
    ) -> torch.utils.hooks.RemovableHandle:
        """Stream a module's first input (or its output) into this accumulator on every forward.

        mask_fn, if given, is called at each forward and returns the row mask for that batch (e.g. the
        attention mask of the current batch, so padding tokens are left out) or None. Remove the returned
        handle to stop.
        """
        if on not in ("input", "output"):
            raise ValueError(f"on: expected 'input' or 'output', got {on!r}")

        def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
            value = inputs[0] if on == "input" else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            self.update(value, mask_fn() if mask_fn is not None else None)

        return module.register_forward_hook(hook)

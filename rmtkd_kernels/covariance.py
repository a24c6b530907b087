"""CovarianceAccumulator: streaming first and second moments of activations with O(d²) memory.

Holds, relative to a shift s (the first chunk's mean, rounded to fp32 unless that chunk is float64), gram = Σ (x − s)(x − s)ᵀ
(upper triangle, float64 by default), colsum = Σ (x − s) (float64), the sample count and the number of NaN/Inf
rows seen, all as device tensors so that update() never synchronises with the host. The shift keeps the
products small: a transformer's outlier features have means far above their spread, and E[xxᵀ] − μμᵀ from
fp32 partials of raw activations would lose the spread to cancellation. Chunks are shifted in fp32 (float64
chunks in float64), so 16-bit chunks reach the kernel as fp32: exact, at the cost of the fp32 path. Reading (mean, second_moment,
covariance) checks the NaN/Inf count, that every statistic is finite and the sample count, and raises a clear
error.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn

from rmtkd_kernels.ops import cov_accumulate
from rmtkd_kernels.validation import ACCUMULATOR_DTYPES, allocate, check_floating

STATE_KEYS = ("gram", "colsum", "count", "nonfinite_rows", "shift")


class CovarianceAccumulator:
    """Streams chunks x (..., d) into shifted Σxxᵀ and Σx; reads out mean, second moment and centered covariance.

    Args:
        dim: feature dimension d.
        dtype: accumulator dtype, float64 (default) or float32.
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
        self.gram = allocate("dim", f"a {dim} × {dim} accumulator", (dim, dim), dtype, device)
        self.colsum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.shift = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count_tensor = torch.zeros((), dtype=torch.int64, device=device)
        self.nonfinite_rows = torch.zeros((), dtype=torch.int64, device=device)
        self._shifted = False  # whether the shift has been taken (from the first chunk with rows)
        self._shift_dtype = torch.float64  # the dtype the shift is exactly representable in

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
        check_floating("x", x)
        rows = x.detach().reshape(-1, self.dim)
        row_mask = None
        if mask is not None:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[:-1]):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask: expected shape {tuple(x.shape[:-1])} (x without its last dim), got {got}")
            row_mask = mask.detach().reshape(-1).to(device=rows.device, dtype=torch.bool)
        if rows.shape[0] == 0:
            return
        # The shift is subtracted in fp32 (float64 for float64 chunks): exactly for 16-bit values, which is why
        # those chunks are streamed as fp32, and to within fp32 rounding of the difference for fp32 values.
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        if not self._shifted:
            self._take_shift(rows, row_mask, dtype)
        elif dtype != self._shift_dtype:  # the shift must be exactly what is subtracted: round it anew
            self.recenter(self.shift.to(dtype).double())
            self._shift_dtype = dtype
        shifted = rows.to(dtype) - self.shift.to(dtype)
        cov_accumulate(shifted, self.gram, self.colsum, self.nonfinite_rows, row_mask, backend=self.backend)
        self.count_tensor += rows.shape[0] if row_mask is None else row_mask.sum()

    def _take_shift(self, rows: Tensor, row_mask: Optional[Tensor], dtype: torch.dtype) -> None:
        """The shift: the mean of the chunk's counted finite rows, rounded to ``dtype`` (zero where none)."""
        keep = torch.isfinite(rows).all(dim=1)
        if row_mask is not None:
            keep &= row_mask
        total = torch.where(keep[:, None], rows.double(), 0.0).sum(0)
        mean = torch.nan_to_num(total / keep.sum().clamp(min=1), nan=0.0, posinf=0.0, neginf=0.0)
        self.shift.copy_(mean.to(dtype).double())
        self._shifted, self._shift_dtype = True, dtype

    def recenter(self, shift: Tensor) -> None:
        """Express the statistics relative to ``shift`` (d,) instead of the current one (exact algebra in float64);
        accumulators must share a shift before their statistics are added."""
        delta = (self.shift - shift.to(self.shift)).double()
        count = self.count_tensor.double()
        gram = torch.outer(delta, self.colsum) + torch.outer(self.colsum, delta) + count * torch.outer(delta, delta)
        self.gram += torch.triu(gram).to(self.gram.dtype)
        self.colsum += count * delta
        self.shift.copy_(shift)

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Add another accumulator's statistics (same dim) into this one; returns self."""
        if not isinstance(other, CovarianceAccumulator) or other.dim != self.dim:
            raise ValueError(f"other: expected a CovarianceAccumulator of dim {self.dim}, got "
                             f"{getattr(other, 'dim', type(other).__name__)}")
        theirs = CovarianceAccumulator(self.dim, dtype=torch.float64, device=self.device)
        theirs.load_state_dict({k: v.to(self.device) for k, v in other.state_dict().items()})
        if not self._shifted:
            self.recenter(theirs.shift)
            self._shifted = other._shifted
        theirs.recenter(self.shift)
        self.gram += theirs.gram.to(self.gram.dtype)
        for mine, add in ((self.colsum, theirs.colsum), (self.count_tensor, theirs.count_tensor),
                          (self.nonfinite_rows, theirs.nonfinite_rows)):
            mine += add
        return self

    def all_reduce(self, group: Optional[Any] = None) -> "CovarianceAccumulator":
        """Sum the statistics over all ranks of a torch.distributed process group, in place; returns self.
        Every rank first re-expresses its statistics relative to rank 0's shift."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce: torch.distributed is not initialised (call init_process_group first)")
        common = self.shift.clone()
        dist.broadcast(common, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        self.recenter(common)
        flat = self.statistics()  # one all-reduce of everything that adds up
        dist.all_reduce(flat, group=group)
        self.load_statistics(flat)
        return self

    def statistics(self) -> Tensor:
        """Everything that adds up across accumulators of one shift, as one float64 vector (for one all-reduce):
        the upper triangle of gram, colsum, the count and the NaN/Inf row count."""
        counts = torch.stack([self.count_tensor, self.nonfinite_rows]).double()
        return torch.cat([torch.triu(self.gram).double().flatten(), self.colsum, counts])

    def load_statistics(self, flat: Tensor) -> None:
        """Set the statistics from a vector made by :meth:`statistics` (summed over accumulators of one shift)."""
        d = self.dim
        if tuple(flat.shape) != (d * d + d + 2,):
            raise ValueError(f"flat: expected shape ({d * d + d + 2},), got {tuple(flat.shape)}")
        flat = flat.to(self.device)
        self.gram.copy_(flat[: d * d].view(d, d))
        self.colsum.copy_(flat[d * d: d * d + d])
        self.count_tensor.copy_(flat[-2].round().long())
        self.nonfinite_rows.copy_(flat[-1].round().long())
        self._shifted = self._shifted or bool(self.count_tensor > 0)

    def reset(self) -> None:
        for t in (self.gram, self.colsum, self.shift, self.count_tensor, self.nonfinite_rows):
            t.zero_()
        self._shifted = False

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
        upper = torch.isfinite(torch.triu(self.gram))
        finite = upper.all(dim=0) & upper.all(dim=1) & torch.isfinite(self.colsum)
        if not bool(finite.all()):
            feature = int((~finite).nonzero()[0])
            raise ValueError(f"CovarianceAccumulator: the statistics of feature {feature} are not finite although "
                             "every row was: its values are too large for their products to be formed (beyond "
                             "~1e19 for fp32 input). Scale the activations, then reset().")
        if count < needed:
            raise ValueError(f"CovarianceAccumulator: {what} needs at least {needed} samples, has {count}")
        return count

    def mean(self) -> Tensor:
        """Per-feature mean (float64, shape (d,))."""
        return self.shift + self.colsum / self._checked_count(1, "mean")

    def _centered_sum(self) -> Tensor:
        """Σ (x − s)(x − s)ᵀ, the full symmetric matrix in float64, built from the upper triangle."""
        upper = torch.triu(self.gram).double()
        return upper + torch.triu(upper, diagonal=1).T

    def second_moment(self) -> Tensor:
        """E[xxᵀ] (float64, shape (d, d)), uncentered."""
        count = self._checked_count(1, "second_moment")
        mean_shifted = self.colsum / count
        return (self._centered_sum() / count + torch.outer(self.shift, mean_shifted)
                + torch.outer(mean_shifted, self.shift) + torch.outer(self.shift, self.shift))

    def covariance(self, ddof: int = 0) -> Tensor:
        """Centered covariance Σ (x − μ)(x − μ)ᵀ / (n − ddof), float64 (d, d). ddof=0 is RMT's XXᵀ/n convention."""
        if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
            raise ValueError(f"ddof: expected a non-negative int, got {ddof!r}")
        count = self._checked_count(max(2, ddof + 1), "covariance" + (f" with ddof={ddof}" if ddof > 1 else ""))
        mean_shifted = self.colsum / count
        return (self._centered_sum() - count * torch.outer(mean_shifted, mean_shifted)) / (count - ddof)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        return {
            "gram": torch.triu(self.gram),
            "colsum": self.colsum.clone(),
            "count": self.count_tensor.clone(),
            "nonfinite_rows": self.nonfinite_rows.clone(),
            "shift": self.shift.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore statistics saved by state_dict (checked: every key, its shape, non-negative counts)."""
        if not isinstance(state, dict):
            raise ValueError(f"state: expected a dict with keys {STATE_KEYS}, got {type(state).__name__}")
        shapes = {"gram": (self.dim, self.dim), "colsum": (self.dim,), "shift": (self.dim,), "count": (),
                  "nonfinite_rows": ()}
        for key in STATE_KEYS:
            value = state.get(key)
            if not isinstance(value, Tensor) or tuple(value.shape) != shapes[key]:
                got = tuple(value.shape) if isinstance(value, Tensor) else ("missing" if key not in state else value)
                raise ValueError(f"state['{key}']: expected a tensor of shape {shapes[key]}, got {got}")
        for key in ("count", "nonfinite_rows"):
            if state[key].is_floating_point() or int(state[key]) < 0:
                raise ValueError(f"state['{key}']: expected a non-negative integer count, got {state[key].item()}")
        self.gram.copy_(state["gram"])
        self.colsum.copy_(state["colsum"])
        self.shift.copy_(state["shift"])
        self.count_tensor.copy_(state["count"])
        self.nonfinite_rows.copy_(state["nonfinite_rows"])
        self._shifted = int(state["count"]) > 0 or bool(state["shift"].any())

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

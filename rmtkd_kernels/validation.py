"""Argument checks shared by every backend.

Each check raises ``ValueError`` naming the offending argument and what was expected, before any kernel
launches, so a bad call never turns into a silent wrong answer or a crash inside a kernel.
"""
from __future__ import annotations

from typing import Optional

import torch

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ACCUMULATOR_DTYPES = (torch.float64, torch.float32)


def allocate(name: str, what: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: Optional[torch.device | str]) -> torch.Tensor:
    """torch.zeros(shape), or a ValueError naming the argument that asked for more memory than there is."""
    try:
        return torch.zeros(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
        size = torch.tensor([], dtype=dtype).element_size()
        for extent in shape:
            size *= extent
        raise ValueError(f"{name}: {what} needs {size / 2**30:.3g} GiB of {dtype} on {device or 'cpu'}, more "
                         "than could be allocated") from None


def _fail(name: str, expected: str, got: str) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def check_floating(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] = INPUT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(name, "a torch.Tensor", type(t).__name__)
    if t.dtype not in dtypes:
        _fail(name, f"dtype in {[str(d) for d in dtypes]}", str(t.dtype))


def check_rank(name: str, t: torch.Tensor, rank: int) -> None:
    if t.dim() != rank:
        _fail(name, f"a {rank}-D tensor", f"shape {tuple(t.shape)}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            _fail(name, f"a tensor on {reference.device} (the device of {reference_name})", f"device {t.device}")


def _memory_span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, last byte + 1) of the memory a tensor's elements occupy."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def check_no_overlap(outputs: dict[str, torch.Tensor], inputs: dict[str, Optional[torch.Tensor]]) -> None:
    """Outputs updated in place must share no memory with each other or with the inputs (a kernel reading what
    it writes gives a silently wrong answer)."""
    named = [(name, t) for name, t in {**outputs, **inputs}.items() if t is not None]
    for i, (out_name, out) in enumerate(named[: len(outputs)]):
        start, end = _memory_span(out)
        for other_name, other in named[i + 1:]:
            if other.device == out.device and start < _memory_span(other)[1] and _memory_span(other)[0] < end:
                _fail(out_name, f"memory of its own (it is written in place), not shared with {other_name}",
                      "overlapping tensors")


def check_cov_args(
    x: torch.Tensor,
    gram: torch.Tensor,
    colsum: torch.Tensor,
    nonfinite_rows: torch.Tensor,
    row_mask: Optional[torch.Tensor],
) -> None:
    """Validate the arguments of ``cov_accumulate`` (x: n × d chunk; gram: d × d; colsum: d)."""
    check_floating("x", x)
    check_rank("x", x, 2)
    n, d = x.shape
    if d == 0:
        _fail("x", "at least one feature column", f"shape {tuple(x.shape)}")
    check_floating("gram", gram, ACCUMULATOR_DTYPES)
    if tuple(gram.shape) != (d, d):
        _fail("gram", f"shape ({d}, {d}) to match x's {d} features", f"shape {tuple(gram.shape)}")
    if not gram.is_contiguous():
        _fail("gram", "a contiguous tensor (it is updated in place)", f"strides {gram.stride()}")
    if colsum.dtype != torch.float64 or tuple(colsum.shape) != (d,):
        _fail("colsum", f"a float64 tensor of shape ({d},)", f"{colsum.dtype} of shape {tuple(colsum.shape)}")
    if not colsum.is_contiguous():
        _fail("colsum", "a contiguous tensor (it is updated in place)", f"strides {colsum.stride()}")
    if nonfinite_rows.dtype != torch.int64 or nonfinite_rows.numel() != 1:
        _fail("nonfinite_rows", "a one-element int64 tensor", f"{nonfinite_rows.dtype} of shape {tuple(nonfinite_rows.shape)}")
    if row_mask is not None:
        if row_mask.dtype != torch.bool:
            _fail("row_mask", "a bool tensor (True = row is counted)", str(row_mask.dtype))
        if tuple(row_mask.shape) != (n,):
            _fail("row_mask", f"shape ({n},), one flag per row of x", f"shape {tuple(row_mask.shape)}")
    check_same_device("x", x, gram=gram, colsum=colsum, nonfinite_rows=nonfinite_rows, row_mask=row_mask)
    check_no_overlap({"gram": gram, "colsum": colsum, "nonfinite_rows": nonfinite_rows},
                     {"x": x, "row_mask": row_mask})


def check_projected_linear_args(
    x: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> None:
    """Validate y = (x @ basis) @ weight.T + bias with x (M, d_in), basis (d_in, k), weight (d_out, k)."""
    check_floating("x", x)
    check_rank("x", x, 2)
    check_floating("basis", basis)
    check_rank("basis", basis, 2)
    check_floating("weight", weight)
    check_rank("weight", weight, 2)
    d_in, k = basis.shape
    if k == 0:
        _fail("basis", "at least one column (k >= 1)", f"shape {tuple(basis.shape)}")
    if x.shape[1] != d_in:
        _fail("x", f"last dimension {d_in} (basis has {d_in} rows)", f"shape {tuple(x.shape)}")
    if weight.shape[1] != k:
        _fail("weight", f"{k} columns to match basis's k = {k}", f"shape {tuple(weight.shape)}")
    for name, t in (("basis", basis), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            _fail(name, f"dtype {x.dtype} (the dtype of x)", str(t.dtype))
    if bias is not None:
        check_rank("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            _fail("bias", f"shape ({weight.shape[0]},) to match weight's d_out", f"shape {tuple(bias.shape)}")
    check_same_device("x", x, basis=basis, weight=weight, bias=bias)

"""rmtkd::cov_accumulate: every backend that runs here against a float64 oracle."""
from __future__ import annotations

import pytest
import torch

from rmtkd_kernels.ops import cov_accumulate
from tests.kernels.helpers import backend_params, dtypes_for, in_layout

SHAPES = [(1, 1), (37, 5), (203, 77), (150, 129)]  # (n, d): nothing a multiple of a block size but d=1


def fresh_state(d: int, acc_dtype: torch.dtype, device: str):
    """Accumulators pre-filled with random values, so the test sees += and not =."""
    gram = torch.randn(d, d, dtype=torch.float64, device=device).to(acc_dtype)
    colsum = torch.randn(d, dtype=torch.float64, device=device)
    nonfinite = torch.randint(0, 5, (), dtype=torch.int64, device=device)
    return gram, colsum, nonfinite


def oracle(x: torch.Tensor, mask: torch.Tensor | None):
    """float64 XᵀX, column sums and NaN/Inf row count of the counted rows."""
    xd = x.double()
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if mask is None else mask
    rows = xd[keep]
    return rows.T @ rows, rows.sum(0), int((~torch.isfinite(rows).all(1)).sum())


def assert_accumulated(gram, colsum, nonfinite, before, x, mask):
    gram0, colsum0, nonfinite0 = before
    g_ref, s_ref, bad_ref = oracle(x, mask)
    expected = torch.triu(gram0.double() + g_ref)
    scale = max(1.0, g_ref.abs().max().item())
    # fp32 partials: error grows like sqrt(n) * 2^-24 * scale; 2e-5 relative covers n <= 10^4 with margin.
    torch.testing.assert_close(torch.triu(gram.double()), expected, rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(colsum, colsum0 + s_ref, rtol=0, atol=2e-5 * max(1.0, s_ref.abs().max().item()))
    assert int(nonfinite) == int(nonfinite0) + bad_ref


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_oracle(device, backend, n, d, layout, masked):
    torch.manual_seed(n * 1000 + d)
    for dtype in dtypes_for(backend, device):
        for acc_dtype in (torch.float64, torch.float32):
            x = in_layout((torch.randn(n, d, device=device) + 0.5).to(dtype), layout)
            mask = torch.rand(n, device=device) > 0.3 if masked else None
            gram, colsum, nonfinite = fresh_state(d, acc_dtype, device)
            before = (gram.clone(), colsum.clone(), nonfinite.clone())
            cov_accumulate(x, gram, colsum, nonfinite, mask, backend=backend)
            assert gram.dtype == acc_dtype
            assert_accumulated(gram, colsum, nonfinite, before, x, mask)


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_float64_input(device, backend):
    if backend == "triton":
        pytest.skip("the Triton kernels take float32/float16/bfloat16 (checked in test_backends)")
    x = torch.randn(91, 33, dtype=torch.float64, device=device)
    gram, colsum, nonfinite = fresh_state(33, torch.float64, device)
    before = (gram.clone(), colsum.clone(), nonfinite.clone())
    cov_accumulate(x, gram, colsum, nonfinite, backend=backend)
    g_ref = before[0] + x.T @ x
    torch.testing.assert_close(torch.triu(gram), torch.triu(g_ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_nonfinite_rows_are_counted_and_masked_rows_ignored(device, backend):
    torch.manual_seed(1)
    n, d = 70, 45
    x = torch.randn(n, d, device=device)
    x[3, 0] = float("nan")
    x[10, 44] = float("inf")
    x[11, 20] = -float("inf")
    x[12, 5] = float("nan")
    x[12, 6] = float("inf")
    mask = torch.ones(n, dtype=torch.bool, device=device)
    mask[11] = False  # a padding row holding -inf must not count
    gram, colsum, nonfinite = fresh_state(d, torch.float64, device)
    nonfinite.zero_()
    cov_accumulate(x, gram, colsum, nonfinite, mask, backend=backend)
    assert int(nonfinite) == 3

    clean_mask = mask.clone()
    clean_mask[[3, 10, 12]] = False
    gram, colsum, nonfinite = fresh_state(d, torch.float64, device)
    before = (gram.clone(), colsum.clone(), nonfinite.clone())
    cov_accumulate(x, gram, colsum, nonfinite, clean_mask, backend=backend)
    assert torch.isfinite(torch.triu(gram)).all() and torch.isfinite(colsum).all()
    assert_accumulated(gram, colsum, nonfinite, before, x, clean_mask)


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_empty_chunk_changes_nothing(device, backend):
    gram, colsum, nonfinite = fresh_state(9, torch.float64, device)
    before = (gram.clone(), colsum.clone(), nonfinite.clone())
    cov_accumulate(torch.randn(0, 9, device=device), gram, colsum, nonfinite, backend=backend)
    assert torch.equal(torch.triu(gram), torch.triu(before[0])) and torch.equal(colsum, before[1])
    assert int(nonfinite) == int(before[2])


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_opcheck(device, backend):
    x = torch.randn(40, 19, device=device)
    mask = torch.rand(40, device=device) > 0.5
    for row_mask in (None, mask):
        gram, colsum, nonfinite = fresh_state(19, torch.float64, device)
        torch.library.opcheck(torch.ops.rmtkd.cov_accumulate.default,
                              (x, gram, colsum, nonfinite, row_mask, backend))


def _streaming_error(acc_dtype: torch.dtype, backend: str | None) -> float:
    """Relative error of 10⁶ rows streamed in 4096-row chunks vs. a float64 one-shot Gram.

    The rows hold values k/8 with |k| <= 8 in float16, so every fp32 chunk partial is exact (products are
    multiples of 1/64, chunk sums stay below 2^24 of those units): what remains is the accumulator's own
    rounding. A float64 accumulator keeps the sum (~10⁶ · 64 units, more than fp32's 24 bits) exactly.
    """
    generator = torch.Generator().manual_seed(7)
    n, d, chunk = 1_000_000, 24, 4096
    gram = torch.zeros(d, d, dtype=acc_dtype)
    colsum = torch.zeros(d, dtype=torch.float64)
    nonfinite = torch.zeros((), dtype=torch.int64)
    one_shot = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        x = (torch.randint(-8, 9, (rows, d), generator=generator) / 8 + 0.25).to(torch.float16)
        cov_accumulate(x, gram, colsum, nonfinite, backend=backend)
        xd = x.double()
        one_shot += xd.T @ xd
    assert int(nonfinite) == 0
    return ((torch.triu(gram.double()) - torch.triu(one_shot)).norm() / torch.triu(one_shot).norm()).item()


def test_million_row_stream_keeps_float64_precision():
    assert _streaming_error(torch.float64, None) <= 1e-10
    # The same stream into a float32 accumulator does lose precision: the check above can fail.
    assert _streaming_error(torch.float32, "reference") > 1e-9


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_outputs_sharing_memory_with_inputs_are_refused(device, backend):
    """gram aliasing x (or colsum inside gram's buffer) would make the kernel read what it writes."""
    x = torch.randn(6, 6, dtype=torch.float64, device=device)
    colsum, bad = torch.zeros(6, dtype=torch.float64, device=device), torch.zeros((), dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="gram: expected memory of its own .* not shared with x"):
        cov_accumulate(x, x, colsum, bad, backend=backend if backend != "triton" else None)
    buffer = torch.zeros(6 * 6 + 6, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="gram: expected memory of its own .* not shared with colsum"):
        cov_accumulate(x.float(), buffer[:36].view(6, 6), buffer[30:36], bad)
    cov_accumulate(x.float(), buffer[:36].view(6, 6), buffer[36:], bad)  # side by side in one buffer is fine
    assert torch.isfinite(buffer).all() and buffer[36:].abs().sum() > 0

"""Property-based tests of the public ops' argument checks: random shapes, dtypes and strides give either the
reference's answer or one ValueError before any kernel runs, never another exception."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmtkd_kernels import cov_accumulate, projected_linear
from rmtkd_kernels.reference import cov_accumulate_ref

DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool])
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
SETTINGS = settings(max_examples=200, deadline=None)


def tensor(shape: tuple[int, ...], dtype: torch.dtype, transposed: bool, seed: int) -> torch.Tensor:
    """Random values (never zeros for floats) of ``shape``; transposed: the same values in column-major order."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
    t = values.to(dtype) if dtype.is_floating_point else (values * 3).to(dtype)
    return t.T.contiguous().T if transposed and t.dim() == 2 else t


@SETTINGS
@given(x_shape=SHAPES, x_dtype=DTYPES, d=st.integers(0, 5), gram_dtype=DTYPES, colsum_len=st.integers(0, 5),
       transposed=st.booleans(), masked=st.booleans(), seed=st.integers(0, 1000))
def test_cov_accumulate_answers_or_refuses(x_shape, x_dtype, d, gram_dtype, colsum_len, transposed, masked, seed):
    x = tensor(x_shape, x_dtype, transposed, seed)
    gram = tensor((d, d), gram_dtype, False, seed + 1)
    colsum = tensor((colsum_len,), torch.float64, False, seed + 2)
    bad = torch.zeros((), dtype=torch.int64)
    rows = x_shape[0] if x_shape else 0
    mask = (torch.arange(rows) % 2 == 0) if masked else None
    expected = [gram.double(), colsum.clone(), bad.clone()]  # float64 copies the reference adds into
    try:
        cov_accumulate(x, gram, colsum, bad, mask)
    except ValueError as error:
        message = str(error)
        assert message.split(":")[0] in ("x", "gram", "colsum", "nonfinite_rows", "row_mask"), message
        return
    cov_accumulate_ref(x.double(), expected[0], expected[1], expected[2], mask)
    torch.testing.assert_close(torch.triu(gram).double(), torch.triu(expected[0]), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(colsum, expected[1], rtol=2e-3, atol=2e-3)
    assert int(bad) == int(expected[2]) == 0


@SETTINGS
@given(x_shape=SHAPES, d_in=st.integers(0, 4), k=st.integers(0, 3), d_out=st.integers(0, 4), with_bias=st.booleans(),
       dtypes=st.tuples(DTYPES, DTYPES, DTYPES), transposed=st.booleans(), seed=st.integers(0, 1000))
def test_projected_linear_answers_or_refuses(x_shape, d_in, k, d_out, with_bias, dtypes, transposed, seed):
    x = tensor(x_shape, dtypes[0], transposed, seed)
    basis = tensor((d_in, k), dtypes[1], transposed, seed + 1)
    weight = tensor((d_out, k), dtypes[2], False, seed + 2)
    bias = tensor((d_out,), dtypes[2], False, seed + 3) if with_bias else None
    try:
        y = projected_linear(x, basis, weight, bias)
    except ValueError as error:
        message = str(error)
        assert message.split(":")[0] in ("x", "basis", "weight", "bias"), message
        return
    expected = (x.double() @ basis.double()) @ weight.double().T + (bias.double() if bias is not None else 0)
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)

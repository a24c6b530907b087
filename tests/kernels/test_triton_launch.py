"""The Triton SYRK's launch logic: row splits that fill whole waves, occupancy from the compiled kernel, the fp32
precision setting, and correct sums whatever the split (run under the interpreter on the CPU)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")
cov_triton = pytest.importorskip("rmtkd_kernels.triton.cov_accumulate")

needs_interpreter = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="Triton needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("tiles,n,slots", [(6, 10 ** 6, 132), (300, 10 ** 6, 132), (78, 8192, 264), (1, 64, 132)])
def test_split_count_fills_whole_waves(tiles, n, slots):
    splits = cov_triton.split_count(tiles, n, 32, slots)
    most = max(1, min(64, n // 128))
    assert 1 <= splits <= most
    programs = tiles * splits
    idle = math.ceil(programs / slots) * slots / programs - 1
    best = min(math.ceil(tiles * s / slots) * slots / (tiles * s) - 1 for s in range(1, most + 1))
    assert idle <= max(0.05, best) + 1e-12
    if tiles >= 132 and splits > 1:  # many tiles already: a split only where one wave would be mostly idle
        assert math.ceil(tiles / slots) * slots / tiles - 1 > 0.05


def test_programs_per_sm_reads_the_compiled_kernels_resources(monkeypatch):
    props = SimpleNamespace(max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
                            shared_memory_per_multiprocessor=233472)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    heavy = SimpleNamespace(n_regs=235, metadata=SimpleNamespace(shared=65536))
    assert cov_triton.programs_per_sm(heavy, 8, torch.device("cuda")) == 1  # 235 regs × 256 threads
    light = SimpleNamespace(n_regs=96, metadata=SimpleNamespace(shared=32768))
    assert cov_triton.programs_per_sm(light, 4, torch.device("cuda")) == 5  # registers: 65536 / (96 × 128)
    unknown = SimpleNamespace()
    assert cov_triton.programs_per_sm(unknown, 8, torch.device("cuda")) == 8  # threads only


def test_fp32_precision_setting(monkeypatch):
    from rmtkd_kernels.triton.launch import FP32_PRECISION_ENV, fp32_precision

    assert fp32_precision() == "tf32x3"
    monkeypatch.setenv(FP32_PRECISION_ENV, "ieee")
    assert fp32_precision() == "ieee"
    monkeypatch.setenv(FP32_PRECISION_ENV, "tf32")
    with pytest.raises(ValueError, match="RMTKD_TRITON_FP32: expected tf32x3 or ieee, got 'tf32'"):
        fp32_precision()


def test_tile_pairs_are_the_upper_triangle():
    pairs = cov_triton.tile_pairs(4, torch.device("cpu")).tolist()
    assert pairs == [[i, j] for i in range(4) for j in range(i, 4)]


@pytest.mark.gpu
@needs_interpreter
@pytest.mark.parametrize("splits", [2, 3])
def test_sums_are_right_over_several_row_splits(monkeypatch, splits):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(cov_triton, "split_count", lambda *args: splits)
    x = torch.randn(101, 40, device=device) + 3.0
    mask = torch.rand(101, device=device) > 0.3
    mask[5] = mask[9] = True
    mask[60] = False
    gram = torch.randn(40, 40, dtype=torch.float64, device=device)
    colsum = torch.randn(40, dtype=torch.float64, device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)
    before = gram.clone(), colsum.clone()
    cov_triton.cov_accumulate_triton(x, gram, colsum, bad, mask)
    rows = x.double()[mask]
    torch.testing.assert_close(torch.triu(gram), torch.triu(before[0] + rows.T @ rows), rtol=0, atol=2e-4)
    torch.testing.assert_close(colsum, before[1] + rows.sum(0), rtol=0, atol=2e-4)
    assert int(bad) == 0
    x[5, 7], x[9, 39], x[60, 0] = float("inf"), float("nan"), float("nan")  # row 60 is masked out
    cov_triton.cov_accumulate_triton(x, gram, colsum, bad, mask)
    assert int(bad) == 2


@pytest.mark.gpu
@needs_interpreter
@pytest.mark.parametrize("splits", [1, 3])
def test_projected_linear_over_several_d_in_splits(monkeypatch, splits):
    """The split-K path adds partial outputs into an fp32 workspace; the bias is added exactly once."""
    pl_triton = pytest.importorskip("rmtkd_kernels.triton.projected_linear")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(pl_triton, "d_splits", lambda *args: splits)
    x, basis = torch.randn(5, 150, device=device), torch.randn(150, 20, device=device) / 12
    weight, bias = torch.randn(70, 20, device=device), torch.randn(70, device=device)
    y = pl_triton.projected_linear_triton(x, basis, weight, bias)
    expected = (x.double() @ basis.double()) @ weight.double().T + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def test_projected_linear_refuses_a_k_it_cannot_keep_on_chip():
    pl_triton = pytest.importorskip("rmtkd_kernels.triton.projected_linear")
    x, basis, weight = torch.randn(2, 300), torch.randn(300, 257), torch.randn(4, 257)
    with pytest.raises(ValueError, match="basis: the triton projected_linear .* k <= 256, got k = 257"):
        pl_triton.projected_linear_triton(x, basis, weight)

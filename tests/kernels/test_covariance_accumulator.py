"""CovarianceAccumulator: moments against float64 torch, masks, merging, persistence, hooks, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rmtkd_kernels import CovarianceAccumulator
from tests.kernels.helpers import backend_params


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_moments_match_float64_torch(device, backend):
    torch.manual_seed(0)
    acc = CovarianceAccumulator(37, device=device, backend=backend)
    chunks = [torch.randn(b, 11, 37, device=device) * 2 + 1.5 for b in (3, 1, 5)]
    masks = [torch.rand(c.shape[:2], device=device) > 0.25 for c in chunks]
    for chunk, mask in zip(chunks, masks):
        acc.update(chunk, mask)
    rows = torch.cat([c[m] for c, m in zip(chunks, masks)]).double()
    assert acc.count == rows.shape[0]
    torch.testing.assert_close(acc.mean(), rows.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acc.second_moment(), rows.T @ rows / rows.shape[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.covariance(), torch.cov(rows.T, correction=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.covariance(ddof=1), torch.cov(rows.T), rtol=1e-5, atol=1e-5)
    cov = acc.covariance()
    assert torch.equal(cov, cov.T)


def test_merge_equals_one_stream():
    torch.manual_seed(1)
    a, b, whole = (CovarianceAccumulator(12) for _ in range(3))
    x, y = torch.randn(50, 12, dtype=torch.float64), torch.randn(31, 12, dtype=torch.float64) + 2
    a.update(x)
    b.update(y)
    whole.update(torch.cat([x, y]))
    a.merge(b)
    assert a.count == 81
    torch.testing.assert_close(a.covariance(), whole.covariance(), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="other: expected a CovarianceAccumulator of dim 12"):
        a.merge(CovarianceAccumulator(13))


def test_state_dict_round_trip_continues_the_stream():
    torch.manual_seed(2)
    x, y = torch.randn(40, 9, dtype=torch.float64), torch.randn(40, 9, dtype=torch.float64)
    first = CovarianceAccumulator(9)
    first.update(x)
    resumed = CovarianceAccumulator(9)
    resumed.load_state_dict(first.state_dict())
    resumed.update(y)
    whole = CovarianceAccumulator(9)
    whole.update(torch.cat([x, y]))
    torch.testing.assert_close(resumed.covariance(), whole.covariance(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"state\['gram'\]: expected a tensor of shape \(8, 8\)"):
        CovarianceAccumulator(8).load_state_dict(first.state_dict())


def test_hooks_stream_inputs_and_outputs_with_padding_mask():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU())
    inputs, outputs = CovarianceAccumulator(6), CovarianceAccumulator(10)
    batch = {"mask": None}
    handles = [inputs.attach(model[0], on="input", mask_fn=lambda: batch["mask"]),
               outputs.attach(model[0], on="output")]
    x = torch.randn(4, 7, 6)
    batch["mask"] = torch.arange(7).expand(4, 7) < torch.tensor([[7], [3], [5], [1]])  # padded sequences
    model(x)
    for h in handles:
        h.remove()
    model(x)  # removed hooks add nothing
    kept = x[batch["mask"]].double()
    assert inputs.count == kept.shape[0] == 16 and outputs.count == 28
    torch.testing.assert_close(inputs.mean(), kept.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs.mean(), model[0](x).reshape(-1, 10).double().mean(0), rtol=1e-6, atol=1e-6)


def test_nan_rows_raise_on_read_with_their_count():
    acc = CovarianceAccumulator(5)
    x = torch.randn(20, 5)
    x[[2, 7], 1] = float("nan")
    x[9, 4] = float("inf")
    acc.update(x)  # no host sync on update: the error comes when the statistics are read
    for read in (acc.mean, acc.covariance, acc.second_moment):
        with pytest.raises(ValueError, match="3 of the 20 rows passed to update\\(\\) held NaN or Inf"):
            read()
    acc.reset()
    acc.update(torch.randn(4, 5))
    assert acc.count == 4 and torch.isfinite(acc.covariance()).all()


def test_too_few_samples_and_bad_arguments():
    acc = CovarianceAccumulator(4)
    with pytest.raises(ValueError, match="mean needs at least 1 samples, has 0"):
        acc.mean()
    acc.update(torch.randn(1, 4))
    with pytest.raises(ValueError, match="covariance needs at least 2 samples, has 1"):
        acc.covariance()
    with pytest.raises(ValueError, match=r"x: expected a tensor of shape \(\.\.\., 4\), got \(3, 5\)"):
        acc.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"mask: expected shape \(3,\)"):
        acc.update(torch.randn(3, 4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="x: expected dtype in"):
        acc.update(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="dim: expected a positive int"):
        CovarianceAccumulator(0)
    with pytest.raises(ValueError, match="dtype: expected torch.float64 or torch.float32"):
        CovarianceAccumulator(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="on: expected 'input' or 'output'"):
        acc.attach(nn.Linear(4, 4), on="weights")


def _all_reduce_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    acc = CovarianceAccumulator(5)
    acc.update(torch.full((rank + 2, 5), float(rank + 1)))
    acc.all_reduce()
    results[rank] = (acc.count, acc.mean().tolist())
    dist.destroy_process_group()


def test_all_reduce_sums_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), results), nprocs=2)
    # rank 0: 2 rows of 1.0; rank 1: 3 rows of 2.0 -> 5 rows, mean 8 / 5
    for rank in (0, 1):
        count, mean = results[rank]
        assert count == 5 and mean == pytest.approx([1.6] * 5)


@pytest.mark.parametrize("device,backend", backend_params("cov_accumulate"))
def test_large_mean_keeps_the_spread(device, backend):
    """Outlier features: |mean| / std = 10³. Streaming relative to a shift keeps the centred covariance within
    1e-6 of a float64 two-pass reference, where raw fp32 products would lose it to cancellation."""
    torch.manual_seed(5)
    d = 16
    scale = torch.linspace(0.5, 2.0, d, device=device)
    means = 1e3 * scale * torch.where(torch.arange(d, device=device) % 2 == 0, 1.0, -1.0)
    acc = CovarianceAccumulator(d, device=device, backend=backend)
    chunks = [means + scale * torch.randn(n, d, device=device) @ torch.linalg.qr(torch.randn(d, d, device=device))[0]
              for n in (257, 1000, 64, 999)]
    for chunk in chunks:
        acc.update(chunk)
    rows = torch.cat(chunks).double()
    centred = rows - rows.mean(0)
    reference = centred.T @ centred / rows.shape[0]
    error = (acc.covariance() - reference).abs().max() / reference.abs().max()
    assert error < 1e-6, float(error)
    torch.testing.assert_close(acc.mean(), rows.mean(0), rtol=1e-12, atol=0)


def test_merge_and_dtype_changes_re_express_the_shift():
    """Accumulators with different shifts merge exactly; a later chunk of another dtype is streamed exactly."""
    torch.manual_seed(6)
    x = torch.randn(300, 8, dtype=torch.float64) + 50
    y = torch.randn(200, 8, dtype=torch.float64) - 20
    a, b, whole = CovarianceAccumulator(8), CovarianceAccumulator(8), CovarianceAccumulator(8)
    a.update(x)
    b.update(y)
    whole.update(torch.cat([x, y]))
    torch.testing.assert_close(a.merge(b).covariance(), whole.covariance(), rtol=1e-10, atol=1e-10)
    empty = CovarianceAccumulator(8).merge(whole)  # an empty accumulator takes the other's shift
    torch.testing.assert_close(empty.covariance(), whole.covariance(), rtol=1e-12, atol=1e-12)
    mixed = CovarianceAccumulator(8)
    mixed.update(x.float())
    mixed.update(y.half())  # the shift, rounded to fp16, is re-expressed before use
    rows = torch.cat([x.float().double(), y.half().double()])
    torch.testing.assert_close(mixed.mean(), rows.mean(0), rtol=1e-6, atol=1e-6)  # fp32 differences
    torch.testing.assert_close(mixed.covariance(), torch.cov(rows.T, correction=0), rtol=1e-5, atol=1e-5)


def test_overflowing_products_name_the_feature():
    """Finite fp32 values whose squares overflow: every row is finite, the statistics are not."""
    acc = CovarianceAccumulator(4)
    x = torch.randn(10, 4)
    x[3, 2] = 1e20
    x[7, 2] = -1e20
    acc.update(x)
    with pytest.raises(ValueError, match="the statistics of feature 2 are not finite although every row was"):
        acc.covariance()


def test_state_dicts_ddof_and_sizes_are_checked():
    acc = CovarianceAccumulator(3)
    acc.update(torch.randn(2, 3))
    state = acc.state_dict()
    with pytest.raises(ValueError, match=r"state\['colsum'\]: expected a tensor of shape \(3,\), got \(1,\)"):
        CovarianceAccumulator(3).load_state_dict({**state, "colsum": torch.zeros(1, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"state\['count'\]: expected a non-negative integer count, got -4"):
        CovarianceAccumulator(3).load_state_dict({**state, "count": torch.tensor(-4)})
    with pytest.raises(ValueError, match=r"state\['shift'\]: expected a tensor of shape \(3,\), got missing"):
        CovarianceAccumulator(3).load_state_dict({k: v for k, v in state.items() if k != "shift"})
    with pytest.raises(ValueError, match="covariance with ddof=2 needs at least 3 samples, has 2"):
        acc.covariance(ddof=2)
    with pytest.raises(ValueError, match="ddof: expected a non-negative int, got -1"):
        acc.covariance(ddof=-1)
    with pytest.raises(ValueError, match=r"dim: a 10000000 × 10000000 accumulator needs 7.45e\+05 GiB"):
        CovarianceAccumulator(10_000_000)

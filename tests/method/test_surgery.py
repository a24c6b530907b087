"""Site rewrites: full rank reproduces the model, the true rank of low-rank activations is exact, counts are right."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rmtkd.calibration import calibrate, discover_sites
from rmtkd.layers import FactorizedEmbedding, ProjectedConv2d
from rmtkd.surgery import rewrite_site
from rmtkd_kernels import ProjectedLinear


class TextModel(nn.Module):
    """Embedding → shared-input Linears (q, k) → Linear head; a batch is {"ids", "attention_mask"}."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.q, self.k = nn.Linear(d, 24), nn.Linear(d, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, ids, attention_mask=None):
        h = self.embed(ids)
        return self.head(torch.tanh(self.q(h)) * self.k(h)).mean(1)


class ConvModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.a, self.b = nn.Conv2d(12, 10, 3, padding=1), nn.Conv2d(12, 10, 1)  # both read the stem's output
        self.depthwise = nn.Conv2d(10, 10, 3, padding=1, groups=10)  # never a site

    def forward(self, images):
        h = torch.relu(self.stem(images))
        return self.depthwise(self.a(h) + self.b(h))


def text_forward(model, batch):
    return model(batch["ids"], batch["attention_mask"])


def conv_forward(model, batch):
    return model(batch["images"])


def text_batches():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (6, 9), generator=generator)
    mask = torch.ones(6, 9, dtype=torch.long)
    mask[:, 7:] = 0
    ids[:, 7:] = 0
    return [{"ids": ids[i:i + 3], "attention_mask": mask[i:i + 3]} for i in (0, 3)]


def calibrated(model, batches, forward):
    """The model's sites and their calibrated accumulators, by site name."""
    sites = discover_sites(model, batches[0], forward)
    calibration = calibrate(model, batches, forward, sites)
    return sites, {site.name: calibration.of(site).accumulator for site in sites}


def full_basis(accumulator):
    return torch.linalg.eigh(accumulator.covariance())[1].flip(1)


def test_sites_of_every_kind_are_found():
    sites, _ = calibrated(TextModel(), text_batches(), text_forward)
    assert [(s.kind, s.names) for s in sites] == [("embedding", ["embed"]), ("linear", ["q", "k"]),
                                                  ("linear", ["head"]), ("linear_output", ["head"])]
    conv_sites = discover_sites(ConvModel(), {"images": torch.randn(2, 3, 8, 8)}, conv_forward)
    assert [(s.kind, s.names, s.dim) for s in conv_sites] == [("conv2d", ["stem"], 3), ("conv2d", ["a", "b"], 12)]


def test_full_rank_rewrite_reproduces_outputs_and_counts_match():
    torch.manual_seed(0)
    model = TextModel()
    batches = text_batches()
    reference = text_forward(model, batches[0]).detach()
    sites, acc = calibrated(model, batches, text_forward)
    sites = [s for s in sites if s.kind != "linear_output"]  # one side each
    for site in sites:
        before, after = site.parameters(model, site.dim)
        total_before = sum(p.numel() for p in model.parameters())
        rewrite_site(model, site, full_basis(acc[site.name]), acc[site.name].mean())
        assert sum(p.numel() for p in model.parameters()) == total_before - before + after, site.name
    assert isinstance(model.embed, FactorizedEmbedding) and isinstance(model.q, ProjectedLinear)
    assert model.q.basis is model.k.basis  # Q and K share one projection
    torch.testing.assert_close(text_forward(model, batches[0]), reference, rtol=1e-4, atol=1e-4)


def test_true_rank_of_low_rank_activations_is_exact():
    """Embedding rows on a rank-4 affine subspace: k = 4 reproduces every layer exactly."""
    torch.manual_seed(1)
    model = TextModel()
    with torch.no_grad():
        model.embed.weight.copy_(torch.randn(50, 4) @ torch.randn(4, 16) + torch.randn(16))
    batches = text_batches()
    reference = text_forward(model, batches[0]).detach()
    sites, acc = calibrated(model, batches, text_forward)
    for site in sites[:2]:  # the embedding's output and the q/k input live in the rank-4 subspace
        values, vectors = torch.linalg.eigh(acc[site.name].covariance())
        assert (values[:-4].abs() < 1e-5 * values[-1]).all()
        rewrite_site(model, site, vectors[:, -4:], acc[site.name].mean())
    torch.testing.assert_close(text_forward(model, batches[0]), reference, rtol=1e-4, atol=1e-4)


def test_conv_rewrite_full_rank_and_counts():
    torch.manual_seed(2)
    model = ConvModel()
    batch = {"images": torch.randn(4, 3, 10, 10)}
    reference = conv_forward(model, batch).detach()
    sites, acc = calibrated(model, [batch], conv_forward)
    for site in sites:
        total = sum(p.numel() for p in model.parameters())
        before, after = site.parameters(model, site.dim)
        rewrite_site(model, site, full_basis(acc[site.name]), acc[site.name].mean())
        assert sum(p.numel() for p in model.parameters()) == total - before + after
    assert isinstance(model.a, ProjectedConv2d) and model.a.project is model.b.project
    torch.testing.assert_close(conv_forward(model, batch), reference, rtol=1e-4, atol=1e-4)


def test_conv_mean_bias_is_exact_away_from_borders():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    mean = torch.randn(6)
    basis = torch.linalg.qr(torch.randn(6, 2))[0]
    x = mean[None, :, None, None] + torch.einsum("ck,nkhw->nchw", basis, torch.randn(2, 2, 9, 9))
    projected = ProjectedConv2d.from_conv(conv, basis, mean)
    torch.testing.assert_close(projected(x)[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)


def test_parameter_counts_of_a_rank_k_rewrite():
    model = TextModel()
    sites = discover_sites(model, text_batches()[0], text_forward)
    assert sites[0].parameters(model, 5) == (50 * 16, 50 * 5 + 16 * 5 + 16)
    assert sites[1].parameters(model, 5) == (2 * (16 * 24 + 24), 16 * 5 + 2 * (5 * 24 + 24))
    conv_model = ConvModel()
    conv_sites = discover_sites(conv_model, {"images": torch.randn(1, 3, 4, 4)}, conv_forward)
    assert conv_sites[1].parameters(conv_model, 4) == (10 * 12 * 9 + 10 + 10 * 12 + 10,
                                                       12 * 4 + 10 * (4 * 9 + 1) + 10 * (4 + 1))


def test_bad_basis_is_named():
    model = TextModel()
    sites = discover_sites(model, text_batches()[0], text_forward)
    with pytest.raises(ValueError, match=r"basis: expected shape \(16, k >= 1\) for site \{q,k\}"):
        rewrite_site(model, sites[1], torch.zeros(15, 3), torch.zeros(16))
    with pytest.raises(ValueError, match="conv: expected groups=1"):
        ProjectedConv2d(nn.Conv2d(4, 4, 3, groups=4), 2)
    with pytest.raises(ValueError, match=r"basis: expected shape \(3, k\) with k >= 1 for a Linear with 3 outputs"):
        ProjectedLinear.from_linear_output(nn.Linear(24, 3), torch.eye(24)[:, :2])
    with pytest.raises(ValueError, match=r"basis: expected orthonormal columns"):
        ProjectedLinear.from_linear_output(nn.Linear(24, 3), torch.ones(3, 2))


def test_shared_site_projects_its_input_once_in_inference():
    """Q and K share one basis: without autograd the projection x @ P runs once for both (fewer FLOPs, same
    outputs); with autograd, under a copy and for a new input nothing stale is reused."""
    import copy
    import pickle

    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(2)
    model = TextModel()
    batches = text_batches()
    sites, acc = calibrated(model, batches, text_forward)
    qk = sites[1]
    rewrite_site(model, qk, full_basis(acc[qk.name])[:, :5].contiguous(), acc[qk.name].mean())
    assert model.q.shared_input is model.k.shared_input is not None
    with torch.enable_grad():
        expected = text_forward(model, batches[0])  # every member through its own fused op
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        shared = text_forward(model, batches[0])
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-6)
    rows = batches[0]["ids"].numel()
    separate = 2 * rows * 5 * (16 + 24) * 2  # q and k each: x @ P and (x P) @ Wᵀ
    once = 2 * rows * 5 * 16 + 2 * 2 * rows * 5 * 24
    head = 2 * batches[0]["ids"].shape[0] * 9 * 24 * 3
    assert counter.get_total_flops() - head == once < separate  # the embedding lookup counts no FLOPs
    with torch.no_grad():  # a new input of the same shape is projected afresh, not served from the cache
        other = text_forward(model, batches[1])
        torch.testing.assert_close(other, text_forward(model, {k: v.clone() for k, v in batches[1].items()}))
    with torch.no_grad():  # the basis changed in place (an optimizer step): the cached projection is not reused
        h = model.embed(batches[0]["ids"])
        before = model.k(h)
        model.q.basis.mul_(2.0)
        model.q(h)
        torch.testing.assert_close(model.k(h), model.k(h.clone()))
        assert not torch.allclose(model.k(h), before)
    clone = copy.deepcopy(model)
    assert clone.q.shared_input is clone.k.shared_input is not model.q.shared_input
    assert clone.q.shared_input._projected is None and clone.q.shared_input._key is None
    assert pickle.loads(pickle.dumps(model.q.shared_input))._projected is None


class Narrowing(nn.Module):
    """wide → narrow Linear whose outputs live on a rank-3 affine subspace (plus the head reading them)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(6, 40), nn.Linear(40, 12), nn.Linear(12, 2)
        with torch.no_grad():  # down's weight has rank 3: its outputs span 3 directions around its bias
            self.down.weight.copy_(torch.randn(12, 3) @ torch.randn(3, 40))

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


def test_a_narrowing_linear_is_projected_on_its_output():
    torch.manual_seed(3)
    model = Narrowing()
    forward = lambda m, b: m(b["x"])  # noqa: E731
    batches = [{"x": torch.randn(64, 6)} for _ in range(3)]
    sites, acc = calibrated(model, batches, forward)
    assert [(s.kind, s.names, s.dim, s.name) for s in sites[1:3]] == [
        ("linear", ["down"], 40, "down"), ("linear_output", ["down"], 12, "down [output]")]
    output = sites[2]
    reference = forward(model, batches[0]).detach()
    before, after = output.parameters(model, 3)
    assert (before, after) == (40 * 12 + 12, 3 * (40 + 12) + 12)
    basis = torch.linalg.eigh(acc[output.name].covariance())[1][:, -3:]
    rewrite_site(model, output, basis.float(), acc[output.name].mean())
    assert isinstance(model.down, ProjectedLinear) and model.down.rank == 3
    assert sum(p.numel() for p in model.down.parameters()) == after
    torch.testing.assert_close(forward(model, batches[0]), reference, rtol=1e-4, atol=1e-4)  # rank 3 is exact

"""Calibration hooks: shared-input grouping, padding masks, statistics equal to a direct computation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rmtkd.calibration import calibrate, discover_sites


class TinyBlock(nn.Module):
    """Q/K/V read one tensor; the FFN reads another; a second block reuses freed memory."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        attended = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return attended + self.down(torch.relu(self.up(attended)))


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyBlock(), TinyBlock()])

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = inputs * 1.0  # a fresh tensor each call, freed after the blocks use it
        for block in self.blocks:
            x = block(x)
        return x


def forward(model, batch):
    return model(batch["inputs"], batch["attention_mask"])


def make_batches(count: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(2, 8, (4, 1), generator=generator)
        batches.append({"inputs": torch.randn(4, 7, 12, generator=generator),
                        "attention_mask": (torch.arange(7) < lengths).long()})
    return batches


def test_sites_group_shared_inputs_and_never_alias_freed_memory():
    torch.manual_seed(0)
    sites = discover_sites(TinyModel(), make_batches(1)[0], forward)
    assert [s.names for s in sites] == [  # the narrowing FFN "down" also gets an output site after its input site
        ["blocks.0.query", "blocks.0.key", "blocks.0.value"], ["blocks.0.up"], ["blocks.0.down"], ["blocks.0.down"],
        ["blocks.1.query", "blocks.1.key", "blocks.1.value"], ["blocks.1.up"], ["blocks.1.down"], ["blocks.1.down"],
    ]
    assert sites[0].name == "blocks.0.{query,key,value}" and sites[0].kind == "linear"
    assert sites[2].dim == 24 and sites[2].name == "blocks.0.down"
    assert sites[3].kind == "linear_output" and sites[3].dim == 12 and sites[3].name == "blocks.0.down [output]"


def test_statistics_match_direct_computation_over_real_tokens():
    torch.manual_seed(1)
    model = TinyModel()
    batches = make_batches()
    sites = discover_sites(model, batches[0], forward)
    calibration = calibrate(model, batches, forward, sites, estimate_design_effect=True)
    assert calibration.batches == 3 and calibration.sequences == 12
    captured = []
    handle = model.blocks[1].up.register_forward_pre_hook(lambda m, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
    handle.remove()
    rows = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(captured, batches)]).double()
    site = next(s for s in calibration.sites if s.names == ["blocks.1.up"])
    stats = calibration.of(site)
    assert stats.accumulator.count == rows.shape[0] == sum(int(b["attention_mask"].sum()) for b in batches)
    torch.testing.assert_close(stats.accumulator.covariance(), torch.cov(rows.T, correction=0), rtol=1e-4, atol=1e-5)
    assert stats.design_effect.tokens == rows.shape[0]


def test_empty_calibration_and_no_compressible_layer_are_errors():
    model = TinyModel()
    sites = discover_sites(model, make_batches(1)[0], forward)
    with pytest.raises(ValueError, match="batches: the calibration set is empty"):
        calibrate(model, [], forward, sites)
    with pytest.raises(ValueError, match="model: no compressible layer"):
        discover_sites(nn.Sequential(nn.ReLU()), {"x": torch.randn(2, 3)}, lambda m, b: m(b["x"]))

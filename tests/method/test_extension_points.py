"""A site kind and a model adapter defined outside the package, registered, and used by the whole loop: found,
calibrated, selected, rewritten, distilled, saved and loaded back by name."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from rmtkd.adapters import ClassifierAdapter, load_model, register_adapter
from rmtkd.calibration import SelectionConfig
from rmtkd.distill import DistillConfig
from rmtkd.loop import LoopConfig, compress
from rmtkd.task import Task
from rmtkd.sites import Include, Site, Trace, register_site_kind
from rmtkd_kernels import ProjectedLinear


class Affine(nn.Module):
    """A layer no built-in site kind knows: y = x Mᵀ + shift."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.shift = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.T + self.shift

    def as_linear(self) -> nn.Linear:
        linear = nn.Linear(self.matrix.shape[1], self.matrix.shape[0])
        with torch.no_grad():
            linear.weight.copy_(self.matrix)
            linear.bias.copy_(self.shift)
        return linear


@dataclass
class AffineInput(Site):
    """The toy kind: an Affine layer projected on its input (one file's worth of code)."""

    kind = "toy_affine_input"

    @classmethod
    def find(cls, model: nn.Module, trace: Trace, include: Include) -> list[Site]:
        return [cls(names=[c.name], dim=c.module.matrix.shape[1], order=c.order)
                for c in trace.called(include, lambda m: isinstance(m, Affine))]

    def parameters(self, model: nn.Module, k: int) -> tuple[int, int]:
        (affine,) = self.members(model)
        d_out = affine.matrix.shape[0]
        return affine.matrix.numel() + d_out, self.dim * k + k * d_out + d_out

    def rewrite(self, model: nn.Module, basis: Tensor, mean: Tensor) -> None:
        layer = ProjectedLinear.from_linear(self.members(model)[0].as_linear(), basis, mean)
        setattr(model, self.names[0], layer)

    def rebuild(self, model: nn.Module, k: int) -> None:
        (affine,) = self.members(model)
        setattr(model, self.names[0], ProjectedLinear(self.dim, affine.matrix.shape[0], k))

    def weight_basis(self, model: nn.Module, k: int) -> Tensor:
        return torch.linalg.svd(self.members(model)[0].matrix.detach().double())[2][:k].T.float()


class AffineNet(nn.Module):
    def __init__(self, d: int = 24, classes: int = 3) -> None:
        super().__init__()
        self.first, self.second, self.head = Affine(d, 48), Affine(48, 48), nn.Linear(48, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.second(torch.relu(self.first(x)))))


class AffineNetAdapter(ClassifierAdapter):
    """The toy adapter: Affine layers are sites, the head is not; blocks are single sites."""

    name = "toy-affine-net"

    def architecture(self, model: nn.Module) -> dict:
        return {"adapter": self.name, "d": model.first.matrix.shape[1]}

    def build(self, architecture: dict) -> nn.Module:
        return AffineNet(architecture["d"])

    def include(self, name: str, module: nn.Module) -> bool:
        return isinstance(module, Affine)

    def forward(self, model: nn.Module, batch: dict) -> Tensor:
        return model(batch["x"])


@pytest.fixture
def registered():
    """The toy kind and adapter registered for the test only."""
    from rmtkd.adapters.base import ADAPTERS
    from rmtkd.sites.base import KINDS

    with KINDS.scoped(), ADAPTERS.scoped():
        register_site_kind(AffineInput)
        register_adapter(AffineNetAdapter)
        yield


def batches(count: int, seed: int) -> list[dict]:
    """Inputs on a rank-6 subspace plus small noise; labels from the first coordinate."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, 24, generator=torch.Generator().manual_seed(7))
    out = []
    for _ in range(count):
        x = torch.randn(64, 6, generator=generator) @ mixing + 0.01 * torch.randn(64, 24, generator=generator)
        out.append({"x": x, "labels": (x[:, 0] > 0).long() + (x[:, 1] > 1).long()})
    return out


def test_a_toy_site_kind_and_adapter_compress_a_model(tmp_path, registered):
    torch.manual_seed(0)
    model = AffineNet().eval()
    task = Task(adapter=AffineNetAdapter(), model=model, train_batches=lambda step: batches(3, 10 + step),
                calibration_batches=batches(8, 1), eval_batches=batches(2, 2))
    config = LoopConfig(selection=SelectionConfig(), distill=DistillConfig(steps=2, lr=1e-3))
    compressed, report = compress(task, config, tmp_path, log=lambda message: None)
    first = report["steps"][0]["sites"][0]
    assert first["kind"] == "toy_affine_input" and first["k"] == 6 and first["action"] == "projected"
    assert isinstance(compressed.first, ProjectedLinear) and compressed.first.rank == 6
    assert report["final"]["parameters"] < report["original"]["parameters"]

    loaded = load_model(tmp_path / "model")  # found again by the names the folder records
    assert isinstance(loaded.adapter, AffineNetAdapter)
    x = task.eval_batches[0]["x"]
    torch.testing.assert_close(loaded.model(x), compressed.eval()(x))


def test_registries_refuse_what_is_not_a_kind_or_an_adapter():
    with pytest.raises(ValueError, match="cls: expected a Site subclass with a `kind` name"):
        register_site_kind(Affine)
    with pytest.raises(ValueError, match="cls: expected a ModelAdapter subclass with a non-empty `name`"):
        register_adapter(ClassifierAdapter)
    from rmtkd.sites import site_kind

    with pytest.raises(ValueError, match="kind: unknown site kind 'toy_affine_input'; this rmtkd knows"):
        site_kind("toy_affine_input")  # the fixture's registration did not leak

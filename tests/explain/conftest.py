"""Small seeded models for the explanation tests (random weights, nothing downloaded)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn


def scaled_head(model: nn.Module, scale: float) -> nn.Module:
    """Scale the classifier so logits are 'moderate' (a few units apart) instead of ~0.05."""
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.zero_()
    return model


@pytest.fixture(scope="session")
def resnet():
    torch.manual_seed(0)
    return scaled_head(timm.create_model("resnet18", num_classes=10), 40.0).eval()


@pytest.fixture(scope="session")
def vit():
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                              num_heads=2, num_classes=10, reg_tokens=2, dynamic_img_size=True)
    return scaled_head(model, 8.0).eval()


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 64, 64, generator=g)


@pytest.fixture(scope="session")
def vit_images():
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 3, 32, 48, generator=g)  # non-square: a 4×6 grid


class GapLinear(nn.Module):
    """conv features → global average pool → linear: the model Finer-CAM has a closed form for."""

    def __init__(self, channels: int = 16, num_classes: int = 6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))

    def get_classifier(self):
        return self.fc


@pytest.fixture(scope="session")
def gap_linear():
    torch.manual_seed(4)
    model = GapLinear().eval()
    with torch.no_grad():
        model.fc.weight.mul_(5)
    return model

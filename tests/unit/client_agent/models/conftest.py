"""Fixtures the model-family tests share: a small real image silo and a tiny image backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.tools.digit_silos import load_mnist


@pytest.fixture(scope="module")
def digit_silo() -> ImageSiloData:
    """16 zeros and 16 ones from MNIST for training."""
    images, labels = load_mnist()
    picks = np.concatenate([np.flatnonzero(labels == digit)[:16] for digit in (0, 1)])
    train = ImageSplit(images=images[picks], labels=(labels[picks] == 1).astype(np.int64))
    return ImageSiloData(name="digits", labels=("0", "1"), metadata={}, train=train)


@pytest.fixture
def tiny_cnn() -> type[nn.Module]:
    """A conv + BatchNorm stand-in for an image backbone (the class: build one per model)."""
    return _TinyCnn


class _TinyCnn(nn.Module):
    """A conv + BatchNorm stand-in for an image backbone."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.proj = nn.Conv2d(8, 16, kernel_size=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.proj(torch.relu(self.bn(self.conv(images)))).mean(dim=(2, 3))
        return pooled

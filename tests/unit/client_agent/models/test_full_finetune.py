"""Tests for the full fine-tuning baseline (text and images): real MiniLM, no mocks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedprompt_client_agent.data.image_silos import ImageSiloData
from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.models.backbone import Tokenizer
from fedprompt_client_agent.models.full_finetune import (
    FULL_FINETUNE_SUGGESTED_LR,
    FullFinetuneClassifier,
    build_full_classifier,
)
from fedprompt_client_agent.models.headed import ImageSpec, build_vision_adapter_classifier
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

HIDDEN = 384
FAST = {"batch_size": 4, "max_length": 32}


@pytest.fixture(scope="module")
def full() -> tuple[FullFinetuneClassifier, Tokenizer]:
    """A full fine-tuning model, trained by one test only (order-independent assertions)."""
    return build_full_classifier(num_labels=2, seed=0, device="cpu")


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> set[str]:
    return {key for key in before if not np.array_equal(before[key], after[key])}


# --------------------------------------------------------------------------- full fine-tuning


def test_full_shared_state_is_every_backbone_weight(
    full: tuple[FullFinetuneClassifier, Tokenizer],
) -> None:
    model, _ = full
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert {id(p) for p in trainable} == {
        id(p) for p in (*model.prompt_parameters(), *model.head_parameters())
    }
    shared = model.shared_state()
    count = sum(p.numel() for p in trainable)
    assert sum(v.size for v in shared.values()) == count
    assert sum(v.nbytes for v in shared.values()) == 4 * count
    assert 85e6 < 4 * count < 95e6  # ~91 MB of float32: the communication reference
    names = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    assert set(shared) == names | {"head.weight", "head.bias"}
    assert "backbone.embeddings.position_ids" not in shared  # buffers do not travel
    assert shared["backbone.embeddings.word_embeddings.weight"].shape == (30522, HIDDEN)
    assert model.expected_shapes() == {k: v.shape for k, v in shared.items()}
    assert model.local_state() == {} and model.max_text_tokens == 512


def test_full_frozen_modules_stay_home() -> None:
    model, _ = build_full_classifier(num_labels=2, device="cpu", frozen_modules=("pooler",))
    shared = model.shared_state()
    assert not any(k.startswith("backbone.pooler.") for k in shared)
    assert not any(p.requires_grad for p in model.backbone.get_submodule("pooler").parameters())
    assert 4 * sum(v.size for v in shared.values()) == 90_855_944 - 4 * (HIDDEN * HIDDEN + HIDDEN)
    with pytest.raises(AttributeError):
        build_full_classifier(num_labels=2, device="cpu", frozen_modules=("no_such_module",))


def test_full_steps_change_the_backbone_and_round_trip(
    tmp_path: Path, two_class_silo: SiloData, full: tuple[FullFinetuneClassifier, Tokenizer]
) -> None:
    model, tokenizer = full
    before = model.shared_state()
    trainer = LocalTrainer(
        model,
        tokenizer,
        two_class_silo,
        TrainConfig(steps=2, lr=FULL_FINETUNE_SUGGESTED_LR, **FAST),
    )
    assert math.isfinite(trainer.train().mean_loss)
    after = model.shared_state()
    changed = _changed(before, after)
    # everything on the path from the embeddings to the head moves; BERT's pooler is unused
    assert changed == {k for k in before if not k.startswith("backbone.pooler.")}

    with pytest.raises(ValueError, match="shape"):
        model.load_shared_state({"backbone.encoder.layer.0.output.dense.bias": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown shared"):
        model.load_shared_state(
            {"lora.encoder.layer.0.attention.self.query.lora_A.weight": before["head.bias"]}
        )
    model.load_shared_state({k: before[k] for k in ("head.weight", "head.bias")})
    assert _changed(after, model.shared_state()) == {"head.weight", "head.bias"}

    path = model.save_personal(tmp_path / "full.safetensors")
    assert path.stat().st_size > 4 * sum(v.size for v in after.values())
    model.load_shared_state(before)
    assert _changed(before, model.shared_state()) == set()
    model.load_personal(path)
    restored = model.shared_state()
    assert _changed(after, restored) == {"head.weight", "head.bias"}


def test_generic_backbone_full_finetune_keeps_batchnorm_stats_personal(
    tmp_path: Path, tiny_cnn: type[Any]
) -> None:
    model = FullFinetuneClassifier(
        tiny_cnn(), features=tiny_cnn.features, feature_dim=16, num_labels=2, seed=4
    )
    assert set(model.shared_state()) == {
        "backbone.conv.weight",
        "backbone.conv.bias",
        "backbone.bn.weight",
        "backbone.bn.bias",
        "backbone.proj.weight",
        "backbone.proj.bias",
        "head.weight",
        "head.bias",
    }
    model.train()
    model(torch.rand(4, 3, 8, 8))  # updates the running statistics
    stats = model.personal_state()["buffer.bn.running_mean"]
    assert stats.any()
    path = model.save_personal(tmp_path / "cnn.safetensors")
    other = FullFinetuneClassifier(
        tiny_cnn(), features=tiny_cnn.features, feature_dim=16, num_labels=2, seed=5
    )
    other.load_personal(path)
    assert _changed(model.personal_state(), other.personal_state()) == set()


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_vision_full_baseline_leaves_the_imagenet_classifier_home(
    tmp_path: Path, digit_silo: ImageSiloData
) -> None:
    model = build_vision_adapter_classifier(num_labels=2, mode="full", seed=1, device="cpu")
    assert isinstance(model, FullFinetuneClassifier)
    shared = model.shared_state()
    assert not any(k.startswith("backbone._fc.") for k in shared)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(v.size for v in shared.values()) == sum(p.numel() for p in trainable)
    assert sum(v.nbytes for v in shared.values()) > 10_000_000
    assert "buffer._bn1.running_mean" in model.personal_state()  # personal, not shared
    assert "buffer._bn1.running_mean" not in shared

    trainer = VisionTrainer(model, digit_silo, TrainConfig(steps=2, batch_size=16, lr=1e-4))
    assert math.isfinite(trainer.train().mean_loss)
    changed = _changed(shared, model.shared_state())
    assert {"head.weight", "backbone._conv_head.weight", "backbone._conv_stem.weight"} <= changed
    path = model.save_personal(tmp_path / "vision-full.safetensors")
    other = build_vision_adapter_classifier(num_labels=2, mode="full", seed=2, device="cpu")
    other.load_personal(path)
    assert _changed(model.personal_state(), other.personal_state()) == set()
    with pytest.raises(ValueError, match="mode"):
        build_vision_adapter_classifier(num_labels=2, mode="prompt", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size"):
        ImageSpec(image_size=16)

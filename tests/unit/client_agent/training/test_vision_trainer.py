"""Tests for local training of the visual prompt classifier: real weights, real digits."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.models.visual_prompt import (
    VisualPromptClassifier,
    build_visual_prompt_classifier,
)
from fedprompt_client_agent.tools.digit_silos import load_mnist
from fedprompt_client_agent.training.trainer import TrainConfig
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

FAST = {"batch_size": 16}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def three_digit_silo() -> ImageSiloData:
    """Digits 0, 1 and 7 from MNIST: 30 training and 10 test images each, 4 val."""
    images, labels = load_mnist()
    digits = (0, 1, 7)
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {
        "train": ([], []),
        "val": ([], []),
        "test": ([], []),
    }
    for label, digit in enumerate(digits):
        positions = np.flatnonzero(labels == digit)
        for name, (lo, hi) in {"train": (0, 30), "val": (30, 34), "test": (34, 44)}.items():
            parts[name][0].extend(images[positions[lo:hi]])
            parts[name][1].extend([label] * (hi - lo))
    splits = {
        name: ImageSplit(images=np.stack(imgs), labels=np.array(lbls))
        for name, (imgs, lbls) in parts.items()
    }
    return ImageSiloData(name="three-digits", labels=("0", "1", "7"), metadata={}, **splits)


def _model(seed: int = 0) -> VisualPromptClassifier:
    return build_visual_prompt_classifier(num_labels=3, seed=seed, device="cpu")


def test_trainer_rejects_a_label_mismatch(three_digit_silo: ImageSiloData) -> None:
    model = build_visual_prompt_classifier(num_labels=4, device="cpu")
    with pytest.raises(ValueError, match="3 labels, the model's head has 4"):
        VisionTrainer(model, three_digit_silo, TrainConfig(steps=1))


def test_training_learns_three_digits(three_digit_silo: ImageSiloData) -> None:
    model = _model()
    trainer = VisionTrainer(model, three_digit_silo, TrainConfig(steps=10, **FAST))
    before = trainer.evaluate("test")
    first = trainer.train()
    trainer.train()
    last = trainer.train()
    after = trainer.evaluate("test")
    assert first.steps == 10 and first.examples_seen == 160
    assert last.mean_loss < first.mean_loss
    assert after.loss < before.loss
    assert after.accuracy >= 0.7  # chance is 1/3
    assert after.num_examples == 30
    assert 0.0 <= after.macro_f1 <= 1.0
    assert first.step_seconds_mean > 0 and first.seconds >= first.step_seconds_mean


def test_training_moves_prompt_and_head_but_not_the_backbone(
    three_digit_silo: ImageSiloData,
) -> None:
    model = _model()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    personal_before = model.personal_state()
    trainer = VisionTrainer(model, three_digit_silo, TrainConfig(steps=3, **FAST))
    trainer.train()
    after = model.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in backbone_before)
    personal_after = model.personal_state()
    assert all(not np.array_equal(personal_before[k], personal_after[k]) for k in personal_after)
    assert not any(m.training for m in model.backbone.modules())


def test_training_is_deterministic(three_digit_silo: ImageSiloData) -> None:
    states = []
    for _ in range(2):
        model = _model(seed=5)
        VisionTrainer(model, three_digit_silo, TrainConfig(steps=3, seed=2, **FAST)).train()
        states.append(model.personal_state())
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_extra_loss_is_added_and_checked(three_digit_silo: ImageSiloData) -> None:
    model = _model()
    trainer = VisionTrainer(model, three_digit_silo, TrainConfig(steps=2, **FAST))
    calls: list[VisualPromptClassifier] = []

    def pull_cluster_ring(m: VisualPromptClassifier) -> torch.Tensor:
        calls.append(m)
        return 5.0 + 0.0 * m.segment_parameter("cluster").sum()

    result = trainer.train(extra_loss=pull_cluster_ring)
    assert len(calls) == 2 and calls[0] is model
    assert result.mean_loss > 5.0
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.train(steps=1, extra_loss=lambda m: torch.tensor(math.nan))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        trainer.train(steps=0)


def test_evaluate_restores_mode_and_rejects_bad_splits(three_digit_silo: ImageSiloData) -> None:
    model = _model()
    no_test = ImageSiloData(
        name="no-test", labels=three_digit_silo.labels, train=three_digit_silo.train
    )
    trainer = VisionTrainer(model, no_test, TrainConfig(steps=1, eval_batch_size=7))
    model.train()
    result = trainer.evaluate("train")
    assert result.num_examples == 90
    assert model.training
    with pytest.raises(ValueError, match="is empty"):
        trainer.evaluate("test")
    with pytest.raises(ValueError, match="unknown split"):
        trainer.evaluate("dev")  # type: ignore[arg-type]


def test_update_config_validates(three_digit_silo: ImageSiloData) -> None:
    trainer = VisionTrainer(_model(), three_digit_silo, TrainConfig(steps=1))
    config = trainer.update_config(steps=4, lr=0.1, head_lr=0.01, batch_size=8)
    assert (trainer.config.steps, trainer.config.lr, config.batch_size) == (4, 0.1, 8)
    with pytest.raises(pydantic.ValidationError):
        trainer.update_config(steps=0)
    with pytest.raises(pydantic.ValidationError):
        trainer.update_config(image_size=64)
    assert trainer.config.steps == 4

"""The personalization pass on a copy: only the local segment and head train, nothing leaks back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.data.text_silos import SiloData, TextExample
from fedprompt_client_agent.models.headed import ImageSpec
from fedprompt_client_agent.models.lora import LoraClassifier, build_lora_classifier
from fedprompt_client_agent.models.text_prompt import PromptClassifier
from fedprompt_client_agent.models.visual_prompt import (
    VisualPromptSpec,
    build_visual_prompt_classifier,
)
from fedprompt_client_agent.tools.digit_silos import load_mnist
from fedprompt_client_agent.training.dp_sgd import DPLocalTrainer, DPSGDConfig
from fedprompt_client_agent.training.personalization import personal_copy, personal_views
from fedprompt_client_agent.training.trainer import BaseTrainer, LocalTrainer, TrainConfig
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = {
    "pos": ["great relief, works well", "wonderful, no side effects", "excellent results",
            "it helped a lot", "finally I sleep", "best choice I made"],
    "neg": ["terrible nausea all week", "awful headaches, stopped", "worst drug ever",
            "made me dizzy", "rash on day two", "useless and costly"],
}  # fmt: skip
CONFIG = TrainConfig(steps=12, batch_size=4, lr=0.05, head_lr=0.05, max_length=16, seed=1)


@pytest.fixture(scope="module")
def silo() -> SiloData:
    examples = tuple(TextExample(t, i) for i, key in enumerate(TEXTS) for t in TEXTS[key])
    return SiloData(
        name="clinic", labels=("pos", "neg"), metadata={}, train=examples, val=examples[:4],
        test=examples[4:8],
    )  # fmt: skip


def _state(model: Any) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = model.personal_state()
    return state


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _pass(trainer: BaseTrainer[Any]) -> tuple[dict[str, np.ndarray], float, float]:
    """Run a pass; return the copy's personal state and its train-split loss before and after.

    The state is read before ``restore_frozen``: without weight decay the frozen elements must
    not have moved at all (their gradient is masked).
    """
    with personal_copy(trainer) as personal:
        before = personal.trainer.evaluate("train").loss
        personal.trainer.train()
        state = _state(personal.trainer.model)
        personal.restore_frozen()
        after = personal.trainer.evaluate("train").loss
        return state, before, after


def test_the_copy_trains_its_local_rows_and_head_only_and_fits_the_train_split_better(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    trainer = LocalTrainer(model, tokenizer, silo, CONFIG)
    live = _state(model)
    trained, loss_before, loss_after = _pass(trainer)
    assert loss_after < 0.8 * loss_before, (loss_before, loss_after)
    # the global and cluster rows are the evaluated model's, bit for bit; local rows and head moved
    _assert_same({k: trained[k] for k in ("prompt.global", "prompt.cluster")},
                 {k: live[k] for k in ("prompt.global", "prompt.cluster")})  # fmt: skip
    for key in ("prompt.local", "head.weight", "head.bias"):
        assert np.abs(trained[key] - live[key]).max() > 1e-3, key
    # the live model, its gradients and its trainer's batch order are untouched
    _assert_same(_state(model), live)
    assert all(p.grad is None for p in model.parameters())
    fresh = LocalTrainer(model, tokenizer, silo, CONFIG)
    np.testing.assert_array_equal(trainer.next_training_indices(7), fresh.next_training_indices(7))
    assert trainer.next_dropout_seed() == fresh.next_dropout_seed()


def test_restore_frozen_undoes_what_weight_decay_did_to_the_frozen_rows(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    decaying = CONFIG.model_copy(update={"steps": 2, "weight_decay": 0.5})
    trainer = LocalTrainer(model, tokenizer, silo, decaying)
    live = _state(model)
    with personal_copy(trainer) as personal:
        personal.trainer.train()
        decayed = _state(personal.trainer.model)
        assert not np.array_equal(decayed["prompt.global"], live["prompt.global"])
        personal.restore_frozen()
        restored = _state(personal.trainer.model)
    for key in ("prompt.global", "prompt.cluster"):
        np.testing.assert_array_equal(restored[key], live[key], err_msg=key)
    np.testing.assert_array_equal(restored["prompt.local"], decayed["prompt.local"])


def test_the_copy_shares_the_frozen_backbone_and_owns_what_trains(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    trainer = LocalTrainer(model, tokenizer, silo, CONFIG)
    with personal_copy(trainer) as personal:
        twin = personal.trainer
        assert type(twin) is LocalTrainer and twin.model is not model
        assert twin.model.backbone is model.backbone  # hosted copies keep one backbone pass
        assert twin.model.prompt_embedding.weight is not model.prompt_embedding.weight
        assert twin.model.head.weight is not model.head.weight
        assert personal.trained == ("prompt.local", "head.weight", "head.bias")
        assert model.prompt_embedding.weight.requires_grad  # the live flag is kept
    assert personal_views(model).keys() == {"prompt.local", "head.weight", "head.bias"}


def test_a_dp_sgd_trainers_pass_is_plain_and_spends_no_epsilon(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    trainer = DPLocalTrainer(
        model, tokenizer, silo, CONFIG, dp=DPSGDConfig(noise_multiplier=1.0, seed=0)
    )
    trainer.train(steps=2)  # wraps and unwraps the model in Opacus
    accountant, live = trainer.state_dict(), _state(model)
    trained, loss_before, loss_after = _pass(trainer)
    assert loss_after < loss_before
    assert not np.array_equal(trained["prompt.local"], live["prompt.local"])
    assert trainer.state_dict() == accountant and trainer.steps_taken == 2
    _assert_same(_state(model), live)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    trainer.train(steps=1)  # the DP-SGD trainer still trains (and accounts) afterwards
    assert trainer.steps_taken == 3


def test_the_visual_prompts_local_ring_and_head_train_alone() -> None:
    images, labels = load_mnist()
    picks = np.concatenate([np.flatnonzero(labels == digit)[:8] for digit in (0, 1)])
    train = ImageSplit(images=images[picks], labels=(labels[picks] == 1).astype(np.int64))
    digits = ImageSiloData(name="digits", labels=("0", "1"), metadata={}, train=train)
    model = build_visual_prompt_classifier(
        num_labels=2, spec=VisualPromptSpec(image_size=32), seed=0, device="cpu"
    )
    trainer = VisionTrainer(model, digits, TrainConfig(steps=3, batch_size=8, lr=0.05))
    live = _state(model)
    trained, _, _ = _pass(trainer)
    moved = {k for k in live if not np.array_equal(trained[k], live[k])}
    assert moved == {"prompt.local", "head.weight", "head.bias"}
    _assert_same(_state(model), live)


def test_lora_trains_its_head_only_and_keeps_the_adapters(silo: SiloData) -> None:
    model, tokenizer = build_lora_classifier(num_labels=2, seed=0, device="cpu")
    trainer = LocalTrainer(model, tokenizer, silo, CONFIG.model_copy(update={"steps": 2}))
    live = _state(model)
    trained, _, _ = _pass(trainer)
    moved = {k for k in live if not np.array_equal(trained[k], live[k])}
    assert moved == {"head.weight", "head.bias"}  # no local segment: the head alone
    _assert_same(_state(model), live)
    assert all(p.grad is None for p in model.parameters())


def test_shared_batchnorm_statistics_and_training_flags_come_back(
    tiny_cnn_silo: tuple[LoraClassifier, ImageSiloData],
) -> None:
    model, images = tiny_cnn_silo
    trainer = VisionTrainer(model, images, TrainConfig(steps=3, batch_size=4, lr=0.05))
    model.eval()
    bn = model.backbone.bn
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    with personal_copy(trainer) as personal:
        assert personal.trainer.model.backbone.bn is bn  # frozen: shared with the live model
        personal.trainer.train()  # backbone_eval=False: the copy updates the shared statistics
        assert not torch.equal(bn.running_mean, stats[0])
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert not any(module.training for module in model.modules())


@pytest.fixture
def tiny_cnn_silo() -> tuple[LoraClassifier, ImageSiloData]:
    """A LoRA conv + BatchNorm model whose backbone trains in training mode, and its images."""

    class TinyCnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
                self.bn = torch.nn.BatchNorm2d(8)
                self.proj = torch.nn.Conv2d(8, 16, kernel_size=1)

        def features(self, images: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.proj(torch.relu(self.bn(self.conv(images)))).mean(dim=(2, 3))
            return out

    model = LoraClassifier(
        TinyCnn(), features=TinyCnn.features, feature_dim=16, num_labels=2,
        target_modules=["conv"], r=2, backbone_eval=False, spec=ImageSpec(image_size=32),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    train = ImageSplit(
        images=rng.integers(0, 256, size=(8, 8, 8, 3), dtype=np.uint8),
        labels=np.array([0, 1] * 4, dtype=np.int64),
    )
    return model, ImageSiloData(name="tiny", labels=("a", "b"), metadata={}, train=train)

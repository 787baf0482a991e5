"""Tests for local training and evaluation: real MiniLM, real reviews, no mocks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.models.backbone import BackboneKind, default_model_dir, load_backbone
from fedprompt_client_agent.models.text_prompt import (
    PromptClassifier,
    PromptSpec,
    build_prompt_classifier,
)
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig, macro_f1

SPEC = PromptSpec(n_global=4, n_cluster=2, n_local=2)
FAST = {"batch_size": 4, "max_length": 32}


def _model_and_tokenizer(seed: int = 0) -> tuple[PromptClassifier, Any]:
    return build_prompt_classifier(num_labels=2, spec=SPEC, seed=seed, device="cpu")


def test_train_config_validation() -> None:
    config = TrainConfig(steps=5)
    assert (config.batch_size, config.lr, config.head_lr, config.max_length) == (
        16,
        3e-2,
        3e-3,
        128,
    )
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(steps=0)
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(steps=1, lr=-1.0)
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(steps=1, unknown=3)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        config.steps = 3


def test_macro_f1_matches_hand_computation() -> None:
    assert macro_f1([0, 1, 1, 2], [0, 1, 1, 2]) == 1.0
    # class 0: tp=1 fp=1 fn=0 -> 2/3; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: predicted only -> 0
    assert macro_f1([0, 1, 1], [0, 0, 1]) == pytest.approx(2 / 3)
    assert macro_f1([0, 1], [2, 2]) == 0.0
    assert math.isnan(macro_f1([], []))
    with pytest.raises(ValueError, match="shape"):
        macro_f1([0], [0, 1])


def test_training_changes_prompt_and_head_but_never_the_backbone(two_class_silo: SiloData) -> None:
    model, tokenizer = _model_and_tokenizer()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = model.personal_state()
    result = LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=3, **FAST)).train()
    after = model.personal_state()
    assert (result.steps, result.examples_seen) == (3, 12)
    assert math.isfinite(result.mean_loss) and result.seconds > 0 and result.step_seconds_mean > 0
    for key in ("prompt.global", "prompt.cluster", "prompt.local", "head.weight", "head.bias"):
        assert not np.array_equal(before[key], after[key]), key
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), name


def test_loss_decreases_on_a_separable_subset(two_class_silo: SiloData) -> None:
    model, tokenizer = _model_and_tokenizer()
    trainer = LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=30, **FAST))
    start = trainer.evaluate("train")
    first = trainer.train(steps=10)
    trainer.train(steps=10)
    last = trainer.train(steps=10)
    end = trainer.evaluate("train")
    assert last.mean_loss < first.mean_loss
    assert end.loss < 0.5 * start.loss, (start, end)
    assert end.accuracy >= 0.875 and end.num_examples == 16


def test_training_is_deterministic_for_a_seed(two_class_silo: SiloData) -> None:
    results = []
    for _ in range(2):
        model, tokenizer = _model_and_tokenizer(seed=3)
        trainer = LocalTrainer(
            model, tokenizer, two_class_silo, TrainConfig(steps=2, seed=3, **FAST)
        )
        results.append((trainer.train().mean_loss, model.shared_state()["head.weight"]))
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


def test_evaluate_reports_metrics_and_restores_mode(two_class_silo: SiloData) -> None:
    model, tokenizer = _model_and_tokenizer()
    trainer = LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=1, **FAST))
    model.train()
    val = trainer.evaluate("val")
    assert model.training
    assert val.num_examples == 4 and 0.0 <= val.accuracy <= 1.0 and 0.0 <= val.macro_f1 <= 1.0
    assert val.loss > 0
    assert trainer.evaluate("val") == val  # eval is deterministic (dropout off)
    with pytest.raises(ValueError, match="unknown split"):
        trainer.evaluate("dev")  # type: ignore[arg-type]
    empty = SiloData(name="e", labels=two_class_silo.labels, train=two_class_silo.train)
    with pytest.raises(ValueError, match="'val' is empty"):
        LocalTrainer(model, tokenizer, empty, TrainConfig(steps=1, **FAST)).evaluate("val")


def test_update_config_validates(two_class_silo: SiloData) -> None:
    model, tokenizer = _model_and_tokenizer()
    trainer = LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=1, **FAST))
    assert trainer.update_config(steps=2, lr=0.1) == TrainConfig(steps=2, lr=0.1, **FAST)
    assert trainer.train().steps == 2
    with pytest.raises(pydantic.ValidationError):
        trainer.update_config(steps=0)
    with pytest.raises(pydantic.ValidationError):
        trainer.update_config(lr_typo=0.1)
    with pytest.raises(ValueError, match="max_length"):
        trainer.update_config(max_length=64)
    assert trainer.config.steps == 2


def test_label_count_must_match_head(two_class_silo: SiloData) -> None:
    model, tokenizer = build_prompt_classifier(num_labels=3, spec=SPEC, device="cpu")
    with pytest.raises(ValueError, match="3"):
        LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=1))


def test_extra_loss_is_added_to_the_objective(two_class_silo: SiloData) -> None:
    model, tokenizer = _model_and_tokenizer()
    trainer = LocalTrainer(model, tokenizer, two_class_silo, TrainConfig(steps=1, **FAST))
    result = trainer.train(extra_loss=lambda m: m.prompt_embedding.weight.sum() * 0 + 100.0)
    assert result.mean_loss > 100.0
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train(extra_loss=lambda m: m.prompt_embedding.weight.sum() * float("nan"))


def test_causal_lm_backbone_trains(tmp_path: Path, two_class_silo: SiloData) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    tokenizer.save_pretrained(tmp_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)

    backbone, loaded_tokenizer, kind = load_backbone(tmp_path, device="cpu")
    assert kind is BackboneKind.CAUSAL_LM
    assert type(backbone).__name__ == "LlamaModel"
    model = PromptClassifier(backbone, kind=kind, num_labels=2, spec=SPEC)
    assert model.shared_state()["prompt.global"].shape == (4, 32)
    result = LocalTrainer(
        model, loaded_tokenizer, two_class_silo, TrainConfig(steps=1, **FAST)
    ).train()
    assert result.steps == 1 and math.isfinite(result.mean_loss)


def test_causal_lm_without_pad_token_pads_with_eos(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    _, loaded, _ = load_backbone(tmp_path, device="cpu")
    assert loaded.pad_token == "[SEP]" and loaded.pad_token_id == loaded.eos_token_id

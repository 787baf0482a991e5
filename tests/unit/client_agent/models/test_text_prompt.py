"""Tests for the segmented peft prompt classifier on the real MiniLM backbone."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import ml_dtypes
import numpy as np
import pytest
import torch

from fedprompt_client_agent.models import backbone as backbone_module
from fedprompt_client_agent.models.text_prompt import (
    PromptClassifier,
    PromptSpec,
    build_prompt_classifier,
)

HIDDEN = 384
SPEC = PromptSpec(n_global=8, n_cluster=4, n_local=4)


def _classifier(seed: int = 0, spec: PromptSpec = SPEC, num_labels: int = 3) -> PromptClassifier:
    model, _ = build_prompt_classifier(num_labels=num_labels, spec=spec, seed=seed, device="cpu")
    return model


def _word_embeddings(model: PromptClassifier) -> torch.Tensor:
    return cast(torch.Tensor, model.backbone.get_input_embeddings().weight).detach()


@pytest.fixture(scope="module")
def classifier() -> PromptClassifier:
    return _classifier()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    _, tokenizer = build_prompt_classifier(num_labels=2, device="cpu")
    enc = tokenizer(
        ["the pill made me moody", "I feel less anxious"], padding=True, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


def test_prompt_spec_validation() -> None:
    assert PromptSpec().total == 16
    assert PromptSpec(n_global=0, n_cluster=0, n_local=1).segment_slices()["local"] == slice(0, 1)
    with pytest.raises(ValueError, match="at least one virtual token"):
        PromptSpec(n_global=0, n_cluster=0, n_local=0)
    with pytest.raises(ValueError, match="n_cluster"):
        PromptSpec(n_cluster=-1)
    with pytest.raises(TypeError):
        PromptSpec(8, 4, 4)  # type: ignore[call-arg]


def test_shared_and_local_state_keys_and_shapes(classifier: PromptClassifier) -> None:
    shared = classifier.shared_state()
    assert {k: v.shape for k, v in shared.items()} == {
        "prompt.global": (8, HIDDEN),
        "prompt.cluster": (4, HIDDEN),
        "head.weight": (3, HIDDEN),
        "head.bias": (3,),
    }
    assert all(v.dtype == np.float32 for v in shared.values())
    local = classifier.local_state()
    assert list(local) == ["prompt.local"] and local["prompt.local"].shape == (4, HIDDEN)
    table = classifier.prompt_embedding.weight.detach().numpy()
    assert np.array_equal(
        np.concatenate([shared["prompt.global"], shared["prompt.cluster"], local["prompt.local"]]),
        table,
    )
    shared["prompt.global"][:] = 0  # a copy, not a view
    assert not np.array_equal(classifier.shared_state()["prompt.global"], shared["prompt.global"])


def test_empty_segments_are_omitted() -> None:
    model = _classifier(spec=PromptSpec(n_global=2, n_cluster=0, n_local=0), num_labels=2)
    assert sorted(model.shared_state()) == ["head.bias", "head.weight", "prompt.global"]
    assert model.local_state() == {}
    with pytest.raises(ValueError, match=r"unknown shared tensor 'prompt\.cluster'"):
        model.load_shared_state({"prompt.cluster": np.zeros((0, HIDDEN), np.float32)})


def test_initial_values_depend_only_on_seed(classifier: PromptClassifier) -> None:
    same, other = _classifier(seed=0), _classifier(seed=1)
    for key, value in classifier.shared_state().items():
        assert np.array_equal(value, same.shared_state()[key])
    assert not np.array_equal(
        classifier.shared_state()["prompt.global"], other.shared_state()["prompt.global"]
    )
    word_std = float(_word_embeddings(classifier).std())
    assert 0.5 * word_std < float(classifier.prompt_embedding.weight.detach().std()) < 2 * word_std


def test_only_prompt_and_head_are_trainable(classifier: PromptClassifier) -> None:
    assert classifier.trainable_parameter_names() == [
        "peft_model.prompt_encoder.default.embedding.weight",
        "head.weight",
        "head.bias",
    ]
    backbone_params = list(classifier.backbone.parameters())
    assert len(backbone_params) > 50 and not any(p.requires_grad for p in backbone_params)


def test_load_shared_state_round_trip_and_subset() -> None:
    model = _classifier()
    rng = np.random.default_rng(0)
    new = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in model.shared_state().items()}
    local_before = model.local_state()["prompt.local"]
    model.load_shared_state(new)
    for key, value in model.shared_state().items():
        assert np.array_equal(value, new[key])
    assert np.array_equal(model.local_state()["prompt.local"], local_before)
    bias = np.array([1.0, 2.0, 3.0], dtype=ml_dtypes.bfloat16)
    model.load_shared_state({"head.bias": bias})
    assert model.shared_state()["head.bias"].tolist() == [1.0, 2.0, 3.0]
    assert np.array_equal(model.shared_state()["prompt.global"], new["prompt.global"])
    model.load_local_state({"prompt.local": np.ones((4, HIDDEN), np.float64)})
    assert (model.local_state()["prompt.local"] == 1.0).all()


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        (
            {"prompt.global": np.zeros((7, HIDDEN), np.float32)},
            r"shape \(7, 384\), expected \(8, 384\)",
        ),
        ({"head.bias": np.array([0.0, np.nan, 0.0], np.float32)}, "NaN or infinite"),
        ({"head.bias": np.array([0.0, np.inf, 0.0], np.float32)}, "NaN or infinite"),
        ({"head.bias": np.zeros(3, np.int64)}, "floating point"),
        (
            {"prompt.local": np.zeros((4, HIDDEN), np.float32)},
            "unknown shared tensor 'prompt.local'",
        ),
        (
            {"prompt.globl": np.zeros((8, HIDDEN), np.float32)},
            "unknown shared tensor 'prompt.globl'",
        ),
    ],
)
def test_load_shared_state_rejects_bad_tensors(
    classifier: PromptClassifier, tensors: dict[str, np.ndarray], fragment: str
) -> None:
    before = classifier.shared_state()
    good = {"head.weight": np.zeros((3, HIDDEN), np.float32)}
    with pytest.raises(ValueError, match=fragment):
        classifier.load_shared_state({**good, **tensors})
    after = classifier.shared_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing partially applied


def test_load_local_state_rejects_shared_keys(classifier: PromptClassifier) -> None:
    with pytest.raises(ValueError, match=r"unknown local tensor 'head\.bias'"):
        classifier.load_local_state({"head.bias": np.zeros(3, np.float32)})


def test_save_and_load_personal_is_bit_exact(tmp_path: Path) -> None:
    source, target = _classifier(seed=0), _classifier(seed=5)
    rng = np.random.default_rng(1)
    source.load_local_state({"prompt.local": rng.normal(size=(4, HIDDEN)).astype(np.float32)})
    path = source.save_personal(tmp_path / "nested" / "personal.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "personal.safetensors"
    ]  # no temp leftovers
    target.load_personal(path)
    expected, loaded = source.personal_state(), target.personal_state()
    assert sorted(loaded) == [
        "head.bias",
        "head.weight",
        "prompt.cluster",
        "prompt.global",
        "prompt.local",
    ]
    for key in expected:
        assert expected[key].tobytes() == loaded[key].tobytes()
    source.save_personal(path)  # overwriting works
    target.load_personal(path)


def test_load_personal_rejects_mismatches(tmp_path: Path, classifier: PromptClassifier) -> None:
    other = _classifier(spec=PromptSpec(n_global=8, n_cluster=4, n_local=2))
    path = other.save_personal(tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match=r"p\.safetensors: tensor 'prompt\.local' has shape"):
        classifier.load_personal(path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        classifier.load_personal(corrupt)
    with pytest.raises(ValueError, match="cannot read"):
        classifier.load_personal(tmp_path / "missing.safetensors")


def test_load_personal_requires_every_tensor(classifier: PromptClassifier) -> None:
    partial = classifier.personal_state()
    del partial["prompt.local"]
    with pytest.raises(ValueError, match="missing"):
        classifier.load_personal_state(partial)


def test_forward_uses_all_segments_with_batch_sized_prompt_lookup(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = _classifier()
    model.eval()
    seen: list[torch.Size] = []
    handle = model.prompt_embedding.register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].shape)
    )
    input_ids, mask = batch
    with torch.no_grad():
        before = model(input_ids, mask)
    handle.remove()
    assert before.shape == (2, 3) and before.dtype == torch.float32
    assert seen == [
        torch.Size([2, SPEC.total])
    ]  # per-example indices: Opacus can compute per-sample grads
    rng = np.random.default_rng(0)
    for key in ("prompt.global", "prompt.cluster", "prompt.local"):
        state = model.personal_state()
        # not a constant shift: the embedding LayerNorm removes one (up to rounding)
        change = rng.normal(size=state[key].shape).astype(state[key].dtype)
        model.load_personal_state({**state, key: state[key] + change})
        with torch.no_grad():
            after = model(input_ids, mask)
        assert not torch.allclose(before, after), key
        model.load_personal_state(state)


def test_padding_does_not_change_predictions(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = _classifier()
    model.eval()
    input_ids, mask = batch
    padded_ids = torch.cat([input_ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(input_ids, mask), model(padded_ids, padded_mask), atol=1e-5)


def test_unknown_prompt_init_and_text_init() -> None:
    backbone, _, kind = backbone_module.load_backbone(device="cpu")
    with pytest.raises(ValueError, match="unknown prompt_init"):
        PromptClassifier(backbone, kind=kind, num_labels=2, prompt_init="nope")
    model, tokenizer = build_prompt_classifier(
        num_labels=2, device="cpu", init_text="classify the condition"
    )
    ids = tokenizer("classify the condition", add_special_tokens=False)["input_ids"]
    words = _word_embeddings(model)[ids]
    assert torch.equal(model.prompt_embedding.weight[: len(ids)].detach(), words)

"""Tests for record-level DP-SGD (Opacus) on the real MiniLM with prompt tuning."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch import nn

from fedprompt_client_agent.data.text_silos import SiloData, TextExample
from fedprompt_client_agent.models.text_prompt import PromptClassifier
from fedprompt_client_agent.training import dp_sgd
from fedprompt_client_agent.training.dp_sgd import (
    DPLocalTrainer,
    DPSGDConfig,
    LocalBudgetExhaustedError,
    default_delta,
    make_accountant,
    poisson_sample,
)
from fedprompt_client_agent.training.proximal import ProximalTerm
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig

TINY = {"batch_size": 8, "max_length": 32}
_TOPICS = {
    0: "The new contraceptive pill gave me headaches and my periods became irregular",
    1: "My depression lifted after six weeks on this antidepressant and I sleep better",
}


@pytest.fixture(scope="module")
def silo() -> SiloData:
    """Eight training texts (two labels), two held out."""
    texts = [
        (f"{_TOPICS[label]} {suffix}", label)
        for suffix in ("at first.", "for months.", "since spring.", "every day.", "overall.")
        for label in (0, 1)
    ]
    examples = tuple(TextExample(text, label) for text, label in texts)
    return SiloData(
        name="dp-silo", labels=("Birth Control", "Depression"), train=examples[:8], val=examples[8:]
    )


pytestmark = pytest.mark.usefixtures("single_thread")


@contextlib.contextmanager
def _no_dropout(model: nn.Module) -> Iterator[None]:
    """Make training-mode forwards deterministic, so gradients can be compared exactly."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    rates = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(layers, rates, strict=True):
            m.p = p


def _dp_trainer(
    model: PromptClassifier, tokenizer: Any, silo: SiloData, *, steps: int = 1, **dp: Any
) -> DPLocalTrainer:
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "seed": 0, **dp}
    config = TrainConfig(steps=steps, **{**TINY, "batch_size": dp.pop("batch_size", 4)})
    settings.pop("batch_size", None)
    return DPLocalTrainer(model, tokenizer, silo, config, dp=DPSGDConfig(**settings))


def _assert_opacus_detached(model: PromptClassifier) -> None:
    assert not hasattr(model, "autograd_grad_sample_hooks")
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks, module
    for param in model.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter"):
            assert not hasattr(param, attr), attr


def test_config_validation() -> None:
    assert DPSGDConfig(noise_multiplier=1.0).accountant == "rdp"
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        DPSGDConfig()
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        DPSGDConfig(noise_multiplier=1.0, target_epsilon=3.0, total_steps=10)
    with pytest.raises(pydantic.ValidationError, match="total_steps"):
        DPSGDConfig(target_epsilon=3.0)
    with pytest.raises(pydantic.ValidationError):
        DPSGDConfig.model_validate({"noise_multiplier": 1.0, "accountant": "gdp"})
    with pytest.raises(pydantic.ValidationError):
        DPSGDConfig(noise_multiplier=1.0, unknown=1)  # type: ignore[call-arg]
    config = DPSGDConfig(noise_multiplier=1.0)
    with pytest.raises(pydantic.ValidationError):
        config.max_grad_norm = 2.0
    assert default_delta(8) == 1e-5 and default_delta(1_000_000) == pytest.approx(1e-7)
    assert DPSGDConfig(noise_multiplier=1.0, delta=1e-6).resolve_delta(8) == 1e-6


def test_poisson_sampler_draws_each_record_with_probability_q() -> None:
    rng = np.random.default_rng(1)
    sizes = [len(poisson_sample(rng, num_examples=1000, sample_rate=0.05)) for _ in range(400)]
    assert abs(np.mean(sizes) - 50) < 1.5  # std of the mean: sqrt(47.5 / 400) ≈ 0.34
    assert len(set(sizes)) > 10  # batch sizes vary
    assert poisson_sample(rng, num_examples=5, sample_rate=1.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="sample_rate"):
        poisson_sample(rng, num_examples=5, sample_rate=0.0)


def test_rdp_and_prv_match_the_reference_through_a_loaded_state(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    reference = {"format": "fedprompt-dp-sgd/1", "history": [[1.0, 0.1, 100]]}
    rdp = _dp_trainer(model, tokenizer, silo)
    rdp.load_state_dict({**reference, "mechanism": "rdp", "noise_multiplier": 1.0})
    assert rdp.epsilon(1e-5) == pytest.approx(7.8993, abs=1e-3)
    assert rdp.steps_taken == 100
    prv = _dp_trainer(model, tokenizer, silo, accountant="prv")
    prv.load_state_dict({**reference, "mechanism": "prv", "noise_multiplier": 1.0})
    assert prv.epsilon(1e-5) == pytest.approx(7.057, abs=0.01)
    with pytest.raises(ValueError, match="mechanism"):
        prv.load_state_dict({**reference, "mechanism": "rdp", "noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="steps"):
        rdp.load_state_dict(
            {**reference, "mechanism": "rdp", "noise_multiplier": 1.0, "history": [[1, 0.1, 0]]}
        )
    assert rdp.steps_taken == 100  # a rejected state changes nothing


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_dp_training_spends_epsilon_and_never_touches_the_backbone(
    model: PromptClassifier, tokenizer: Any, silo: SiloData, mode: str
) -> None:
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = model.personal_state()
    trainer = _dp_trainer(model, tokenizer, silo, grad_sample_mode=mode)
    assert trainer.epsilon() == 0.0
    first = trainer.train(steps=1)
    eps_1 = trainer.epsilon()
    trainer.train(steps=2)
    eps_3 = trainer.epsilon()
    assert 0 < eps_1 < eps_3 and trainer.steps_taken == 3
    assert eps_3 == pytest.approx(trainer.epsilon_after(0))
    assert trainer.epsilon(1e-3) < eps_3  # a looser δ gives a smaller ε
    assert first.steps == 1 and math.isfinite(first.mean_loss)
    after = model.personal_state()
    for key in before:
        assert not np.array_equal(before[key], after[key]), key
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), name
    _assert_opacus_detached(model)
    assert trainer.evaluate("val").num_examples == 2


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_per_sample_gradients_are_exact_and_clipped_to_c(
    model: PromptClassifier,
    tokenizer: Any,
    silo: SiloData,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clip = 0.05
    # q = 1: every record is in the batch, in index order; sigma = 0 shows the clipped sum.
    trainer = _dp_trainer(
        model,
        tokenizer,
        silo,
        batch_size=8,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        grad_sample_mode=mode,
    )
    params = [*model.prompt_parameters(), *model.head_parameters()]
    seen: dict[str, list[torch.Tensor]] = {}
    original = DPOptimizer.clip_and_accumulate

    def spy(self: DPOptimizer) -> None:
        seen["grad_samples"] = [g.detach().clone() for g in self.grad_samples]
        original(self)
        seen["summed"] = [p.summed_grad.detach().clone() for p in self.params]

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    with _no_dropout(model):
        model.train()
        reference = []
        for example in silo.train:
            ids = tokenizer(example.text, truncation=True, max_length=32, return_tensors="pt")
            logits = model(ids["input_ids"], ids["attention_mask"])
            loss = F.cross_entropy(logits, torch.tensor([example.label]))
            reference.append(torch.autograd.grad(loss, params))
        trainer.train(steps=1)

    grad_samples, summed = seen["grad_samples"], seen["summed"]
    assert [g.shape[0] for g in grad_samples] == [8, 8, 8]
    for i, expected in enumerate(reference):
        for got, want in zip(grad_samples, expected, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-3, atol=1e-5)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grad_samples], dim=1).norm(dim=1)
    assert (norms > clip).all()  # clipping is active for every record
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped_norms = norms * factors
    assert (clipped_norms <= clip * (1 + 1e-5)).all()
    for got, g in zip(summed, grad_samples, strict=True):
        torch.testing.assert_close(got, torch.einsum("i,i...->...", factors, g))
    _assert_opacus_detached(model)


def test_without_noise_or_clipping_a_full_batch_step_equals_the_plain_trainer(
    built: tuple[PromptClassifier, Any], tokenizer: Any, silo: SiloData
) -> None:
    model = built[0]
    initial = model.personal_state()
    states = []
    with _no_dropout(model):
        for make in ("plain", "dp"):
            model.load_personal_state(initial)
            config = TrainConfig(steps=1, **TINY)  # batch 8 = N: q = 1
            if make == "plain":
                LocalTrainer(model, tokenizer, silo, config).train()
            else:
                dp = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=1e6, seed=0)
                DPLocalTrainer(model, tokenizer, silo, config, dp=dp).train()
            states.append(model.personal_state())
    model.load_personal_state(initial)
    for key, value in states[0].items():
        np.testing.assert_allclose(states[1][key], value, atol=1e-4, err_msg=key)


def test_target_epsilon_calibration_holds_and_the_budget_stops_training(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    trainer = _dp_trainer(
        model, tokenizer, silo, noise_multiplier=None, target_epsilon=4.0, total_steps=3
    )
    sigma = trainer.noise_multiplier
    assert sigma > 0 and trainer.sample_rate == 0.5
    planned = RDPAccountant()
    planned.history = [(sigma, 0.5, 3)]
    assert 3.9 < planned.get_epsilon(delta=1e-5) <= 4.0  # calibrated to the 0.01 tolerance
    assert trainer.epsilon_after(3) <= 4.0
    trainer.train(steps=2)
    trainer.train(steps=1)
    assert 0 < trainer.epsilon() <= 4.0 and trainer.steps_taken == 3
    with pytest.raises(LocalBudgetExhaustedError, match="target"):
        trainer.train(steps=1)
    assert trainer.steps_taken == 3


def test_state_dict_round_trip_continues_epsilon(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    first = _dp_trainer(model, tokenizer, silo, noise_multiplier=None, target_epsilon=6.0,
                        total_steps=4)  # fmt: skip
    first.train(steps=2)
    saved = json.loads(json.dumps(first.state_dict()))
    restarted = _dp_trainer(
        model, tokenizer, silo, noise_multiplier=None, target_epsilon=6.0, total_steps=4
    )
    restarted.load_state_dict(saved)
    assert restarted.epsilon() == pytest.approx(first.epsilon())
    assert restarted.noise_multiplier == first.noise_multiplier
    restarted.train(steps=2)
    expected = make_accountant("rdp")
    expected.history = [(first.noise_multiplier, 0.5, 4)]
    assert restarted.steps_taken == 4
    assert restarted.epsilon() == pytest.approx(expected.get_epsilon(delta=1e-5))
    assert first.epsilon() < restarted.epsilon() <= 6.0
    with pytest.raises(ValueError, match="format"):
        restarted.load_state_dict({**saved, "format": "other/1"})


def test_extra_loss_gradient_is_added_outside_the_clipped_part(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    # C = 1e-12 and sigma = 0 make the private part vanish: only the regulariser moves rows.
    trainer = _dp_trainer(model, tokenizer, silo, noise_multiplier=0.0, max_grad_norm=1e-12)
    local_rows = torch.arange(6, 8)

    def shrink_local(m: PromptClassifier) -> torch.Tensor:
        # goes through the hooked embedding module: per-sample hooks must be off here
        value: torch.Tensor = m.prompt_embedding(local_rows).pow(2).sum()
        return value

    before = model.personal_state()
    result = trainer.train(steps=2, extra_loss=shrink_local)
    after = model.personal_state()
    assert np.linalg.norm(after["prompt.local"]) < np.linalg.norm(before["prompt.local"]) - 0.01
    assert np.abs(after["prompt.global"] - before["prompt.global"]).max() < 1e-4
    assert result.mean_loss > float(np.square(after["prompt.local"]).sum())
    _assert_opacus_detached(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train(extra_loss=lambda m: m.prompt_embedding.weight.sum() * float("nan"))
    _assert_opacus_detached(model)


def test_the_proximal_gradient_is_added_after_clipping_and_noise(
    model: PromptClassifier, tokenizer: Any, silo: SiloData
) -> None:
    # θ₀ is the round start; the shared tensors and the local segment then drift by 0.3.
    term = ProximalTerm(model, mu=10.0, names=["prompt.global", "head.bias"])
    start = model.personal_state()
    with torch.no_grad():
        model.prompt_embedding.weight[0:4] += 0.3  # the global rows
        model.prompt_embedding.weight[6:8] += 0.3  # the local rows
        model.head.bias += 0.3
    drifted = model.personal_state()
    # C = 1e-12 and sigma = 0: the private part vanishes. Had μ(θ - θ₀) been clipped with the
    # records' gradients it would vanish too; added after the DP step, it pulls back.
    trainer = _dp_trainer(model, tokenizer, silo, noise_multiplier=0.0, max_grad_norm=1e-12)
    result = trainer.train(steps=3, extra_loss=term)
    after = model.personal_state()

    def distance(state: dict[str, np.ndarray], key: str) -> float:
        return float(np.abs(state[key] - start[key]).max())

    assert distance(after, "prompt.global") < distance(drifted, "prompt.global") - 0.05  # 3 · lr
    assert distance(after, "head.bias") < distance(drifted, "head.bias") - 0.005  # 3 · head_lr
    np.testing.assert_allclose(after["prompt.local"], drifted["prompt.local"], atol=1e-4)
    np.testing.assert_allclose(after["prompt.cluster"], drifted["prompt.cluster"], atol=1e-4)
    assert result.mean_loss > term(model).item() > 100  # the objective includes the term
    assert trainer.steps_taken == 3
    _assert_opacus_detached(model)
    noisy = _dp_trainer(model, tokenizer, silo, noise_multiplier=1.0, max_grad_norm=1.0)
    assert np.isfinite(noisy.train(steps=2, extra_loss=term).mean_loss)
    assert noisy.epsilon() > 0
    _assert_opacus_detached(model)


def test_an_empty_poisson_batch_is_still_a_noisy_accounted_step(
    model: PromptClassifier, tokenizer: Any, silo: SiloData, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter([np.zeros(0, dtype=np.int64), np.arange(3, dtype=np.int64)])
    monkeypatch.setattr(dp_sgd, "poisson_sample", lambda *_, **__: next(draws))
    trainer = _dp_trainer(model, tokenizer, silo)
    before = model.personal_state()
    result = trainer.train(steps=1)
    assert result.examples_seen == 0 and math.isnan(result.mean_loss)
    assert trainer.steps_taken == 1 and trainer.epsilon() > 0
    assert not np.array_equal(before["head.bias"], model.personal_state()["head.bias"])  # noise
    result = trainer.train(steps=1)
    assert result.examples_seen == 3 and math.isfinite(result.mean_loss)
    assert trainer.steps_taken == 2

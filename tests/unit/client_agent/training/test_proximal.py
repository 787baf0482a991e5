"""FedProx's proximal term on the real MiniLM prompt classifier: value, gradient, what it pulls."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.models.text_prompt import PromptClassifier
from fedprompt_client_agent.training.proximal import ProximalTerm, make_proximal_loss
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig, sum_extra_losses

SHARED = ("prompt.global", "prompt.cluster", "head.weight", "head.bias")

pytestmark = pytest.mark.usefixtures("single_thread")


def _shift(model: PromptClassifier, shifts: dict[str, float]) -> None:
    """Add a constant to every entry of some segments (``global``, ``local``, ...) or head tensors."""
    rows = model.spec.segment_slices()
    with torch.no_grad():
        table = model.prompt_embedding.weight
        for name, value in shifts.items():
            if name in rows:
                table[rows[name]] += value
            else:
                getattr(model.head, name).add_(value)


def test_value_and_gradient_match_a_hand_computation(model: PromptClassifier) -> None:
    mu = 0.3
    rows = model.spec.segment_slices()  # the fixture's model: 4 global, 2 cluster, 2 local
    assert [rows[s].stop - rows[s].start for s in ("global", "cluster", "local")] == [4, 2, 2]
    term = ProximalTerm(model, mu=mu, names=SHARED)
    width = model.hidden_size
    _shift(model, {"global": 0.5, "cluster": -0.25, "local": 7.0, "weight": 1.0, "bias": 2.0})
    value = term(model)
    # μ/2 · (0.5² · 4 rows + 0.25² · 2 rows) · width + (1² · 2 · width) + (2² · 2); local: none
    squares = (0.25 * 4 + 0.0625 * 2) * width + 1.0 * 2 * width + 4.0 * 2
    assert value.item() == pytest.approx(mu / 2 * squares, rel=1e-6)
    value.backward()  # type: ignore[no-untyped-call]
    grad = model.prompt_embedding.weight.grad
    assert grad is not None and model.head.weight.grad is not None
    assert model.head.bias.grad is not None
    torch.testing.assert_close(grad[rows["global"]], torch.full((4, width), mu * 0.5))
    torch.testing.assert_close(grad[rows["cluster"]], torch.full((2, width), mu * -0.25))
    assert torch.count_nonzero(grad[rows["local"]]) == 0  # μ(θ - θ₀), never on the local rows
    torch.testing.assert_close(model.head.weight.grad, torch.full((2, width), mu * 1.0))
    torch.testing.assert_close(model.head.bias.grad, torch.full((2,), mu * 2.0))
    model.zero_grad(set_to_none=True)


def test_only_the_uploaded_tensors_are_pulled_and_never_the_local_segment(
    model: PromptClassifier,
) -> None:
    term = ProximalTerm(model, mu=1.0, names=["prompt.cluster"])  # e.g. a cluster-only upload
    _shift(model, {"global": 3.0, "local": 3.0, "weight": 3.0, "bias": 3.0})
    assert term(model).item() == 0.0  # nothing that does not travel counts
    _shift(model, {"cluster": 0.5})
    assert term(model).item() == pytest.approx(0.5 * 0.25 * 2 * model.hidden_size, rel=1e-6)
    for names in (["prompt.local"], ["prompt.global", "prompt.local"], ["backbone.x"]):
        with pytest.raises(ValueError, match="does not share"):
            make_proximal_loss(model, mu=0.1, names=names)


def test_theta_zero_is_a_detached_copy_taken_when_the_term_is_made(
    model: PromptClassifier,
) -> None:
    start = model.shared_state()
    term = ProximalTerm(model, mu=2.0, names=SHARED)
    assert term(model).item() == 0.0 and term(model).requires_grad
    _shift(model, {"bias": 1.0})
    assert term(model).item() == pytest.approx(2.0 / 2 * 1.0 * 2)  # the anchors did not move
    np.testing.assert_array_equal(term.anchors["head.bias"].numpy(), start["head.bias"])
    assert all(not anchor.requires_grad for anchor in term.anchors.values())


@pytest.mark.parametrize("mu", [0.0, 0])
def test_mu_zero_or_nothing_uploaded_is_no_term_at_all(model: PromptClassifier, mu: float) -> None:
    assert make_proximal_loss(model, mu=mu, names=SHARED) is None
    assert make_proximal_loss(model, mu=1.0, names=()) is None
    with pytest.raises(ValueError, match="μ > 0"):
        ProximalTerm(model, mu=mu, names=SHARED)


@pytest.mark.parametrize("mu", [float("nan"), float("inf"), -1.0, 1e9, 100.5])
def test_a_hostile_mu_is_refused(model: PromptClassifier, mu: float) -> None:
    with pytest.raises(ValueError, match=r"finite number in \[0, 100\]"):
        make_proximal_loss(model, mu=mu, names=SHARED)


def test_sum_of_extra_losses_keeps_a_lone_term_as_it_is(model: PromptClassifier) -> None:
    term = ProximalTerm(model, mu=1.0, names=SHARED)
    assert sum_extra_losses(None, None) is None
    assert sum_extra_losses(term, None) is term and sum_extra_losses(None, term) is term
    _shift(model, {"bias": 1.0})

    def constant(m: Any) -> torch.Tensor:
        return torch.tensor(5.0)

    both = sum_extra_losses(constant, term)
    assert both is not None and both(model).item() == pytest.approx(5.0 + 0.5 * 2)


def test_gradient_descent_with_the_term_stays_within_the_closed_form_bound(
    model: PromptClassifier,
) -> None:
    # A linear data loss aᵀθ plus the term: θ_t - θ₀ = -(a/μ)(1 - (1 - ημ)^t) under plain
    # gradient descent with step η, so |θ_t - θ₀| <= |a|/μ entrywise whenever ημ <= 1.
    mu, eta, steps = 4.0, 0.1, 12
    term = ProximalTerm(model, mu=mu, names=SHARED)
    params = [model.prompt_embedding.weight, model.head.weight, model.head.bias]
    generator = torch.Generator().manual_seed(0)
    slopes = {n: torch.randn(t.shape, generator=generator) for n, t in term.anchors.items()}
    optimizer = torch.optim.SGD(params, lr=eta)
    local_before = model.local_state()["prompt.local"]
    for _ in range(steps):
        live = model.shared_tensors()
        data = sum((slopes[n] * live[n]).sum() for n in SHARED)
        optimizer.zero_grad(set_to_none=True)
        (data + term(model)).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    shrink = 1 - (1 - eta * mu) ** steps
    for name in SHARED:
        drift = model.shared_tensors()[name].detach() - term.anchors[name]
        torch.testing.assert_close(drift, -slopes[name] / mu * shrink, rtol=1e-4, atol=1e-6)
        assert bool((drift.abs() <= slopes[name].abs() / mu).all()), name
    np.testing.assert_array_equal(model.local_state()["prompt.local"], local_before)


def test_adamw_training_with_a_large_mu_stays_near_the_round_start(
    built: tuple[PromptClassifier, Any], two_class_silo: SiloData
) -> None:
    model, tokenizer = built
    initial = model.personal_state()
    lr, steps = 0.05, 12
    drift: dict[float, dict[str, float]] = {}
    try:
        for mu in (0.0, 100.0):
            model.load_personal_state(initial)
            trainer = LocalTrainer(
                model,
                tokenizer,
                two_class_silo,
                TrainConfig(steps=steps, lr=lr, head_lr=lr, batch_size=4, max_length=32),
            )
            term = make_proximal_loss(model, mu=mu, names=SHARED)
            trainer.train(extra_loss=term)
            after = model.personal_state()
            drift[mu] = {k: float(np.abs(after[k] - initial[k]).max()) for k in initial}
    finally:
        model.load_personal_state(initial)
    # AdamW moves an entry by at most about lr per step whatever the gradient's scale, so
    # no μ-dependent bound follows from the optimizer alone (the closed-form bound is the
    # gradient-descent test above). What μ·lr = 5 does, far above the cross-entropy gradient
    # entries here: once an entry is one step (<= lr) away, the pull decides its gradient's
    # sign and the entry turns back; after 12 steps every shared entry is within one step of
    # θ₀ (measured: < 0.01 = lr / 5), while without the term the same steps carry the prompt
    # segments and the head's weight more than 5 steps' worth away.
    for name in SHARED:
        assert drift[100.0][name] <= lr, (name, drift)
    for name in ("prompt.global", "prompt.cluster", "head.weight"):
        assert drift[0.0][name] > 5 * lr, (name, drift)
    assert drift[100.0]["prompt.local"] > 5 * lr  # the local segment trains freely

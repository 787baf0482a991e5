"""Accountants, noise calibration and the budget halt."""

from __future__ import annotations

import json
import math

import pytest

from fedprompt_coordinator.config import PrivacyConfig
from fedprompt_coordinator.privacy import (
    BudgetExhaustedError,
    PLDAccountant,
    PrivacyBudget,
    RDPAccountant,
    calibrate_noise_multiplier,
    make_accountant,
    make_budget,
)


def test_rdp_matches_the_known_reference() -> None:
    acc = RDPAccountant()
    for _ in range(100):
        acc.step(noise_multiplier=1.0, sample_rate=0.1)
    # Opacus' RDPAccountant gives 7.8993 for the same composition
    assert acc.get_epsilon(1e-5) == pytest.approx(7.90, abs=0.01)


def test_pld_is_tighter_than_rdp() -> None:
    history = [(1.0, 0.1, 100)]
    pld = PLDAccountant.epsilon_of(history, 1e-5)
    assert pld == pytest.approx(7.05, abs=0.05)
    assert pld < RDPAccountant.epsilon_of(history, 1e-5)


def test_epsilon_grows_with_steps_and_is_zero_before() -> None:
    acc = make_accountant("rdp")
    assert acc.get_epsilon(1e-5) == 0.0
    eps = []
    for _ in range(3):
        acc.step(noise_multiplier=1.5, sample_rate=1.0)
        eps.append(acc.get_epsilon(1e-5))
    assert eps[0] < eps[1] < eps[2]
    assert acc.history == [(1.5, 1.0, 3)]


def test_state_dict_round_trip_and_mechanism_check() -> None:
    acc = RDPAccountant()
    acc.step(noise_multiplier=1.0, sample_rate=0.5, num_steps=4)
    restored = RDPAccountant()
    restored.load_state_dict(acc.state_dict())
    assert restored.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    with pytest.raises(ValueError, match="rdp"):
        PLDAccountant().load_state_dict(acc.state_dict())


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_calibration_meets_the_target(target: float) -> None:
    z = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=1.0, steps=5)
    assert RDPAccountant.epsilon_of([(z, 1.0, 5)], 1e-5) <= target
    # and is not needlessly large: 2 % less noise would exceed the target
    assert RDPAccountant.epsilon_of([(z * 0.98, 1.0, 5)], 1e-5) > target


def test_invalid_steps_are_refused() -> None:
    acc = RDPAccountant()
    with pytest.raises(Exception, match="noise_multiplier"):
        acc.step(noise_multiplier=0.0, sample_rate=0.5)
    with pytest.raises(Exception, match="sample_rate"):
        acc.step(noise_multiplier=1.0, sample_rate=1.5)


def test_budget_halts_before_the_round_that_would_exceed_it() -> None:
    budget = PrivacyBudget(
        accountant=RDPAccountant(),
        noise_multiplier=2.0,
        sample_rate=1.0,
        delta=1e-5,
        epsilon_budget=RDPAccountant.epsilon_of([(2.0, 1.0, 3)], 1e-5) + 1e-6,
    )
    for round_id in (1, 2, 3):
        budget.check_next_round(round_id)
        budget.record_round()
    spent = budget.epsilon
    assert spent <= budget.epsilon_budget
    with pytest.raises(BudgetExhaustedError, match="round 4 would raise") as info:
        budget.check_next_round(4)
    assert info.value.status_code.name == "FAILED_PRECONDITION"
    assert budget.epsilon == spent  # the refused round spent nothing
    assert budget.rounds == 3


def test_unlimited_budget_never_halts() -> None:
    budget = PrivacyBudget(
        accountant=RDPAccountant(), noise_multiplier=0.5, sample_rate=1.0, delta=1e-5
    )
    assert budget.epsilon_budget == math.inf
    for r in range(1, 20):
        budget.check_next_round(r)
        budget.record_round()


def test_no_budget_when_dp_is_off() -> None:
    assert make_budget(PrivacyConfig(), rounds=5, saved_accountant=None) is None


def test_budget_from_a_fixed_noise_multiplier_restores_the_spent_rounds() -> None:
    config = PrivacyConfig(
        enabled=True, noise_multiplier=1.5, accountant="pld", delta=1e-6, epsilon_budget=9.0
    )
    fresh = make_budget(config, rounds=5, saved_accountant=None)
    assert fresh is not None
    assert (fresh.noise_multiplier, fresh.delta, fresh.epsilon_budget) == (1.5, 1e-6, 9.0)
    assert fresh.accountant.mechanism == "pld" and fresh.rounds == 0
    fresh.record_round()
    fresh.record_round()
    saved = json.dumps(fresh.accountant.state_dict())
    restored = make_budget(config, rounds=5, saved_accountant=saved)
    assert restored is not None
    assert restored.rounds == 2 and restored.epsilon == fresh.epsilon


def test_budget_calibrated_for_a_target_epsilon_defaults_the_budget_to_it() -> None:
    config = PrivacyConfig(enabled=True, target_epsilon=4.0, client_sampling_rate=0.5)
    budget = make_budget(config, rounds=5, saved_accountant=None)
    assert budget is not None
    assert budget.epsilon_budget == 4.0 and budget.sample_rate == 0.5
    assert budget.noise_multiplier == calibrate_noise_multiplier(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.5, steps=5
    )

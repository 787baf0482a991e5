"""Per-level and composed accountants against an independent reference, and calibration.

The reference is written here from the closed form, not from dp-accounting: the Gaussian
mechanism with noise multiplier z (sensitivity 1, noise std z, no subsampling) is
(alpha, alpha/(2z²))-RDP for every order alpha > 1 (Mironov 2017, Prop. 7); T rounds compose to
T·alpha/(2z²); and (alpha, rho)-RDP implies (rho + log(1/δ)/(alpha-1), δ)-DP (Mironov 2017, Prop. 3). The
improved conversion of Balle et al. 2020 (Prop. 12) that dp-accounting applies is never
larger than that standard one; written out here too, it must match dp-accounting's figure.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprompt_coordinator.config import DPLevel, PrivacyConfig
from fedprompt_coordinator.privacy import (
    RDP_ORDERS,
    PLDAccountant,
    RDPAccountant,
    composed_noise_multiplier,
    level_mechanisms,
    make_budget,
)

DELTA = 1e-5
ALL = (DPLevel.GLOBAL, DPLevel.CLUSTER, DPLevel.HEAD)


def gaussian_rdp(alpha: np.ndarray, z: float, rounds: int) -> np.ndarray:
    """ε_RDP(alpha) of ``rounds`` Gaussian mechanisms of noise multiplier ``z`` (q = 1)."""
    return rounds * alpha / (2.0 * z * z)


def standard_epsilon(z: float, rounds: int, delta: float) -> float:
    """min over a fine grid of alpha of ε_RDP(alpha) + log(1/δ)/(alpha-1) (Mironov 2017)."""
    alpha = np.concatenate([np.linspace(1.001, 2, 2000), np.linspace(2, 2000, 400_000)])
    return float(np.min(gaussian_rdp(alpha, z, rounds) + math.log(1 / delta) / (alpha - 1)))


def improved_epsilon(z: float, rounds: int, delta: float, orders: tuple[float, ...]) -> float:
    """Balle et al. 2020, Prop. 12, over ``orders``: rho + log((alpha-1)/alpha) - (log δ + log alpha)/(alpha-1)."""
    alpha = np.array([a for a in orders if a > 1.01])
    rho = gaussian_rdp(alpha, z, rounds)
    eps = rho + np.log1p(-1 / alpha) - (math.log(delta) + np.log(alpha)) / (alpha - 1)
    return max(0.0, float(np.min(eps)))


@pytest.mark.parametrize(("z", "rounds"), [(0.5, 1), (1.0, 1), (1.0, 10), (2.0, 50), (4.0, 3)])
def test_a_level_accountant_matches_the_closed_form_gaussian_rdp(z: float, rounds: int) -> None:
    ours = RDPAccountant.epsilon_of([(z, 1.0, rounds)], DELTA)
    standard = standard_epsilon(z, rounds, DELTA)
    # the standard conversion (even minimised over a continuum of orders) upper-bounds ours
    assert ours <= standard + 1e-9
    # and ours is the improved conversion over its orders, to float precision
    assert ours == pytest.approx(improved_epsilon(z, rounds, DELTA, RDP_ORDERS), rel=1e-9)
    # the improved conversion does not gain more than log(alpha)/(alpha-1)-ish: same ballpark
    assert ours > 0.5 * standard


@pytest.mark.parametrize("levels", [1, 2, 3, 5])
@pytest.mark.parametrize("z", [0.7, 1.0, 3.0])
def test_l_levels_of_z_sqrt_l_are_one_level_of_z(levels: int, z: float) -> None:
    # closed form: L · alpha/(2 (z√L)²) = alpha/(2z²) for every alpha, so every conversion agrees
    z_level = z * math.sqrt(levels)
    assert composed_noise_multiplier([z_level] * levels) == pytest.approx(z, rel=1e-12)
    alpha = np.array(RDP_ORDERS)
    np.testing.assert_allclose(
        levels * gaussian_rdp(alpha, z_level, 7), gaussian_rdp(alpha, z, 7), rtol=1e-12
    )
    # dp-accounting agrees: L levels composed as L·T separate Gaussians = T of z
    separate = RDPAccountant.epsilon_of([(z_level, 1.0, 7 * levels)], DELTA)
    assert separate == pytest.approx(RDPAccountant.epsilon_of([(z, 1.0, 7)], DELTA), rel=1e-9)
    assert separate == pytest.approx(improved_epsilon(z, 7, DELTA, RDP_ORDERS), rel=1e-9)


def test_unequal_levels_compose_to_the_harmonic_noise_multiplier() -> None:
    zs = [0.8, 1.5, 4.0]
    z_eq = composed_noise_multiplier(zs)
    # Σ_l alpha/(2 z_l²) = alpha/(2 z_eq²)
    assert sum(1 / z**2 for z in zs) == pytest.approx(1 / z_eq**2)
    history = [(z, 1.0, 1) for z in zs]
    assert RDPAccountant.epsilon_of(history, DELTA) == pytest.approx(
        RDPAccountant.epsilon_of([(z_eq, 1.0, 1)], DELTA), rel=1e-9
    )
    # composition never helps: z_eq is below the smallest level's z
    assert z_eq < min(zs)
    with pytest.raises(ValueError):
        composed_noise_multiplier([])
    with pytest.raises(ValueError):
        composed_noise_multiplier([1.0, 0.0])


@pytest.mark.parametrize("levels", [ALL[:1], ALL[:2], ALL])
def test_the_composed_epsilon_of_a_budget_is_the_closed_form_of_its_levels(
    levels: tuple[DPLevel, ...],
) -> None:
    config = PrivacyConfig(enabled=True, noise_multiplier=1.2)
    budget = make_budget(config, rounds=4, saved_accountant=None, levels=levels)
    assert budget is not None
    for _ in range(4):
        budget.record_round()
    z_eq = 1.2 / math.sqrt(len(levels))
    assert budget.noise_multiplier == pytest.approx(z_eq)
    assert budget.epsilon == pytest.approx(improved_epsilon(z_eq, 4, DELTA, RDP_ORDERS), rel=1e-9)
    assert budget.epsilon <= standard_epsilon(z_eq, 4, DELTA)
    for level in levels:
        alone = budget.epsilon_by_level[level.value]
        assert alone == pytest.approx(improved_epsilon(1.2, 4, DELTA, RDP_ORDERS), rel=1e-9)
        assert alone <= budget.epsilon + 1e-12  # a level alone never reveals more
    assert set(budget.epsilon_by_level) == {lv.value for lv in levels}


def test_subsampling_amplifies_and_pld_is_tighter_for_the_composition_too() -> None:
    z_eq = composed_noise_multiplier([1.0, 1.0, 1.0])
    full = RDPAccountant.epsilon_of([(z_eq, 1.0, 20)], DELTA)
    sampled = RDPAccountant.epsilon_of([(z_eq, 0.1, 20)], DELTA)
    assert sampled < full
    assert PLDAccountant.epsilon_of([(z_eq, 0.1, 20)], DELTA) < sampled


@pytest.mark.parametrize(
    ("levels", "target", "q"),
    [
        *((levels, target, 1.0) for levels in (ALL[:1], ALL[:2], ALL) for target in (1.0, 4.0)),
        (ALL[:1], 8.0, 1.0),
        (ALL, 8.0, 0.5),  # subsampled (slower accountant): once
    ],
)
def test_a_target_epsilon_calibrates_every_level_and_the_composition_hits_it(
    levels: tuple[DPLevel, ...], target: float, q: float
) -> None:
    rounds = 6
    config = PrivacyConfig(
        enabled=True, target_epsilon=target, client_sampling_rate=q, clip_norm=0.5
    )
    budget = make_budget(config, rounds=rounds, saved_accountant=None, levels=levels)
    assert budget is not None
    mechanisms = budget.mechanisms
    assert set(mechanisms) == {lv.value for lv in levels}
    zs = {m.noise_multiplier for m in mechanisms.values()}
    assert len(zs) == 1  # the same z_l on every level
    z_eq = budget.noise_multiplier
    assert zs.pop() == pytest.approx(z_eq * math.sqrt(len(levels)))
    for round_id in range(1, rounds + 1):
        budget.check_next_round(round_id)  # the whole plan fits the budget
        budget.record_round()
    # the composed ε meets the target, within the calibration's tolerance
    assert budget.epsilon <= target
    assert budget.epsilon == pytest.approx(target, rel=0.03)
    # and the next round would exceed it
    assert budget.epsilon_after_next_round() > target
    # each level alone spends less than the target when there are several
    for eps in budget.epsilon_by_level.values():
        assert eps <= budget.epsilon + 1e-12
        if len(levels) > 1:
            assert eps < 0.9 * target


def test_level_mechanisms_fixed_noise_and_clip_overrides() -> None:
    config = PrivacyConfig(
        enabled=True, noise_multiplier=0.9, clip_norm=2.0, clip_norms={DPLevel.HEAD: 0.25}
    )
    mechanisms = level_mechanisms(config, levels=ALL, rounds=3)
    assert {k: (m.clip_norm, m.noise_multiplier) for k, m in mechanisms.items()} == {
        "global": (2.0, 0.9),
        "cluster": (2.0, 0.9),
        "head": (0.25, 0.9),
    }
    assert mechanisms["head"].noise_std == pytest.approx(0.225)
    assert level_mechanisms(PrivacyConfig(), levels=ALL, rounds=3) == {}

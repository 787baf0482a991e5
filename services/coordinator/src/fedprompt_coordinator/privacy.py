"""Client-level privacy accounting for DP-FedAvg: accountants, calibration, the budget facade.

The accountants follow Opacus' small interface (``step`` with keyword-only noise multiplier
and sample rate, ``get_epsilon``, a checked ``state_dict``) but are built on Google's
``dp-accounting`` library, so the coordinator needs no torch. Each round of DP-FedAvg is one
Poisson-subsampled Gaussian mechanism with noise multiplier ``z`` and sampling rate ``q``
(expected participants / clients; 1.0 when every client takes part).
"""

from __future__ import annotations

import abc
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedprompt.errors import InvalidArgumentError, NotReadyError
from fedprompt_coordinator.config import PrivacyConfig

logger = logging.getLogger(__name__)

#: RDP orders: Opacus' defaults (1.1 ... 10.9, 12 ... 63).
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


class _DropNonConvergedOrders(logging.Filter):
    """dp-accounting warns for every small fractional order whose series does not converge
    and then excludes that order, which is the intended behaviour; keep the log readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropNonConvergedOrders())


class BudgetExhaustedError(NotReadyError):
    """Opening another round would spend more privacy than the configured budget."""


def _event(noise_multiplier: float, sample_rate: float) -> dp_event.DpEvent:
    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    if sample_rate >= 1.0:
        return gaussian
    return dp_event.PoissonSampledDpEvent(sample_rate, gaussian)


class PrivacyAccountant(abc.ABC):
    """Tracks composed (noise multiplier, sample rate) steps and reports (ε, δ)."""

    mechanism: str = ""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Record ``num_steps`` applications of the subsampled Gaussian mechanism."""
        if noise_multiplier <= 0:
            raise InvalidArgumentError("noise_multiplier must be positive for accounting")
        if not 0 < sample_rate <= 1:
            raise InvalidArgumentError("sample_rate must be in (0, 1]")
        if num_steps < 1:
            raise InvalidArgumentError("num_steps must be at least 1")
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + num_steps)
        else:
            self.history.append((noise_multiplier, sample_rate, num_steps))

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before any step)."""
        return self.epsilon_of(self.history, delta)

    def epsilon_after(
        self, *, noise_multiplier: float, sample_rate: float, num_steps: int, delta: float
    ) -> float:
        """ε that would be spent after ``num_steps`` more steps (nothing is recorded)."""
        return self.epsilon_of([*self.history, (noise_multiplier, sample_rate, num_steps)], delta)

    @classmethod
    @abc.abstractmethod
    def epsilon_of(cls, history: list[tuple[float, float, int]], delta: float) -> float:
        """ε of a composition of (z, q, steps) entries at ``delta``."""

    def state_dict(self) -> dict[str, Any]:
        """Serializable state for resuming after a restart."""
        return {"mechanism": self.mechanism, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_dict`; rejects another mechanism's state."""
        if state.get("mechanism") != self.mechanism:
            raise ValueError(
                f"accountant state is for {state.get('mechanism')!r}, not {self.mechanism!r}"
            )
        self.history = [(float(z), float(q), int(n)) for z, q, n in state["history"]]


class RDPAccountant(PrivacyAccountant):
    """Rényi-DP accountant (Mironov 2017; subsampled Gaussian of Mironov et al. 2019)."""

    mechanism = "rdp"

    @classmethod
    def epsilon_of(cls, history: list[tuple[float, float, int]], delta: float) -> float:
        """ε by RDP composition and the improved RDP-to-DP conversion."""
        if not history:
            return 0.0
        acc = rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS))
        for z, q, n in history:
            acc.compose(_event(z, q), n)
        return float(acc.get_epsilon(delta))


class PLDAccountant(PrivacyAccountant):
    """Privacy-loss-distribution accountant (tighter than RDP)."""

    mechanism = "pld"

    @classmethod
    def epsilon_of(cls, history: list[tuple[float, float, int]], delta: float) -> float:
        """ε by numerical composition of privacy loss distributions."""
        if not history:
            return 0.0
        acc = pld_privacy_accountant.PLDAccountant()
        for z, q, n in history:
            acc.compose(_event(z, q), n)
        return float(acc.get_epsilon(delta))


ACCOUNTANTS: dict[str, Callable[[], PrivacyAccountant]] = {
    RDPAccountant.mechanism: RDPAccountant,
    PLDAccountant.mechanism: PLDAccountant,
}


def make_accountant(name: str) -> PrivacyAccountant:
    """Instantiate a registered accountant by name (``rdp`` or ``pld``)."""
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ValueError(f"unknown accountant {name!r}; known: {sorted(ACCOUNTANTS)}") from None


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    tolerance: float = 0.005,
) -> float:
    """Smallest noise multiplier z (to ``tolerance``) whose ε after ``steps`` is ≤ the target.

    Raises
    ------
    ValueError
        When the target cannot be met with z ≤ 1000.
    """
    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ValueError("target_epsilon must be positive and finite")
    cls = type(make_accountant(accountant))

    def eps(z: float) -> float:
        return cls.epsilon_of([(z, sample_rate, steps)], delta)

    low, high = 0.01, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1000:
            raise ValueError(f"ε={target_epsilon} is not reachable in {steps} steps")
    while high - low > tolerance:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


class PrivacyBudget:
    """The coordinator's facade: one accountant, the per-round mechanism, and the halt.

    Parameters
    ----------
    accountant
        Where rounds are composed.
    noise_multiplier
        z of DP-FedAvg (noise std z·S on the sum of clipped updates).
    sample_rate
        Expected participants / clients per round.
    delta
        δ at which ε is reported.
    epsilon_budget
        The federation refuses to open a round whose completion would exceed this ε
        (``math.inf``: no limit).
    """

    def __init__(
        self,
        *,
        accountant: PrivacyAccountant,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        epsilon_budget: float = math.inf,
    ) -> None:
        self.accountant = accountant
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.delta = delta
        self.epsilon_budget = epsilon_budget

    @property
    def epsilon(self) -> float:
        """ε spent so far."""
        return self.accountant.get_epsilon(self.delta)

    def epsilon_after_next_round(self) -> float:
        """ε once one more round is accounted."""
        return self.accountant.epsilon_after(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            num_steps=1,
            delta=self.delta,
        )

    def check_next_round(self, round_id: int) -> None:
        """Raise :class:`BudgetExhaustedError` if round ``round_id`` would exceed the budget."""
        after = self.epsilon_after_next_round()
        if after > self.epsilon_budget:
            raise BudgetExhaustedError(
                f"round {round_id} would raise ε from {self.epsilon:.3f} to {after:.3f}, over the "
                f"budget ε={self.epsilon_budget:g} at δ={self.delta:g}; the federation stops"
            )

    def record_round(self) -> float:
        """Account one completed round; returns the new ε."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        eps = self.epsilon
        logger.info("privacy: ε=%.4f at δ=%g after %d rounds", eps, self.delta, self.rounds)
        return eps

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return sum(n for _, _, n in self.accountant.history)


def make_budget(
    config: PrivacyConfig, *, rounds: int, saved_accountant: str | None
) -> PrivacyBudget | None:
    """The DP-FedAvg budget of a federation, or None when DP is off.

    Parameters
    ----------
    config
        The privacy settings: a fixed noise multiplier, or a target ε to calibrate one for.
    rounds
        Rounds the federation runs (the steps a target ε is calibrated over).
    saved_accountant
        The JSON of the accountant's ``state_dict`` saved before a restart (None or empty
        for a new federation): the rounds already spent are restored from it.
    """
    if not config.enabled:
        return None
    if config.noise_multiplier is not None:
        z = config.noise_multiplier
    else:
        assert config.target_epsilon is not None
        z = calibrate_noise_multiplier(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            sample_rate=config.client_sampling_rate,
            steps=rounds,
            accountant=config.accountant.value,
        )
        logger.info(
            "privacy: z=%.4f calibrated for ε=%g over %d rounds",
            z,
            config.target_epsilon,
            rounds,
        )
    accountant = make_accountant(config.accountant.value)
    if saved_accountant:
        accountant.load_state_dict(json.loads(saved_accountant))
    budget = config.epsilon_budget if config.epsilon_budget is not None else config.target_epsilon
    return PrivacyBudget(
        accountant=accountant,
        noise_multiplier=z,
        sample_rate=config.client_sampling_rate,
        delta=config.delta,
        epsilon_budget=budget if budget is not None else math.inf,
    )


__all__ = [
    "ACCOUNTANTS",
    "BudgetExhaustedError",
    "PLDAccountant",
    "PrivacyAccountant",
    "PrivacyBudget",
    "RDPAccountant",
    "calibrate_noise_multiplier",
    "make_accountant",
    "make_budget",
]

"""Client-level privacy accounting for DP-FedAvg: accountants, calibration, the budget facade.

DP covers every shared level (``privacy.levels``: global, cluster, head), each with its own
clip bound S_l and noise multiplier z_l (:func:`level_mechanisms`). One accountant per level
reports what that level alone reveals; a client's update of all levels per round is one
Gaussian mechanism with z_eq = (Σ_l z_l^-2)^-1/2, whose accountant gives the federation's ε
(reported and enforced by the budget halt). A target ε calibrates z_eq, then z_l = z_eq·√L.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedprompt.errors import InvalidArgumentError, NotReadyError
from fedprompt_coordinator.config import DPLevel, PrivacyConfig

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


@dataclass(frozen=True)
class LevelMechanism:
    """The Gaussian mechanism of one DP level per round: clip S_l, noise multiplier z_l.

    The noise on the sum of a level's clipped updates has standard deviation z_l·S_l per
    coordinate (central DP-FedAvg; a distributed-noise path splits that variance among the
    members that add it).
    """

    clip_norm: float
    noise_multiplier: float

    @property
    def noise_std(self) -> float:
        """z_l·S_l."""
        return self.noise_multiplier * self.clip_norm


def composed_noise_multiplier(noise_multipliers: Iterable[float]) -> float:
    """z_eq = (Σ_l z_l^-2)^-1/2: one Gaussian mechanism equivalent to all levels together.

    A client's update of every level is one vector of blocks, each clipped to S_l and noised
    with std z_l·S_l; rescaling block l by 1/(z_l·S_l) gives a Gaussian mechanism with unit
    noise and sensitivity sqrt(Σ_l z_l^-2), i.e. noise multiplier z_eq (same sampling rate).
    """
    zs = list(noise_multipliers)
    if not zs or any(not z > 0 for z in zs):
        raise ValueError("composition needs at least one positive noise multiplier")
    return float(sum(z**-2 for z in zs) ** -0.5)


def level_noise_multipliers(
    config: PrivacyConfig, *, levels: Sequence[DPLevel], rounds: int
) -> dict[DPLevel, float]:
    """z_l of every DP level: the configured ``noise_multiplier`` for each, or the target ε
    calibrated for z_eq (over ``rounds`` rounds at q) and then z_l = z_eq·√L."""
    if not levels:
        return {}
    if config.noise_multiplier is not None:
        return {level: float(config.noise_multiplier) for level in levels}
    assert config.target_epsilon is not None
    z_eq = calibrate_noise_multiplier(
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        sample_rate=config.client_sampling_rate,
        steps=rounds,
        accountant=config.accountant.value,
    )
    z = z_eq * math.sqrt(len(levels))
    logger.info(
        "privacy: z_eq=%.4f calibrated for ε=%g over %d rounds; z_l=%.4f on %d level(s)",
        z_eq,
        config.target_epsilon,
        rounds,
        z,
        len(levels),
    )
    return {level: z for level in levels}


def level_mechanisms(
    config: PrivacyConfig, *, levels: Sequence[DPLevel], rounds: int
) -> dict[str, LevelMechanism]:
    """(S_l, z_l) of every DP level, by level name (empty when DP is off).

    The one place the per-level mechanism is decided: the central aggregator and a
    secure-aggregation path (distributed noise) both use it. A running federation has it as
    :attr:`PrivacyBudget.mechanisms` (no second calibration).
    """
    if not config.enabled:
        return {}
    zs = level_noise_multipliers(config, levels=levels, rounds=rounds)
    return {
        level.value: LevelMechanism(clip_norm=config.clip_norm_of(level), noise_multiplier=z)
        for level, z in zs.items()
    }


def expected_participants(sample_rate: float, members: int) -> float:
    """The fixed denominator of an aggregate: max(1, q·members) (the global level: members =
    joined clients; cluster k: its joined members, m_k)."""
    return max(1.0, sample_rate * members)


#: Key of the composed accountant in the saved state (the federation's ε).
COMPOSED = "composed"


class PrivacyBudget:
    """The coordinator's facade: per-level accountants, their composition, and the halt.

    Every round charges each DP level's accountant with (z_l, q) and the composed one with
    (z_eq, q): ε of a level is what that level alone reveals; the composed ε is the
    per-client guarantee of the whole model, which is reported as the federation's ε and
    enforced by the halt.

    Parameters
    ----------
    accountant
        Where the composed mechanism is accounted (the federation's ε).
    noise_multiplier
        z_eq of the composition (with one level, that level's z).
    sample_rate
        Expected participants / clients per round.
    delta
        δ at which ε is reported.
    epsilon_budget
        The federation refuses to open a round whose completion would exceed this ε
        (``math.inf``: no limit).
    mechanisms
        (S_l, z_l) by level name; None: one ``global`` level with ``noise_multiplier`` (and
        S unknown: 0).
    level_accountants
        An accountant per level name (missing ones start empty, of the composed one's kind).
    """

    def __init__(
        self,
        *,
        accountant: PrivacyAccountant,
        noise_multiplier: float | None = None,
        sample_rate: float,
        delta: float,
        epsilon_budget: float = math.inf,
        mechanisms: Mapping[str, LevelMechanism] | None = None,
        level_accountants: Mapping[str, PrivacyAccountant] | None = None,
    ) -> None:
        if mechanisms is None:
            if noise_multiplier is None:
                raise ValueError("PrivacyBudget needs noise_multiplier or mechanisms")
            mechanisms = {
                DPLevel.GLOBAL.value: LevelMechanism(
                    clip_norm=0.0, noise_multiplier=noise_multiplier
                )
            }
        if not mechanisms:
            raise ValueError("PrivacyBudget needs at least one DP level")
        self.mechanisms: dict[str, LevelMechanism] = dict(mechanisms)
        z_eq = composed_noise_multiplier(m.noise_multiplier for m in self.mechanisms.values())
        if noise_multiplier is not None and not math.isclose(noise_multiplier, z_eq, rel_tol=1e-9):
            raise ValueError(
                f"noise_multiplier {noise_multiplier} is not the levels' composition {z_eq}"
            )
        self.accountant = accountant
        self.noise_multiplier = z_eq
        self.sample_rate = sample_rate
        self.delta = delta
        self.epsilon_budget = epsilon_budget
        given = dict(level_accountants or {})
        self.level_accountants: dict[str, PrivacyAccountant] = {
            level: given.get(level) or make_accountant(accountant.mechanism)
            for level in self.mechanisms
        }

    @property
    def epsilon(self) -> float:
        """ε spent so far, all levels composed (the federation's per-client ε)."""
        return self.accountant.get_epsilon(self.delta)

    @property
    def epsilon_by_level(self) -> dict[str, float]:
        """ε spent so far by each DP level alone."""
        return {level: acc.get_epsilon(self.delta) for level, acc in self.level_accountants.items()}

    def epsilon_after_next_round(self) -> float:
        """Composed ε once one more round is accounted."""
        return self.accountant.epsilon_after(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            num_steps=1,
            delta=self.delta,
        )

    def check_next_round(self, round_id: int) -> None:
        """Raise :class:`BudgetExhaustedError` if round ``round_id`` would exceed the budget
        (the composed ε, every level together)."""
        after = self.epsilon_after_next_round()
        if after > self.epsilon_budget:
            raise BudgetExhaustedError(
                f"round {round_id} would raise ε from {self.epsilon:.3f} to {after:.3f}, over the "
                f"budget ε={self.epsilon_budget:g} at δ={self.delta:g} (levels "
                f"{', '.join(self.mechanisms)} composed); the federation stops"
            )

    def record_round(self) -> float:
        """Account one completed round on every level and the composition; returns the
        composed ε."""
        for level, acc in self.level_accountants.items():
            acc.step(
                noise_multiplier=self.mechanisms[level].noise_multiplier,
                sample_rate=self.sample_rate,
            )
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        eps = self.epsilon
        logger.info("privacy: ε=%.4f at δ=%g after %d rounds", eps, self.delta, self.rounds)
        return eps

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return sum(n for _, _, n in self.accountant.history)

    def state_dict(self) -> dict[str, Any]:
        """Every accountant's state, for resuming after a restart."""
        return {
            "version": 2,
            COMPOSED: self.accountant.state_dict(),
            "levels": {level: acc.state_dict() for level, acc in self.level_accountants.items()},
        }

    def state_json(self) -> str:
        """:meth:`state_dict` as the JSON the state store keeps."""
        return json.dumps(self.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state, or the single accountant's state saved before
        per-level accounting (then DP covered the global level only: that history is the
        composed one and the global level's; other levels start empty)."""
        if "version" not in state:  # one accountant's state_dict
            self.accountant.load_state_dict(dict(state))
            if DPLevel.GLOBAL.value in self.level_accountants:
                self.level_accountants[DPLevel.GLOBAL.value].load_state_dict(dict(state))
            return
        if state["version"] != 2:
            raise ValueError(f"unknown privacy accountant state version {state['version']!r}")
        self.accountant.load_state_dict(dict(state[COMPOSED]))
        for level, saved in dict(state.get("levels", {})).items():
            if level in self.level_accountants:
                self.level_accountants[level].load_state_dict(dict(saved))
            else:
                logger.warning(
                    "privacy: level %s was accounted before the restart but is no longer a DP "
                    "level; its ε is kept in the composed ε only",
                    level,
                )


def make_budget(
    config: PrivacyConfig,
    *,
    rounds: int,
    saved_accountant: str | None,
    levels: Sequence[DPLevel] = (DPLevel.GLOBAL,),
) -> PrivacyBudget | None:
    """The DP-FedAvg budget of a federation, or None when DP is off.

    Parameters
    ----------
    config
        The privacy settings: a fixed noise multiplier, or a target ε to calibrate one for.
    rounds
        Rounds the federation runs (the steps a target ε is calibrated over).
    saved_accountant
        The JSON saved by :meth:`PrivacyBudget.state_json` before a restart, or by the single
        accountant of earlier versions (None or empty for a new federation): the rounds
        already spent are restored from it.
    levels
        The DP levels (:meth:`PrivacyConfig.dp_levels`).
    """
    if not config.enabled:
        return None
    mechanisms = level_mechanisms(config, levels=levels, rounds=rounds)
    budget_eps = (
        config.epsilon_budget if config.epsilon_budget is not None else config.target_epsilon
    )
    budget = PrivacyBudget(
        accountant=make_accountant(config.accountant.value),
        sample_rate=config.client_sampling_rate,
        delta=config.delta,
        epsilon_budget=budget_eps if budget_eps is not None else math.inf,
        mechanisms=mechanisms,
    )
    if saved_accountant:
        budget.load_state_dict(json.loads(saved_accountant))
    return budget


__all__ = [
    "ACCOUNTANTS",
    "COMPOSED",
    "BudgetExhaustedError",
    "LevelMechanism",
    "PLDAccountant",
    "PrivacyAccountant",
    "PrivacyBudget",
    "RDPAccountant",
    "calibrate_noise_multiplier",
    "composed_noise_multiplier",
    "expected_participants",
    "level_mechanisms",
    "level_noise_multipliers",
    "make_accountant",
    "make_budget",
]

"""Per-level budgets: the halt on the composed ε, durable state, old state, config, reporting."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fedprompt_coordinator.cluster_refinement import Evidence
from fedprompt_coordinator.config import CoordinatorConfig, DPLevel, PrivacyConfig
from fedprompt_coordinator.domain import FederationStatus, Phase
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.metrics import CoordinatorMetrics, FederationGauges, clip_figures
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.privacy import (
    BudgetExhaustedError,
    LevelMechanism,
    PrivacyBudget,
    RDPAccountant,
    make_budget,
)
from fedprompt_coordinator.round_reports import privacy_summary
from fedprompt_coordinator.serde import status_to_proto
from fedprompt_coordinator.state_store import SqliteStateStore

DELTA = 1e-5
ALL = (DPLevel.GLOBAL, DPLevel.CLUSTER, DPLevel.HEAD)
DP: dict[str, Any] = {"enabled": True, "noise_multiplier": 1.0}


def three_levels(**overrides: Any) -> PrivacyBudget:
    config = PrivacyConfig(**{**DP, **overrides})
    budget = make_budget(config, rounds=5, saved_accountant=None, levels=ALL)
    assert budget is not None
    return budget


# ---------------------------------------------------------------------------------- the halt


def test_the_halt_checks_the_composed_epsilon_not_any_single_level() -> None:
    z_eq = 3**-0.5
    one = RDPAccountant.epsilon_of([(z_eq, 1.0, 1)], DELTA)
    two = RDPAccountant.epsilon_of([(z_eq, 1.0, 2)], DELTA)
    # each level alone would allow many more rounds than the composition
    assert RDPAccountant.epsilon_of([(1.0, 1.0, 2)], DELTA) < one
    budget = three_levels(epsilon_budget=(one + two) / 2)
    budget.check_next_round(1)
    budget.record_round()
    assert budget.epsilon == pytest.approx(one)
    with pytest.raises(BudgetExhaustedError, match="round 2 would raise") as info:
        budget.check_next_round(2)
    assert "global, cluster, head composed" in info.value.message
    # every per-level ε is still below the budget: only the composition stops it
    assert all(eps < budget.epsilon_budget for eps in budget.epsilon_by_level.values())


def test_a_target_epsilon_is_the_default_budget_and_halts_after_the_planned_rounds() -> None:
    config = PrivacyConfig(enabled=True, target_epsilon=2.0)
    budget = make_budget(config, rounds=3, saved_accountant=None, levels=ALL)
    assert budget is not None and budget.epsilon_budget == 2.0
    for round_id in (1, 2, 3):
        budget.check_next_round(round_id)
        budget.record_round()
    with pytest.raises(BudgetExhaustedError):
        budget.check_next_round(4)


# ---------------------------------------------------------------------------- durable state


def test_a_restart_resumes_every_levels_accountant_and_the_composition() -> None:
    budget = three_levels(clip_norms={DPLevel.HEAD: 0.5})
    for _ in range(3):
        budget.record_round()
    saved = budget.state_json()
    state = json.loads(saved)
    assert state["version"] == 2 and set(state["levels"]) == {"global", "cluster", "head"}
    restored = make_budget(
        PrivacyConfig(**DP, clip_norms={DPLevel.HEAD: 0.5}),
        rounds=5,
        saved_accountant=saved,
        levels=ALL,
    )
    assert restored is not None
    assert restored.rounds == 3
    assert restored.epsilon == pytest.approx(budget.epsilon)
    assert restored.epsilon_by_level == pytest.approx(budget.epsilon_by_level)
    for level, acc in restored.level_accountants.items():
        assert acc.history == budget.level_accountants[level].history == [(1.0, 1.0, 3)]
    # and it goes on counting from there
    restored.record_round()
    assert restored.rounds == 4
    assert restored.level_accountants["head"].history == [(1.0, 1.0, 4)]


def test_the_state_of_the_single_accountant_loads_as_the_composed_and_global_one() -> None:
    old = RDPAccountant()
    old.step(noise_multiplier=1.0, sample_rate=1.0, num_steps=2)
    saved = json.dumps(old.state_dict())  # what the state DB held before per-level DP
    # the same configuration as before (global only): everything as it was
    glob = make_budget(PrivacyConfig(**DP), rounds=5, saved_accountant=saved)
    assert glob is not None
    assert glob.epsilon == pytest.approx(old.get_epsilon(DELTA))
    assert glob.epsilon_by_level == pytest.approx({"global": old.get_epsilon(DELTA)})
    # with every level now: the spent rounds stay in the composed ε (the halt) and global's
    every = make_budget(PrivacyConfig(**DP), rounds=5, saved_accountant=saved, levels=ALL)
    assert every is not None
    assert every.rounds == 2
    assert every.epsilon == pytest.approx(old.get_epsilon(DELTA))
    assert every.epsilon_by_level["global"] == pytest.approx(old.get_epsilon(DELTA))
    assert every.epsilon_by_level["cluster"] == every.epsilon_by_level["head"] == 0.0
    every.record_round()
    assert every.accountant.history == [(1.0, 1.0, 2), (3**-0.5, 1.0, 1)]


def test_unknown_or_foreign_state_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        make_budget(
            PrivacyConfig(**DP),
            rounds=5,
            saved_accountant=json.dumps({"version": 9}),
            levels=ALL,
        )
    pld_state = json.dumps({"mechanism": "pld", "history": [[1.0, 1.0, 1]]})
    with pytest.raises(ValueError, match="pld"):
        make_budget(PrivacyConfig(**DP), rounds=5, saved_accountant=pld_state)


class NoClusterer:
    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        return dict.fromkeys(members, 0)


def _federation(tmp_path: Path, state: SqliteStateStore) -> Federation:
    config = CoordinatorConfig(state_dir=tmp_path, strategy="fpl", privacy=DP)
    return Federation(
        config=config,
        state=state,
        models=ModelStore(tmp_path / "models"),
        clustering=NoClusterer(),  # type: ignore[arg-type]
    )


def test_an_existing_state_dir_with_the_old_accountant_resumes_its_epsilon(
    tmp_path: Path,
) -> None:
    old = RDPAccountant()
    old.step(noise_multiplier=1.0, sample_rate=1.0, num_steps=3)
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    try:
        state.set_setting("privacy_accountant", json.dumps(old.state_dict()))
        fed = _federation(tmp_path, state)
        status = fed.status()
        assert status.epsilon == pytest.approx(old.get_epsilon(DELTA))
        assert status.epsilon_by_level["global"] == pytest.approx(old.get_epsilon(DELTA))
        assert status.epsilon_by_level["cluster"] == 0.0
    finally:
        state.close()


# -------------------------------------------------------------------------------- reporting


def test_round_summaries_status_and_gauges_report_each_level() -> None:
    budget = three_levels(clip_norms={DPLevel.CLUSTER: 2.0})
    budget.record_round()
    summary = privacy_summary(budget)
    assert summary["epsilon"] == summary["dp_epsilon"] == pytest.approx(budget.epsilon)
    assert summary["dp_noise_multiplier"] == pytest.approx(3**-0.5)
    for level in ("global", "cluster", "head"):
        assert summary[f"dp_epsilon_{level}"] == pytest.approx(budget.epsilon_by_level[level])
        assert summary[f"dp_noise_multiplier_{level}"] == 1.0
    assert summary["dp_clip_norm_cluster"] == 2.0 and summary["dp_clip_norm_head"] == 1.0

    status = FederationStatus(
        current_round=1,
        total_rounds=5,
        completed_rounds=1,
        phase=Phase.EVALUATION,
        clients=(),
        rounds=(),
        setup_bytes_up={},
        setup_bytes_down={},
        model_fingerprint="",
        epsilon=budget.epsilon,
        delta=DELTA,
        epsilon_by_level=budget.epsilon_by_level,
    )
    msg = status_to_proto(status)
    assert dict(msg.epsilon_by_level) == pytest.approx(budget.epsilon_by_level)
    assert msg.epsilon == pytest.approx(budget.epsilon)

    metrics = CoordinatorMetrics()
    metrics.watch(
        lambda: FederationGauges(
            current_round=1,
            completed_rounds=1,
            total_rounds=5,
            phase=Phase.EVALUATION,
            clients_joined=3,
            clients_connected=3,
            epsilon=budget.epsilon,
            epsilon_budget=math.inf,
            delta=DELTA,
            epsilon_by_level=budget.epsilon_by_level,
            noise_multiplier_by_level={k: m.noise_multiplier for k, m in budget.mechanisms.items()},
        )
    )
    v = metrics.registry.get_sample_value
    for level, eps in budget.epsilon_by_level.items():
        assert v("fedprompt_privacy_level_epsilon", {"level": level}) == pytest.approx(eps)
        assert v("fedprompt_privacy_level_noise_multiplier", {"level": level}) == 1.0
    assert v("fedprompt_privacy_epsilon") == pytest.approx(budget.epsilon)


def test_clip_gauges_name_every_dp_level() -> None:
    figures = clip_figures(
        {
            "dp_clip_norm": 1.0,
            "dp_clipped_fraction": 0.5,
            "dp_clip_norm_global": 1.0,
            "dp_global_clipped_fraction": 0.5,
            "dp_clip_norm_head": 0.2,
            "dp_head_clipped_fraction": 0.25,
        }
    )
    assert figures["dp_global"] == (1.0, 0.5)
    assert figures["dp_head"] == (0.2, 0.25)
    assert "dp_cluster" not in figures


def test_a_budget_without_levels_or_with_inconsistent_z_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PrivacyBudget(accountant=RDPAccountant(), sample_rate=1.0, delta=DELTA, mechanisms={})
    with pytest.raises(ValueError, match="composition"):
        PrivacyBudget(
            accountant=RDPAccountant(),
            noise_multiplier=1.0,
            sample_rate=1.0,
            delta=DELTA,
            mechanisms={"global": LevelMechanism(1.0, 1.0), "head": LevelMechanism(1.0, 1.0)},
        )


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("strategy", "levels"),
    [
        ("fpl", ("global", "cluster", "head")),
        ("clustered", ("global", "cluster", "head")),
        ("fedavg", ("global",)),
        ("lora-fedavg", ("global",)),
        ("full-fedavg", ("global",)),
    ],
)
def test_by_default_every_level_that_travels_is_a_dp_level(
    strategy: str, levels: tuple[str, ...]
) -> None:
    config = CoordinatorConfig(strategy=strategy, privacy=DP)
    from fedprompt.strategies import strategy_spec

    clustered = strategy_spec(config.strategy).clustered
    assert tuple(lv.value for lv in config.privacy.dp_levels(clustered=clustered)) == levels
    assert PrivacyConfig().dp_levels(clustered=True) == ()  # off: none


def test_clip_norms_override_the_common_bound_per_level() -> None:
    config = PrivacyConfig(**DP, clip_norm=0.7, clip_norms={"head": 0.1})
    assert config.clip_norm_of(DPLevel.HEAD) == 0.1
    assert config.clip_norm_of(DPLevel.GLOBAL) == 0.7
    assert config.min_cluster_members == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "fedavg", "privacy": {**DP, "levels": ["cluster"]}}, "does not have"),
        ({"strategy": "fedavg", "privacy": {**DP, "levels": ["global", "head"]}}, "head"),
        ({"strategy": "fedavg", "privacy": {**DP, "clip_norms": {"head": 1.0}}}, "does not have"),
        ({"privacy": {**DP, "levels": []}}, "empty"),
        ({"privacy": {**DP, "levels": ["global", "global"]}}, "twice"),
        ({"privacy": {**DP, "levels": ["everything"]}}, "levels"),
        ({"privacy": {**DP, "clip_norms": {"head": 0.0}}}, "positive"),
        ({"privacy": {**DP, "clip_norms": {"head": math.inf}}}, "finite"),
        ({"privacy": {**DP, "levels": ["global"], "clip_norms": {"head": 1.0}}}, "not in"),
        ({"privacy": {**DP, "min_cluster_members": 0.5}}, "min_cluster_members"),
        ({"privacy": {**DP, "levels": ["head"]}, "aggregation": {"cluster_rule": "multi-krum"}},
         "head level"),
        ({"privacy": {**DP, "levels": ["cluster"]}, "aggregation": {"global_rule": "median"},
          "strategy": "clustered"}, None),
        ({"privacy": {**DP, "levels": ["global"]}, "aggregation": {"global_rule": "median"}},
         "global level"),
        ({"strategy": "fedavg", "privacy": DP, "aggregation": {"global_rule": "trimmed-mean"}},
         "global level"),
    ],
)  # fmt: skip
def test_nonsense_privacy_settings_are_refused_when_the_config_loads(
    settings: dict[str, Any], message: str | None
) -> None:
    if message is None:  # a robust rule on a level without DP stays allowed
        CoordinatorConfig(**settings)
        return
    with pytest.raises(ValidationError, match=message):
        CoordinatorConfig(**settings)


def test_the_old_keys_and_one_level_configs_still_load() -> None:
    # global-only DP of earlier versions, written out: the same mechanism as before
    config = CoordinatorConfig(
        strategy="fpl",
        privacy={**DP, "clip_norm": 0.5, "levels": ["global"]},
        aggregation={"cluster_rule": "multi-krum"},
    )
    assert config.privacy.dp_levels(clustered=True) == (DPLevel.GLOBAL,)
    budget = make_budget(config.privacy, rounds=3, saved_accountant=None)
    assert budget is not None
    assert budget.noise_multiplier == 1.0
    assert budget.mechanisms == {"global": LevelMechanism(0.5, 1.0)}


@pytest.mark.asyncio
async def test_a_silo_sees_the_federations_epsilon_but_no_per_cluster_dp_keys(
    state: SqliteStateStore, join_clients: Any
) -> None:
    import numpy as np

    from fedprompt_coordinator.domain import ClientUpdate, StatusQuery, StatusView
    from fedprompt_coordinator.round_progress import RoundInProgress, RoundProgress
    from fedprompt_coordinator.round_reports import RoundReports
    from fedprompt_coordinator.traffic import TrafficMeter

    sessions = await join_clients({"a": 1, "b": 1, "c": 1})
    budget = three_levels()
    budget.record_round()
    reports = RoundReports(
        total_rounds=3,
        strategy="fpl",
        state=state,
        metrics=CoordinatorMetrics(),
        sessions=sessions,
        progress=RoundProgress(phase=Phase.EVALUATION, completed=0),
        traffic=TrafficMeter(lambda: 1),
        budget=budget,
        clock=lambda: 100.0,
    )
    current = RoundInProgress(round=1, started_unix=50.0, participants={"a": 0, "b": 0, "c": 1})
    for cid in "abc":
        current.updates[cid] = ClientUpdate(cid, 0, 1, {"x": np.zeros(1, np.float32)})
    info = {
        "dp_cluster_1_skipped": 1.0,
        "dp_cluster_0_expected_participants": 2.0,
        "dp_cluster_0_head_clipped_fraction": 0.5,
        "dp_cluster_clipped_fraction": 0.5,  # round-wide: a federation aggregate
    }
    reports.store(
        reports.round_record(
            current, status="completed", clustering_degraded=False, aggregation_info=info
        )
    )
    full = reports.status(StatusQuery(), assignment={}, stop_reason="")
    assert full.epsilon_by_level == pytest.approx(budget.epsilon_by_level)
    assert {**info}.items() <= full.rounds[0].summary.items()
    silo = reports.status(
        StatusQuery(view=StatusView.SILO, caller="a"), assignment={}, stop_reason=""
    )
    assert silo.epsilon == pytest.approx(budget.epsilon)
    assert silo.epsilon_by_level == pytest.approx(budget.epsilon_by_level)
    summary = silo.rounds[0].summary
    assert summary["dp_epsilon_head"] == pytest.approx(budget.epsilon_by_level["head"])
    assert summary["dp_cluster_clipped_fraction"] == 0.5
    assert not any(k.startswith("dp_cluster_") and k[11].isdigit() for k in summary)
    gauges = reports.gauges()
    assert gauges.epsilon_by_level == pytest.approx(budget.epsilon_by_level)
    assert gauges.noise_multiplier_by_level == {"global": 1.0, "cluster": 1.0, "head": 1.0}

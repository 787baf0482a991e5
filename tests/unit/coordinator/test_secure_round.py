"""Secure aggregation of a round (SecureRound, plain objects): the masked path gives the plain
aggregators' model; dropouts, skipped groups, the post-unmask bound check, stage refusals.

Members are the client agent's own :class:`SecureMember`, driven through the protobuf task
messages (``serde``), so the coordinator's and the silo's halves are checked together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pytest

from fedprompt.errors import NotParticipantError, ShapeMismatchError, WrongRoundError
from fedprompt.tensor_names import centroid
from fedprompt_client_agent.secure_aggregation import SecureMember
from fedprompt_coordinator import serde
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import (
    ClientUpdate,
    FederationModel,
    SecAggStep,
    TensorSpec,
)
from fedprompt_coordinator.privacy import LevelMechanism, level_mechanisms
from fedprompt_coordinator.secure_round import SecurePlan, SecureRound

TOKENS, WIDTH = 4, 6
SPEC = (
    TensorSpec("head.bias", "F32", (3,)),
    TensorSpec("head.weight", "F32", (3, WIDTH)),
    TensorSpec("prompt.cluster", "F32", (TOKENS, WIDTH)),
    TensorSpec("prompt.global", "F32", (TOKENS, WIDTH)),
)
GLOBAL = ("prompt.global",)
CLUSTERS = {"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1, "b3": 1, "b4": 1}
EXAMPLES = {"a1": 10, "a2": 30, "a3": 7, "b1": 12, "b2": 5, "b3": 40, "b4": 9}


def _model(rng: np.random.Generator, clusters: Collection[int] = (0, 1)) -> FederationModel:
    def tensors(names: Collection[str]) -> dict[str, np.ndarray]:
        return {
            s.name: rng.normal(size=s.shape).astype(np.float32) for s in SPEC if s.name in names
        }

    cluster_names = [s.name for s in SPEC if s.name not in GLOBAL]
    return FederationModel(
        global_tensors=tensors(GLOBAL),
        cluster_tensors={k: tensors(cluster_names) for k in clusters},
        cluster_template=tensors(cluster_names),
    )


def _deltas(rng: np.random.Generator, clients: Collection[str]) -> dict[str, dict[str, np.ndarray]]:
    """Small deltas: every part well inside the clip bound of 1 (no clipping)."""
    return {
        c: {s.name: (0.02 * rng.normal(size=s.shape)).astype(np.float32) for s in SPEC}
        for c in clients
    }


def _plan(**changes: object) -> SecurePlan:
    config = CoordinatorConfig(strategy="clustered", secure_aggregation={"enabled": True})
    return dataclasses.replace(SecurePlan.from_config(config, mechanisms=None), **changes)


def _mechanisms(config: CoordinatorConfig) -> dict[str, LevelMechanism]:
    levels = config.privacy.dp_levels(clustered=config.strategy.value != "fedavg")
    return level_mechanisms(config.privacy, levels=levels, rounds=config.rounds)


def _run(
    model: FederationModel,
    deltas: Mapping[str, Mapping[str, np.ndarray]],
    *,
    plan: SecurePlan,
    participants: Mapping[str, int] = CLUSTERS,
    drop_after_shares: Collection[str] = (),
    drop_at_keys: Collection[str] = (),
    drop_at_shares: Collection[str] = (),
    tamper: Mapping[str, object] | None = None,
    denominators: Callable[[int | None], float] | None = None,
) -> SecureRound:
    """One secure round, every stage through the proto task messages and SecureMember."""
    secure = SecureRound(
        round_id=3,
        participants=participants,
        spec=SPEC,
        global_names=GLOBAL,
        examples=EXAMPLES,
        plan=plan,
    )
    members: dict[str, SecureMember] = {}
    for cid, task in secure.keys_tasks().items():
        members[cid] = SecureMember(cid, 3, serde.secagg_task_to_proto(task))
        if cid not in drop_at_keys:
            secure.add_step(serde.secagg_step_from_proto(members[cid].keys()))
    alive = [c for c in participants if c not in drop_at_keys]
    assert secure.keys_complete(alive) and not (drop_at_keys and secure.keys_complete())
    for cid, task in secure.open_shares().items():
        step = members[cid].shares(serde.secagg_task_to_proto(task))
        if cid not in drop_at_shares:
            secure.add_step(serde.secagg_step_from_proto(step))
    assert secure.shares_complete([c for c in alive if c not in drop_at_shares])
    centroids = {
        k: centroid(model.for_cluster(k)["prompt.cluster"]).astype(np.float32)
        for k in sorted(set(participants.values()))
    }
    for cid, task in secure.open_training().items():
        if task.encoding is None or cid in drop_after_shares:
            continue
        encoding = members[cid].receive(serde.secagg_task_to_proto(task))
        if tamper and cid in tamper:
            encoding = dataclasses.replace(encoding, **tamper[cid])  # type: ignore[arg-type]
        masked = members[cid].mask(
            deltas[cid],
            encoding,
            num_examples=EXAMPLES[cid],
            cluster_id=participants[cid],
            centroids=centroids,
        )
        secure.add_masked(cid, masked)
    for cid, task in secure.open_unmask().items():
        step = members[cid].unmask(serde.secagg_task_to_proto(task))
        secure.add_step(serde.secagg_step_from_proto(step))
    assert secure.unmask_complete()
    secure.aggregate(model, denominators=denominators)
    return secure


def _updates(
    deltas: Mapping[str, Mapping[str, np.ndarray]], clients: Collection[str]
) -> list[ClientUpdate]:
    return [
        ClientUpdate(c, CLUSTERS[c], EXAMPLES[c], {k: np.asarray(v) for k, v in deltas[c].items()})
        for c in sorted(clients)
    ]


def _assert_models_close(got: FederationModel, want: FederationModel) -> None:
    assert set(got.global_tensors) == set(want.global_tensors)
    for name, value in want.global_tensors.items():
        np.testing.assert_allclose(got.global_tensors[name], value, rtol=1e-5, atol=1e-6)
    assert set(got.cluster_tensors) == set(want.cluster_tensors)
    for k, tensors in want.cluster_tensors.items():
        for name, value in tensors.items():
            np.testing.assert_allclose(got.cluster_tensors[k][name], value, rtol=1e-5, atol=1e-6)


def test_secure_round_equals_weighted_fedavg() -> None:
    rng = np.random.default_rng(0)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    secure = _run(model, deltas, plan=_plan())
    assert secure.result is not None
    plain = WeightedFedAvg().aggregate(model, _updates(deltas, CLUSTERS))
    _assert_models_close(secure.result, plain)
    info = secure.info()
    assert info["secagg_groups"] == 2 and info["secagg_released"] == 2
    assert info["secagg_dropped"] == 0 and info["secagg_skipped"] == 0
    assert info["secagg_bytes"] > 0


def test_secure_round_equals_contrastive_fedavg() -> None:
    rng = np.random.default_rng(1)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    secure = _run(model, deltas, plan=_plan(weighting="contrastive", temperature=0.5))
    assert secure.result is not None
    plain = ContrastiveFedAvg(temperature=0.5).aggregate(model, _updates(deltas, CLUSTERS))
    _assert_models_close(secure.result, plain)
    # the contrastive weights did matter: n-weighted FedAvg gives another cluster prompt
    fedavg = WeightedFedAvg().aggregate(model, _updates(deltas, CLUSTERS))
    assert not np.allclose(
        fedavg.cluster_tensors[1]["prompt.cluster"],
        secure.result.cluster_tensors[1]["prompt.cluster"],
        rtol=0,
        atol=1e-7,
    )


def test_member_dropped_after_its_shares_is_recovered() -> None:
    rng = np.random.default_rng(2)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    secure = _run(model, deltas, plan=_plan(), drop_after_shares={"b2"})
    assert secure.result is not None
    survivors = [c for c in CLUSTERS if c != "b2"]
    plain = WeightedFedAvg().aggregate(model, _updates(deltas, survivors))
    _assert_models_close(secure.result, plain)
    assert secure.info()["secagg_dropped"] == 1
    assert secure.info()["secagg_recovered"] == 1
    assert secure.released == [0, 1]
    assert secure.evaluators() == survivors


@pytest.mark.parametrize("stage", ["keys", "shares"])
def test_member_dropped_before_training_is_left_out(stage: str) -> None:
    rng = np.random.default_rng(8)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    drop = {"drop_at_keys" if stage == "keys" else "drop_at_shares": {"b4"}}
    secure = _run(model, deltas, plan=_plan(), **drop)  # type: ignore[arg-type]
    assert secure.result is not None
    plain = WeightedFedAvg().aggregate(model, _updates(deltas, [c for c in CLUSTERS if c != "b4"]))
    _assert_models_close(secure.result, plain)
    info = secure.info()
    assert info["secagg_dropped"] == 1 and info["secagg_recovered"] == 0
    assert "b4" not in secure.evaluators()


def test_group_below_its_survivor_threshold_is_skipped_never_leaked() -> None:
    rng = np.random.default_rng(3)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    # cluster 0 has 3 members; min_survivors is 3 with max_dropout 0.3: one drop skips it
    secure = _run(model, deltas, plan=_plan(), drop_after_shares={"a1"})
    assert secure.result is not None
    assert secure.released == [1]
    for name, value in model.cluster_tensors[0].items():
        np.testing.assert_array_equal(secure.result.cluster_tensors[0][name], value)
    # the global level comes from the released group alone
    plain = WeightedFedAvg().aggregate(model, _updates(deltas, ["b1", "b2", "b3", "b4"]))
    np.testing.assert_allclose(
        secure.result.global_tensors["prompt.global"],
        plain.global_tensors["prompt.global"],
        rtol=1e-5,
        atol=1e-6,
    )
    info = secure.info()
    assert info["secagg_cluster_0_skipped"] == 1 and info["secagg_skipped"] == 1


def test_small_group_trains_but_is_not_aggregated() -> None:
    rng = np.random.default_rng(4)
    model = _model(rng, clusters=(0, 1, 2))
    participants = {**CLUSTERS, "c1": 2}
    deltas = _deltas(rng, participants)
    EXAMPLES["c1"] = 20
    try:
        secure = _run(model, deltas, plan=_plan(), participants=participants)
    finally:
        del EXAMPLES["c1"]
    assert secure.result is not None
    for name, value in model.cluster_tensors[2].items():
        np.testing.assert_array_equal(secure.result.cluster_tensors[2][name], value)
    assert "c1" in secure.evaluators()
    assert secure.info()["secagg_cluster_2_skipped"] == 1
    assert secure.released == [0, 1]


def test_out_of_range_masked_input_is_rejected_by_the_bound_check() -> None:
    rng = np.random.default_rng(5)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    # b3 ignores its clip bounds: a head delta of norm ~50 (its bound is 1), still encodable
    deltas["b3"] = {**deltas["b3"], "head.weight": np.full((3, WIDTH), 12.0, np.float32)}
    lax = {"clip_bounds": {k: 1e3 for k in ("head", "global_prompt", "cluster_prompt")}}
    secure = _run(model, deltas, plan=_plan(), tamper={"b3": lax})
    assert secure.result is not None
    assert secure.released == [0]
    for name, value in model.cluster_tensors[1].items():
        np.testing.assert_array_equal(secure.result.cluster_tensors[1][name], value)
    info = secure.info()
    assert info["secagg_cluster_1_rejected"] == 1
    assert info["secagg_cluster_1_skipped"] == 1


def test_steps_out_of_stage_round_or_group_are_refused() -> None:
    secure = SecureRound(
        round_id=3,
        participants=CLUSTERS,
        spec=SPEC,
        global_names=GLOBAL,
        examples=EXAMPLES,
        plan=_plan(),
    )
    tasks = secure.keys_tasks()
    member = SecureMember("a1", 3, serde.secagg_task_to_proto(tasks["a1"]))
    step = serde.secagg_step_from_proto(member.keys())
    with pytest.raises(WrongRoundError):
        secure.add_step(dataclasses.replace(step, round=4))
    with pytest.raises(NotParticipantError):
        secure.add_step(dataclasses.replace(step, group="cluster-1"))
    with pytest.raises(WrongRoundError):  # shares while keys are collected
        secure.add_step(SecAggStep("a1", 3, "cluster-0", ciphertexts={"a2": b"x"}))
    with pytest.raises(WrongRoundError):  # masked inputs before training
        secure.add_masked("a1", {})
    secure.add_step(step)
    with pytest.raises(Exception, match="already"):
        secure.add_step(step)


def test_masked_input_must_match_the_layout() -> None:
    rng = np.random.default_rng(6)
    model = _model(rng)
    secure = SecureRound(
        round_id=3,
        participants=CLUSTERS,
        spec=SPEC,
        global_names=GLOBAL,
        examples=EXAMPLES,
        plan=_plan(),
    )
    members = {
        cid: SecureMember(cid, 3, serde.secagg_task_to_proto(t))
        for cid, t in secure.keys_tasks().items()
    }
    for m in members.values():
        secure.add_step(serde.secagg_step_from_proto(m.keys()))
    for cid, task in secure.open_shares().items():
        secure.add_step(
            serde.secagg_step_from_proto(members[cid].shares(serde.secagg_task_to_proto(task)))
        )
    secure.open_training()
    good = {n: np.zeros(shape, np.uint64) for n, shape in secure.layout}
    with pytest.raises(ShapeMismatchError):  # float instead of uint64
        secure.add_masked("a1", {n: np.zeros(shape, np.float32) for n, shape in secure.layout})
    with pytest.raises(ShapeMismatchError):  # a missing tensor
        secure.add_masked("a1", {k: v for k, v in good.items() if k != "head.bias"})
    with pytest.raises(NotParticipantError):
        secure.add_masked("zz", good)
    secure.add_masked("a1", good)
    assert model is not None


def test_plan_under_dp_uses_unit_weights_and_level_bounds() -> None:
    config = CoordinatorConfig(
        strategy="fpl",
        privacy={"enabled": True, "noise_multiplier": 1.0, "clip_norm": 0.5},
        secure_aggregation={"enabled": True},
    )
    plan = SecurePlan.from_config(config, mechanisms=_mechanisms(config))
    assert plan.weighting == "unit"
    assert dict(plan.clip_bounds) == {"global": 0.5, "cluster": 0.5, "head": 0.5}
    secure = SecureRound(
        round_id=1,
        participants=CLUSTERS,
        spec=SPEC,
        global_names=GLOBAL,
        examples=EXAMPLES,
        plan=plan,
    )
    encoding = secure.encoding(1)
    # z·S/sqrt(min_survivors): 4 members, min_survivors 3
    assert encoding.noise_std["global"] == pytest.approx(0.5 / np.sqrt(3))
    assert encoding.clip_keys["head.weight"] == "head"
    assert encoding.clip_keys["prompt.cluster"] == "cluster"
    assert encoding.clip_keys["prompt.global"] == "global"
    assert set(encoding.noise_std) == {"global", "cluster", "head"}


def test_dp_release_uses_fixed_denominators_and_noise_of_the_plan() -> None:
    rng = np.random.default_rng(7)
    model = _model(rng)
    deltas = _deltas(rng, CLUSTERS)
    config = CoordinatorConfig(
        strategy="clustered",
        privacy={"enabled": True, "noise_multiplier": 1e-7, "clip_norm": 5.0},
        secure_aggregation={"enabled": True},
    )
    plan = SecurePlan.from_config(config, mechanisms=_mechanisms(config))
    denominators: dict[int | None, float] = {None: 10.0, 0: 4.0, 1: 5.0}
    secure = _run(model, deltas, plan=plan, denominators=denominators.__getitem__)
    result = secure.result
    assert result is not None
    for name, base in model.global_tensors.items():
        total = sum(np.asarray(d[name], np.float64) for d in deltas.values())
        np.testing.assert_allclose(result.global_tensors[name], base + total / 10.0, atol=1e-5)
    for k in (0, 1):
        members = [c for c, cluster in CLUSTERS.items() if cluster == k]
        for name, base in model.cluster_tensors[k].items():
            total = sum(np.asarray(deltas[c][name], np.float64) for c in members)
            np.testing.assert_allclose(
                result.cluster_tensors[k][name], base + total / denominators[k], atol=1e-5
            )
    info = secure.info()
    assert info["secagg_cluster_1_effective_z_global"] == pytest.approx(1e-7 * np.sqrt(4 / 3))
    # a cluster expecting fewer than min_cluster_members (2) keeps its tensors under DP
    few: dict[int | None, float] = {None: 10.0, 0: 1.5, 1: 5.0}
    secure = _run(model, deltas, plan=plan, denominators=few.__getitem__)
    assert secure.result is not None
    for name, value in model.cluster_tensors[0].items():
        np.testing.assert_array_equal(secure.result.cluster_tensors[0][name], value)
    assert secure.info()["dp_cluster_0_skipped"] == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregation": {"cluster_rule": "median"}}, "robust rule"),
        ({"aggregation": {"clipping": {"mode": "adaptive"}}}, "adaptive"),
        ({"strategy": "full-fedavg"}, "too large"),
        ({"strategy": "local"}, "aggregates nothing"),
        ({"secure_aggregation": {"enabled": True, "clip_bound": 1e12}}, "fixed-point"),
        (
            {"privacy": {"enabled": True, "noise_multiplier": 1.0, "levels": ["global"]}},
            "every level",
        ),
    ],
)
def test_config_refuses_what_secure_aggregation_cannot_do(
    changes: dict[str, object], message: str
) -> None:
    settings: dict[str, object] = {"strategy": "clustered", "secure_aggregation": {"enabled": True}}
    settings.update(changes)
    with pytest.raises(ValueError, match=message):
        CoordinatorConfig(**settings)  # type: ignore[arg-type]

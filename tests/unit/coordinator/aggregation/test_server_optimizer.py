"""Server optimizers (Reddi et al. 2021): hand-computed rounds, sgd as today's update, moments
per cluster, skipped clusters, non-finite deltas, resuming and the registry."""

from __future__ import annotations

import logging
from math import sqrt

import numpy as np
import pytest

from fedprompt.errors import NonFiniteError
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.levels import Released
from fedprompt_coordinator.aggregation.server_optimizer import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerOptimizer,
    ServerOptimizerError,
    ServerSGD,
    make_server_optimizer,
)
from fedprompt_coordinator.domain import (
    ClientUpdate,
    FederationModel,
    ServerMoments,
    TensorMoments,
)
from fedprompt_coordinator.validation import spec_of, validate_update
from tests.unit.coordinator.test_privacy_levels_mechanism import HB, HW, C, dp, no_noise
from tests.unit.coordinator.test_privacy_levels_mechanism import model as dp_model
from tests.unit.coordinator.test_privacy_levels_mechanism import update as dp_update

G = "prompt.global"
#: Hyperparameters that make the hand computations short: β1 = 0.5, β2 = 0.75, τ = 0.5
#: (so v_{-1} = τ² = 0.25), η = 0.1.
HAND = {"lr": 0.1, "beta1": 0.5, "beta2": 0.75, "tau": 0.5}
#: Three rounds of aggregated deltas of a two-coordinate global tensor (the second
#: coordinate mirrors the first, so its moments match and it moves the other way).
DELTAS = ([2.0, -2.0], [-1.0, 1.0], [4.0, -4.0])


def _global(x: list[float], dtype: type = np.float64) -> FederationModel:
    return FederationModel(global_tensors={G: np.array(x, dtype)}, cluster_tensors={})


def _run(
    opt: ServerOptimizer, x0: list[float], deltas: tuple[list[float], ...]
) -> tuple[list[np.ndarray], ServerMoments]:
    """Each round: the aggregate is the round-start model plus the delta, all released."""
    model, moments = _global(x0), ServerMoments()
    seen = []
    for delta in deltas:
        work = opt.working_model(model)
        aggregate = FederationModel(
            global_tensors={G: work.global_tensors[G] + np.array(delta)}, cluster_tensors={}
        )
        step = opt.apply(
            model, aggregate, released=Released(global_names=frozenset({G})), moments=moments
        )
        model, moments = step.model, step.moments
        seen.append(model.global_tensors[G].copy())
    return seen, moments


def _mirrored(values: list[float]) -> list[np.ndarray]:
    """x_a from 1 and x_b from -1 with opposite deltas: x_b = -x_a."""
    return [np.array([v, -v]) for v in values]


# ----------------------------------------------------------------------------- the formulas


def test_fedadam_over_three_rounds_follows_algorithm_2() -> None:
    # m: 0.5·0 + 0.5·2 = 1;  0.5·1 + 0.5·(-1) = 0;  0.5·0 + 0.5·4 = 2
    # v: 0.75·0.25 + 0.25·4 = 1.1875;  0.75·1.1875 + 0.25·1 = 1.140625;
    #    0.75·1.140625 + 0.25·16 = 4.85546875
    x1 = 1 + 0.1 * 1 / (sqrt(1.1875) + 0.5)
    x2 = x1 + 0.1 * 0 / (sqrt(1.140625) + 0.5)
    x3 = x2 + 0.1 * 2 / (sqrt(4.85546875) + 0.5)
    seen, moments = _run(FedAdam(**HAND), [1.0, -1.0], DELTAS)
    np.testing.assert_allclose(seen, _mirrored([x1, x2, x3]), rtol=1e-12)
    np.testing.assert_allclose(moments.global_moments[G].first, [2.0, -2.0], rtol=1e-12)
    np.testing.assert_allclose(moments.global_moments[G].second, [4.85546875] * 2, rtol=1e-12)
    assert moments.optimizer == "adam"


def test_fedyogi_over_three_rounds_follows_algorithm_2() -> None:
    # v: Δ² = 4 > 0.25: 0.25 + 0.25·4 = 1.25;  Δ² = 1 < 1.25: 1.25 - 0.25·1 = 1;
    #    Δ² = 16 > 1: 1 + 0.25·16 = 5  (m as for adam: 1, 0, 2)
    x1 = 1 + 0.1 * 1 / (sqrt(1.25) + 0.5)
    x3 = x1 + 0.1 * 2 / (sqrt(5.0) + 0.5)
    seen, moments = _run(FedYogi(**HAND), [1.0, -1.0], DELTAS)
    np.testing.assert_allclose(seen, _mirrored([x1, x1, x3]), rtol=1e-12)
    np.testing.assert_allclose(moments.global_moments[G].second, [5.0, 5.0], rtol=1e-12)


def test_fedadagrad_over_three_rounds_follows_algorithm_2() -> None:
    # v: 0.25 + 4 = 4.25;  + 1 = 5.25;  + 16 = 21.25  (m: 1, 0, 2)
    x1 = 1 + 0.1 * 1 / (sqrt(4.25) + 0.5)
    x3 = x1 + 0.1 * 2 / (sqrt(21.25) + 0.5)
    opt = FedAdagrad(lr=0.1, beta1=0.5, tau=0.5)
    seen, moments = _run(opt, [1.0, -1.0], DELTAS)
    np.testing.assert_allclose(seen, _mirrored([x1, x1, x3]), rtol=1e-12)
    np.testing.assert_allclose(moments.global_moments[G].second, [21.25, 21.25], rtol=1e-12)


def test_sgd_adds_eta_times_the_delta_and_keeps_no_moments() -> None:
    seen, moments = _run(ServerSGD(lr=0.5), [1.0, -1.0], DELTAS)
    # 1 + 0.5·2 = 2;  2 - 0.5 = 1.5;  1.5 + 0.5·4 = 3.5
    np.testing.assert_allclose(seen, _mirrored([2.0, 1.5, 3.5]), rtol=1e-12)
    assert moments.empty


def test_yogi_keeps_v_when_it_equals_the_squared_delta() -> None:
    # sign(v - Δ²) = 0: v stays; with β1 = 0 the step is η·Δ/(√v + τ) = 0.1·0.5/(0.5 + 0.5)
    opt = FedYogi(lr=0.1, beta1=0.0, beta2=0.75, tau=0.5)
    seen, moments = _run(opt, [0.0, 0.0], ([0.5, 0.5],))
    np.testing.assert_allclose(seen[0], [0.05, 0.05], rtol=1e-12)
    np.testing.assert_allclose(moments.global_moments[G].second, [0.25, 0.25], rtol=1e-12)


def test_the_step_is_rounded_once_to_the_tensors_dtype() -> None:
    opt = FedAdam(**HAND)
    model = _global([1.0, -1.0], np.float32)
    work = opt.working_model(model)
    assert work.global_tensors[G].dtype == np.float64
    aggregate = FederationModel({G: work.global_tensors[G] + 2.0}, {})
    step = opt.apply(
        model, aggregate, released=Released(global_names=frozenset({G})), moments=ServerMoments()
    )
    out = step.model.global_tensors[G]
    assert out.dtype == np.float32
    assert out[0] == np.float32(1 + 0.1 * 1 / (sqrt(1.1875) + 0.5))
    assert step.moments.global_moments[G].first.dtype == np.float64


# ----------------------------------------------------------------------------- sgd is today's


def _three_clients() -> tuple[FederationModel, list[ClientUpdate]]:
    model = FederationModel(
        global_tensors={G: np.array([1.0, 2.0], np.float32)},
        cluster_tensors={0: {C: np.array([10.0], np.float32)}},
        cluster_template={C: np.array([0.0], np.float32)},
    )
    rng = np.random.default_rng(3)
    updates = [
        ClientUpdate(
            cid,
            k,
            n,
            {G: rng.normal(size=2).astype(np.float32), C: rng.normal(size=1).astype(np.float32)},
        )
        for cid, k, n in (("a", 0, 1), ("b", 0, 3), ("c", 1, 4))
    ]
    return model, updates


def test_default_sgd_returns_the_aggregate_itself_bit_for_bit() -> None:
    model, updates = _three_clients()
    today = WeightedFedAvg().aggregate(model, updates)
    opt = make_server_optimizer("sgd", lr=None)
    assert opt.identity and opt.working_model(model) is model
    aggregator = WeightedFedAvg()
    aggregate = aggregator.aggregate(opt.working_model(model), updates)
    step = opt.apply(model, aggregate, released=aggregator.last_released, moments=ServerMoments())
    assert step.model is aggregate
    pairs = [(step.model.global_tensors, today.global_tensors)]
    pairs += [(step.model.cluster_tensors[k], today.cluster_tensors[k]) for k in (0, 1)]
    for got, want in pairs:
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert got[name].tobytes() == want[name].tobytes()
    assert step.info == {"server_optimizer_sgd": 1.0, "server_lr": 1.0}
    assert step.moments.empty


def test_the_aggregator_reports_what_it_released() -> None:
    model, updates = _three_clients()
    model.cluster_tensors[5] = {C: np.array([7.0], np.float32)}  # nobody in cluster 5
    aggregator = WeightedFedAvg()
    aggregator.aggregate(model, updates)
    assert aggregator.last_released == Released(
        global_names=frozenset({G}), clusters={0: frozenset({C}), 1: frozenset({C})}
    )
    aggregator.aggregate(model, [])
    assert aggregator.last_released == Released()


# ----------------------------------------------------------------------------- clusters


def _clustered(clusters: dict[int, float]) -> FederationModel:
    return FederationModel(
        global_tensors={G: np.zeros(2)},
        cluster_tensors={k: {C: np.full(3, x)} for k, x in clusters.items()},
        cluster_template={C: np.full(3, -5.0)},
    )


def _aggregate(model: FederationModel, deltas: dict[int, float], g: float) -> FederationModel:
    return FederationModel(
        global_tensors={G: model.global_tensors[G] + g},
        cluster_tensors={
            **{k: {C: t[C].copy()} for k, t in model.cluster_tensors.items()},
            **{
                k: {C: model.cluster_tensors.get(k, model.cluster_template)[C] + d}
                for k, d in deltas.items()
            },
        },
        cluster_template=model.cluster_template,
    )


def _released(clusters: list[int]) -> Released:
    return Released(global_names=frozenset({G}), clusters={k: frozenset({C}) for k in clusters})


def test_each_cluster_has_its_own_moments_and_a_skipped_one_keeps_them() -> None:
    opt = FedAdam(**HAND)
    model = _clustered({0: 1.0, 1: 2.0})
    # round 1: both clusters released with different deltas
    one = opt.apply(
        model,
        _aggregate(model, {0: 2.0, 1: -3.0}, 1.0),
        released=_released([0, 1]),
        moments=ServerMoments(),
    )
    # round 2: cluster 1 is not released (no members, or DP / secure aggregation held it)
    # and cluster 2 is new (from the template)
    two = opt.apply(
        one.model,
        _aggregate(one.model, {0: -1.0, 2: 4.0}, 1.0),
        released=_released([0, 2]),
        moments=one.moments,
    )
    # cluster 0 alone, as if it were the only level: the same tensors and moments
    alone, alone_moments = _run(opt, [1.0, 1.0, 1.0], ([2.0] * 3, [-1.0] * 3))
    np.testing.assert_allclose(two.model.cluster_tensors[0][C], alone[1], rtol=1e-12)
    np.testing.assert_allclose(
        two.moments.cluster_moments[0][C].second, alone_moments.global_moments[G].second
    )
    # cluster 1: first step from Δ = -3 (m = -1.5, v = 0.75·0.25 + 0.25·9), then untouched
    x1 = 2 - 0.1 * 1.5 / (sqrt(0.1875 + 2.25) + 0.5)
    np.testing.assert_allclose(one.model.cluster_tensors[1][C], [x1] * 3, rtol=1e-12)
    assert two.model.cluster_tensors[1][C].tobytes() == one.model.cluster_tensors[1][C].tobytes()
    assert two.moments.cluster_moments[1] is one.moments.cluster_moments[1]
    assert "cluster_1_server_update_norm" not in two.info
    # cluster 2 starts from fresh moments: m = 0.5·4 = 2, v = 0.1875 + 0.25·16 = 4.1875
    x2 = -5 + 0.1 * 2 / (sqrt(4.1875) + 0.5)
    np.testing.assert_allclose(two.model.cluster_tensors[2][C], [x2] * 3, rtol=1e-12)
    np.testing.assert_allclose(two.moments.cluster_moments[2][C].first, [2.0] * 3)
    assert two.info["cluster_2_server_update_norm"] == pytest.approx(sqrt(3) * (x2 + 5))
    assert two.info["server_optimizer_adam"] == 1.0 and two.info["server_lr"] == 0.1


def test_a_global_level_that_was_not_released_keeps_its_tensors_and_moments() -> None:
    opt = FedYogi(**HAND)
    model = _clustered({0: 1.0})
    one = opt.apply(
        model, _aggregate(model, {0: 1.0}, 2.0), released=_released([0]), moments=ServerMoments()
    )
    two = opt.apply(
        one.model,
        _aggregate(one.model, {0: 1.0}, 0.0),
        released=Released(clusters={0: frozenset({C})}),
        moments=one.moments,
    )
    assert two.model.global_tensors[G].tobytes() == one.model.global_tensors[G].tobytes()
    assert two.moments.global_moments[G] is one.moments.global_moments[G]
    assert "global_server_update_norm" not in two.info


def test_dp_levels_leave_a_withheld_cluster_out_of_what_it_released() -> None:
    m = dp_model(clusters=(0, 1))
    updates = [dp_update(c, k, m, g=0.1, c=0.1, hw=0.1, hb=0.1) for c, k in (("a", 0), ("b", 1))]
    # cluster 1 expects one member (below min_cluster_members 2): its DP tensors are held
    aggregator = dp(no_noise(), m_k={0: 4.0, 1: 1.0})
    aggregator.aggregate(m, updates)
    assert aggregator.last_released.of_cluster(0) == {C, HW, HB}
    assert aggregator.last_released.of_cluster(1) == frozenset()
    assert aggregator.last_released.global_names == {"prompt.global"}
    # with DP on the cluster prompt only, cluster 1's head (no DP) is still released
    mechanisms = {k: v for k, v in no_noise().items() if k != "head"}
    partial = dp(mechanisms, m_k={0: 4.0, 1: 1.0})
    partial.aggregate(m, updates)
    assert partial.last_released.of_cluster(1) == {HW, HB}


# ----------------------------------------------------------------------------- non-finite


def test_the_validator_refuses_non_finite_uploads_before_any_aggregate() -> None:
    bad = {G: np.array([1.0, np.nan], np.float32)}
    with pytest.raises(NonFiniteError, match="NaN or infinity"):
        validate_update(bad, spec_of(bad))
    inf = {G: np.array([np.inf, 0.0], np.float32)}
    with pytest.raises(NonFiniteError, match="NaN or infinity"):
        validate_update(inf, spec_of(inf))


def test_the_largest_finite_float32_delta_keeps_the_moments_finite() -> None:
    # what the validator lets through without max_update_l2_norm: float32 max in every
    # coordinate; its square (1.2e77) is far inside float64
    big = np.finfo(np.float32).max
    deltas = {G: np.array([big, -big], np.float32)}
    validate_update(deltas, spec_of(deltas), max_l2_norm=None)
    model = FederationModel({G: np.zeros(2, np.float32)}, {})
    opt = FedAdam(lr=0.01)
    aggregator = WeightedFedAvg()
    aggregate = aggregator.aggregate(opt.working_model(model), [ClientUpdate("a", 0, 1, deltas)])
    step = opt.apply(model, aggregate, released=aggregator.last_released, moments=ServerMoments())
    tm = step.moments.global_moments[G]
    assert np.isfinite(tm.first).all() and np.isfinite(tm.second).all()
    assert np.isfinite(step.model.global_tensors[G]).all()


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        (np.nan, "not finite"),
        (np.inf, "not finite"),
        (1e200, "overflow"),  # a float64 tensor: Δ² = inf
    ],
)
def test_non_finite_deltas_or_moments_are_refused_and_never_kept(delta: float, match: str) -> None:
    opt = FedAdam(**HAND)
    model = _global([1.0, -1.0])
    _, before = _run(opt, [1.0, -1.0], (DELTAS[0],))
    saved = (before.global_moments[G].first.copy(), before.global_moments[G].second.copy())
    aggregate = FederationModel({G: np.array([1.0, delta])}, {})
    with pytest.raises(ServerOptimizerError, match=match):
        opt.apply(model, aggregate, released=Released(frozenset({G})), moments=before)
    np.testing.assert_array_equal(before.global_moments[G].first, saved[0])
    np.testing.assert_array_equal(before.global_moments[G].second, saved[1])


def test_a_step_beyond_the_tensors_dtype_is_refused() -> None:
    opt = ServerSGD(lr=10.0)
    model = _global([3e38], np.float32)
    aggregate = FederationModel({G: np.array([3.3e38])}, {})
    with pytest.raises(ServerOptimizerError, match="range of float32"):
        opt.apply(model, aggregate, released=Released(frozenset({G})), moments=ServerMoments())


# ----------------------------------------------------------------------------- resuming


def test_resuming_checks_the_moments_against_the_model() -> None:
    opt = FedAdam(**HAND)
    model = _clustered({0: 1.0})
    fits = ServerMoments(
        optimizer="adam",
        cluster_moments={0: {C: TensorMoments(np.zeros(3), np.ones(3))}},
    )
    assert opt.resume(fits, model) is fits
    wrong_shape = ServerMoments("adam", {G: TensorMoments(np.zeros(3), np.ones(3))})
    with pytest.raises(ValueError, match="shapes"):
        opt.resume(wrong_shape, model)
    unknown_cluster = ServerMoments(
        "adam", cluster_moments={7: {C: TensorMoments(np.zeros(3), np.ones(3))}}
    )
    with pytest.raises(ValueError, match="cluster 7"):
        opt.resume(unknown_cluster, model)
    unknown_tensor = ServerMoments("adam", {"head.weight": TensorMoments(np.zeros(2), np.ones(2))})
    with pytest.raises(ValueError, match=r"head\.weight"):
        opt.resume(unknown_tensor, model)


def test_moments_of_another_optimizer_are_not_continued(caplog: pytest.LogCaptureFixture) -> None:
    model = _global([1.0, -1.0])
    adam = ServerMoments("adam", {G: TensorMoments(np.ones(2), np.ones(2))})
    with caplog.at_level(logging.WARNING):
        fresh = FedYogi(**HAND).resume(adam, model)
    assert fresh.empty and fresh.optimizer == "yogi"
    assert "written by adam" in caplog.text
    assert ServerSGD(lr=1.0).resume(adam, model).empty


# ----------------------------------------------------------------------------- registry


def test_the_registry_names_every_optimizer_and_refuses_the_rest() -> None:
    registered = dict(SERVER_OPTIMIZERS)
    assert registered == {"sgd": ServerSGD, "adam": FedAdam, "yogi": FedYogi, "adagrad": FedAdagrad}
    assert isinstance(make_server_optimizer("yogi", lr=0.01), FedYogi)
    assert make_server_optimizer("sgd", lr=None).lr == 1.0
    with pytest.raises(ValueError, match="known: sgd, adam, yogi, adagrad"):
        make_server_optimizer("fedadam", lr=0.1)
    for name in ("adam", "yogi", "adagrad"):
        with pytest.raises(ValueError, match="needs a learning rate"):
            make_server_optimizer(name, lr=None)


@pytest.mark.parametrize(
    "options",
    [
        {"lr": 0.0},
        {"lr": -0.1},
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"lr": 0.1, "beta1": 1.0},
        {"lr": 0.1, "beta2": -0.1},
        {"lr": 0.1, "tau": 0.0},
        {"lr": 0.1, "tau": float("inf")},
    ],
)
def test_out_of_range_hyperparameters_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        FedAdam(**options)

"""DP-FedAvg: clipping bound, calibrated noise, fixed denominator, server learning rate."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.aggregation.dp_fedavg import clip_update, dp_fedavg, global_l2_norm


def test_clip_bound_holds_over_all_tensors_together() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 100.0):
        t = {"a": rng.normal(size=(4, 8)) * scale, "b": rng.normal(size=3) * scale}
        clipped, norm = clip_update(t, 1.5)
        assert norm == pytest.approx(global_l2_norm(t))
        assert global_l2_norm(clipped) <= 1.5 + 1e-9
        if norm <= 1.5:  # small updates are untouched
            np.testing.assert_allclose(clipped["a"], t["a"])


def test_without_noise_it_is_the_mean_of_clipped_updates_over_the_fixed_denominator() -> None:
    base = {"g": np.zeros(2, dtype=np.float32)}
    deltas = [{"g": np.array([3.0, 4.0])}, {"g": np.array([0.3, 0.4])}]  # norms 5 and 0.5
    out = dp_fedavg(
        base,
        deltas,
        clip_norm=1.0,
        noise_multiplier=0.0,
        expected_participants=4,
        server_lr=2.0,
        rng=np.random.default_rng(0),
    )
    # clipped: [0.6, 0.8] and [0.3, 0.4]; sum [0.9, 1.2]; / 4 * 2 = [0.45, 0.6]
    np.testing.assert_allclose(out.tensors["g"], [0.45, 0.6], rtol=1e-6)
    assert out.tensors["g"].dtype == np.float32
    assert out.clipped_fraction == 0.5
    assert out.mean_update_norm == pytest.approx(2.75)


def test_added_noise_has_the_calibrated_standard_deviation() -> None:
    n = 200_000
    base = {"g": np.zeros(n)}
    z, s, m, lr = 1.3, 0.7, 5.0, 1.0
    out = dp_fedavg(
        base,
        [{"g": np.zeros(n)}] * 3,
        clip_norm=s,
        noise_multiplier=z,
        expected_participants=m,
        server_lr=lr,
        rng=np.random.default_rng(42),
    )
    noise = out.tensors["g"] * m / lr  # the noise added to the sum
    expected = z * s
    # the sample std of 200k normals is within 1 % of sigma with overwhelming probability
    assert np.std(noise) == pytest.approx(expected, rel=0.01)
    assert abs(np.mean(noise)) < 5 * expected / np.sqrt(n)
    assert out.noise_std == pytest.approx(expected)


def test_one_client_cannot_move_the_average_by_more_than_s_over_m() -> None:
    base = {"g": np.zeros(10)}
    huge = {"g": np.full(10, 1e6)}
    out = dp_fedavg(
        base, [huge], clip_norm=2.0, noise_multiplier=0.0, expected_participants=8,
        server_lr=1.0, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert global_l2_norm(out.tensors) == pytest.approx(2.0 / 8)


def test_the_wrapper_noises_the_global_level_and_keeps_the_inner_cluster_level() -> None:
    from fedprompt_coordinator.aggregation.dp_fedavg import DPFedAvgGlobal
    from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
    from fedprompt_coordinator.domain import ClientUpdate, FederationModel

    model = FederationModel(
        global_tensors={"prompt.global": np.zeros(2, np.float32)},
        cluster_tensors={0: {"prompt.cluster": np.array([1.0], np.float32)}},
        cluster_template={"prompt.cluster": np.array([0.0], np.float32)},
    )
    updates = [
        ClientUpdate("a", 0, 1, {"prompt.global": np.array([3.0, 4.0], np.float32),
                                 "prompt.cluster": np.array([2.0], np.float32)}),
        ClientUpdate("b", 0, 3, {"prompt.global": np.array([0.3, 0.4], np.float32),
                                 "prompt.cluster": np.array([6.0], np.float32)}),
    ]  # fmt: skip
    calls = []

    def expected() -> float:
        calls.append(1)
        return 4.0

    wrapper = DPFedAvgGlobal(
        WeightedFedAvg(),
        clip_norm=1.0,
        noise_multiplier=0.0,
        expected_participants=expected,
        server_learning_rate=2.0,
        rng=np.random.default_rng(0),
    )
    out = wrapper.aggregate(model, updates)
    # global: η (clip([3,4]) + [0.3,0.4]) / m = 2 * ([0.6,0.8] + [0.3,0.4]) / 4
    np.testing.assert_allclose(out.global_tensors["prompt.global"], [0.45, 0.6], rtol=1e-6)
    # cluster: the inner n-weighted mean, untouched by clipping: 1 + (1*2 + 3*6) / 4
    np.testing.assert_array_equal(out.cluster_tensors[0]["prompt.cluster"], [6.0])
    assert calls == [1]  # m is read once per aggregation
    assert wrapper.last_info["dp_clipped_fraction"] == 0.5
    assert wrapper.last_info["cluster_0_min_weight"] == 0.25

"""DPLevels: clipping per level and per part, calibrated noise, denominators, skipped clusters."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from fedprompt_coordinator.aggregation.dp_levels import DPLevels, cluster_dp_level
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.config import DPLevel
from fedprompt_coordinator.domain import ClientUpdate, FederationModel
from fedprompt_coordinator.privacy import LevelMechanism

G, C, HW, HB = "prompt.global", "prompt.cluster", "head.weight", "head.bias"


def model(dim: int = 2, clusters: tuple[int, ...] = (0,)) -> FederationModel:
    template = {
        C: np.zeros((2, dim), np.float32),
        HW: np.zeros((3, dim), np.float32),
        HB: np.zeros(3, np.float32),
    }
    return FederationModel(
        global_tensors={G: np.zeros((2, dim), np.float32)},
        cluster_tensors={k: {n: v.copy() for n, v in template.items()} for k in clusters},
        cluster_template=template,
    )


def update(cid: str, cluster: int, m: FederationModel, **values: float) -> ClientUpdate:
    """An update with every tensor filled with ``values[name-key]`` (0 by default)."""
    keys = {G: "g", C: "c", HW: "hw", HB: "hb"}
    shapes = {**m.global_tensors, **m.cluster_template}
    return ClientUpdate(
        cid,
        cluster,
        10,
        {n: np.full(v.shape, values.get(keys[n], 0.0), np.float32) for n, v in shapes.items()},
    )


def norm(tensors: Mapping[str, np.ndarray], names: tuple[str, ...]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(tensors[n], dtype=np.float64)) for n in names)))


def dp(
    mechanisms: Mapping[str, LevelMechanism],
    *,
    m: float = 4.0,
    m_k: Mapping[int, float] | None = None,
    lr: float = 1.0,
    seed: int = 0,
    min_members: float = 2.0,
) -> DPLevels:
    sizes = dict(m_k or {})
    return DPLevels(
        WeightedFedAvg(),
        mechanisms=mechanisms,
        expected_global=lambda: m,
        expected_cluster=lambda k: sizes.get(k, m),
        server_learning_rate=lr,
        rng=np.random.default_rng(seed),
        min_cluster_members=min_members,
    )


def no_noise(
    s_global: float = 1.0, s_cluster: float = 1.0, s_head: float = 1.0
) -> dict[str, LevelMechanism]:
    return {
        "global": LevelMechanism(s_global, 0.0),
        "cluster": LevelMechanism(s_cluster, 0.0),
        "head": LevelMechanism(s_head, 0.0),
    }


def test_the_head_is_its_own_level_and_the_rest_of_a_cluster_is_the_cluster_level() -> None:
    assert cluster_dp_level(HW) is DPLevel.HEAD and cluster_dp_level(HB) is DPLevel.HEAD
    assert cluster_dp_level(C) is DPLevel.CLUSTER
    assert cluster_dp_level("lora.layer0.A") is DPLevel.CLUSTER


def test_each_level_and_each_part_of_a_cluster_is_clipped_to_its_own_bound() -> None:
    fm = model()
    # one member: a huge cluster prompt, a small head; clipping the cluster prompt must not
    # shrink the head (they are clipped separately), nor the global prompt
    u = update("a", 0, fm, g=0.1, c=100.0, hw=0.01, hb=0.01)
    agg = dp(no_noise(s_global=5.0, s_cluster=2.0, s_head=3.0), m=2.0, m_k={0: 2.0}, lr=1.5)
    out = agg.aggregate(fm, [u])
    # global: under its bound, so η·Δ/m
    np.testing.assert_allclose(out.global_tensors[G], 1.5 * 0.1 / 2.0, rtol=1e-5)
    c = out.cluster_tensors[0]
    # cluster prompt: clipped to S_cluster = 2, then η/m_k
    assert norm(c, (C,)) == pytest.approx(1.5 * 2.0 / 2.0, rel=1e-5)
    # head: its own bound (3) is not reached: unclipped, whatever the cluster prompt did
    np.testing.assert_allclose(c[HW], 1.5 * 0.01 / 2.0, rtol=1e-5)
    np.testing.assert_allclose(c[HB], 1.5 * 0.01 / 2.0, rtol=1e-5)
    info = agg.last_info
    assert info["dp_cluster_0_cluster_clipped_fraction"] == 1.0
    assert info["dp_cluster_0_head_clipped_fraction"] == 0.0
    assert info["dp_cluster_clipped_fraction"] == 1.0
    assert info["dp_global_clipped_fraction"] == 0.0
    assert info["dp_clip_norm_head"] == 3.0 and info["dp_clip_norm_cluster"] == 2.0
    # the keys of global-only DP stay
    assert info["dp_clip_norm"] == 5.0 and info["dp_clipped_fraction"] == 0.0


def test_the_head_is_clipped_as_one_vector_of_weight_and_bias() -> None:
    fm = model(dim=4)
    u = update("a", 0, fm, hw=10.0, hb=10.0)
    out = dp(no_noise(s_head=0.5), m=1.0, m_k={0: 2.0}).aggregate(fm, [u, update("b", 0, fm)])
    assert norm(out.cluster_tensors[0], (HW, HB)) == pytest.approx(0.5 / 2.0, rel=1e-5)
    # direction kept: weight and bias scaled by the same factor
    ratio = out.cluster_tensors[0][HW][0, 0] / out.cluster_tensors[0][HB][0]
    assert ratio == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("level", ["global", "cluster", "head"])
def test_one_crafted_huge_update_moves_each_level_by_at_most_eta_s_over_m(level: str) -> None:
    fm = model(dim=8, clusters=(0,))
    mechanisms = {
        "global": LevelMechanism(0.7, 1.1),
        "cluster": LevelMechanism(1.3, 0.9),
        "head": LevelMechanism(0.4, 1.7),
    }
    honest = [update(f"h{i}", 0, fm, g=0.01 * i, c=-0.02, hw=0.005, hb=0.0) for i in range(3)]
    attacker = update("x", 0, fm, g=1e6, c=-1e6, hw=1e6, hb=-1e6)
    lr, m = 0.8, 4.0
    # the same seed: the same noise draws in both runs, so the difference is the attacker's
    # clipped contribution alone
    base = dp(mechanisms, m=m, m_k={0: m}, lr=lr, seed=7).aggregate(fm, honest)
    attacked = dp(mechanisms, m=m, m_k={0: m}, lr=lr, seed=7).aggregate(fm, [*honest, attacker])
    names = {"global": (G,), "cluster": (C,), "head": (HW, HB)}[level]
    before = base.global_tensors if level == "global" else base.cluster_tensors[0]
    after = attacked.global_tensors if level == "global" else attacked.cluster_tensors[0]
    shift = norm({n: after[n].astype(np.float64) - before[n] for n in names}, names)
    bound = lr * mechanisms[level].clip_norm / m
    assert shift == pytest.approx(bound, rel=1e-4)  # exactly the bound (it is clipped to S)
    assert shift <= bound * (1 + 1e-4)
    # and the noise is really there: the honest aggregate is not the noiseless one
    noiseless = dp(no_noise(0.7, 1.3, 0.4), m=m, m_k={0: m}, lr=lr).aggregate(fm, honest)
    ref = noiseless.global_tensors if level == "global" else noiseless.cluster_tensors[0]
    assert not np.allclose(before[names[0]], ref[names[0]])


def test_the_noise_of_each_level_has_std_z_l_s_l_over_m() -> None:
    dim = 20_000
    fm = model(dim=dim, clusters=(0, 1))
    mechanisms = {
        "global": LevelMechanism(0.5, 1.3),
        "cluster": LevelMechanism(2.0, 0.6),
        "head": LevelMechanism(0.1, 4.0),
    }
    m, m_k, lr = 6.0, {0: 2.0, 1: 3.0}, 1.0
    # zero deltas: what moves is the noise alone, divided by the level's denominator
    ups = [update("a", 0, fm), update("b", 0, fm), update("c", 1, fm), update("d", 1, fm)]
    out = dp(mechanisms, m=m, m_k=m_k, lr=lr, seed=3).aggregate(fm, ups)
    samples = {
        ("global", None): out.global_tensors[G],
        **{("cluster", k): out.cluster_tensors[k][C] for k in (0, 1)},
        **{
            ("head", k): np.concatenate(
                [out.cluster_tensors[k][HW].ravel(), out.cluster_tensors[k][HB]]
            )
            for k in (0, 1)
        },
    }
    for (level, k), values in samples.items():
        mech = mechanisms[level]
        denominator = m if k is None else m_k[k]
        expected = lr * mech.noise_multiplier * mech.clip_norm / denominator
        x = values.astype(np.float64).ravel()
        # 40k (or 60k) draws: the sample std is within 2 % with overwhelming probability
        assert np.std(x) == pytest.approx(expected, rel=0.02), (level, k)
        assert abs(np.mean(x)) < 5 * expected / np.sqrt(x.size)
    assert out.cluster_tensors[0][C].dtype == np.float32


def test_the_round_summary_names_each_levels_mechanism() -> None:
    mechanisms = {"global": LevelMechanism(0.5, 1.3), "head": LevelMechanism(0.1, 4.0)}
    agg = dp(mechanisms)
    fm = model()
    agg.aggregate(fm, [update("a", 0, fm), update("b", 0, fm)])
    for lv, mech in mechanisms.items():
        assert agg.last_info[f"dp_noise_std_{lv}"] == pytest.approx(mech.noise_std)
        assert agg.last_info[f"dp_noise_multiplier_{lv}"] == mech.noise_multiplier
        assert agg.last_info[f"dp_clip_norm_{lv}"] == mech.clip_norm
    assert "dp_clip_norm_cluster" not in agg.last_info


def test_a_cluster_below_min_members_is_not_released_and_others_are() -> None:
    fm = model(clusters=(0, 1))
    fm.cluster_tensors[0][C][:] = 5.0
    ups = [
        update("a", 0, fm, c=1.0, hw=1.0),  # cluster 0: one expected member
        update("b", 1, fm, c=0.1),
        update("c", 1, fm, c=0.1),
    ]
    agg = dp(no_noise(), m=3.0, m_k={0: 1.0, 1: 2.0})
    out = agg.aggregate(fm, ups)
    # cluster 0: DP tensors keep their value (copies), nothing of a's update leaks
    np.testing.assert_array_equal(out.cluster_tensors[0][C], 5.0)
    np.testing.assert_array_equal(out.cluster_tensors[0][HW], 0.0)
    assert out.cluster_tensors[0][C] is not fm.cluster_tensors[0][C]
    assert agg.last_info["dp_cluster_0_skipped"] == 1.0
    # cluster 1: released (two members, clipped sum / 2)
    np.testing.assert_allclose(out.cluster_tensors[1][C], 0.1, rtol=1e-5)
    assert "dp_cluster_1_skipped" not in agg.last_info
    assert agg.last_info["dp_cluster_1_expected_participants"] == 2.0
    # the global level is released as usual: the skip concerns a cluster's aggregate only
    assert agg.last_info["dp_global_expected_participants"] == 3.0


def test_fractional_expected_members_are_compared_with_the_minimum() -> None:
    fm = model(clusters=(0,))
    ups = [update("a", 0, fm, c=1.0)]
    # q = 0.5 and 3 members: m_k = 1.5 < 2 -> skipped; with min 1.5 -> released
    skipped = dp(no_noise(), m_k={0: 1.5}).aggregate(fm, ups)
    np.testing.assert_array_equal(skipped.cluster_tensors[0][C], 0.0)
    released = dp(no_noise(), m_k={0: 1.5}, min_members=1.5).aggregate(fm, ups)
    # four entries of 1 (norm 2) clipped to S = 1: entries 0.5, over m_k = 1.5
    np.testing.assert_allclose(released.cluster_tensors[0][C], 0.5 / 1.5, rtol=1e-6)


def test_a_level_without_dp_keeps_the_wrapped_aggregators_weighted_mean() -> None:
    fm = model()
    a = update("a", 0, fm, g=1.0, c=1.0, hw=1.0, hb=1.0)
    b = update("b", 0, fm, g=0.0, c=0.0, hw=4.0, hb=4.0)
    b = ClientUpdate("b", 0, 30, b.tensors)  # three times a's examples
    # DP on global and cluster only: the head is the inner n-weighted mean, unclipped
    mechanisms = {k: v for k, v in no_noise(s_cluster=0.1).items() if k != "head"}
    agg = dp(mechanisms, m=2.0, m_k={0: 2.0})
    out = agg.aggregate(fm, [a, b])
    np.testing.assert_allclose(out.cluster_tensors[0][HW], (10 * 1 + 30 * 4) / 40, rtol=1e-6)
    # the cluster prompt is DP: unweighted, clipped to 0.1, over m_k = 2
    assert norm(out.cluster_tensors[0], (C,)) == pytest.approx(0.1 / 2, rel=1e-5)
    assert "dp_head_clipped_fraction" not in agg.last_info
    assert "cluster_0_max_weight" in agg.last_info  # the inner mean reported its weights
    # DP on the global level only: the whole cluster level is the inner weighted mean
    only_global = {"global": no_noise()["global"]}
    out = dp(only_global, m=2.0).aggregate(fm, [a, b])
    np.testing.assert_allclose(out.cluster_tensors[0][C], 10 / 40, rtol=1e-6)
    # a's four entries of 1 (norm 2) clipped to 1: 0.5 each, b's zeros, over m = 2
    np.testing.assert_allclose(out.global_tensors[G], 0.25, rtol=1e-5)


def test_an_unclustered_model_is_one_global_level_head_included() -> None:
    fm = FederationModel(
        global_tensors={G: np.zeros(3, np.float32), HW: np.zeros(2, np.float32)},
        cluster_tensors={},
    )
    u = ClientUpdate("a", 0, 1, {G: np.full(3, 10.0, np.float32), HW: np.full(2, 10.0, np.float32)})
    out = dp({"global": LevelMechanism(1.0, 0.0)}, m=1.0).aggregate(fm, [u])
    # one vector: prompt and head together clipped to S = 1
    assert norm(out.global_tensors, (G, HW)) == pytest.approx(1.0, rel=1e-5)
    assert out.cluster_tensors == {}


def test_unknown_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown DP levels"):
        dp({"everything": LevelMechanism(1.0, 1.0)})

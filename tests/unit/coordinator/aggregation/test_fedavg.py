"""Tests of weighted FedAvg over the global and cluster levels, the levels and the registry."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedprompt_coordinator.aggregation.base import weighted_mean_delta
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.levels import Level, level_of, split_levels
from fedprompt_coordinator.aggregation.registry import AGGREGATORS, make_aggregator
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _model() -> FederationModel:
    return FederationModel(
        global_tensors={"prompt.global": _f32(1, 2)},
        cluster_tensors={
            0: {"prompt.cluster": _f32(10), "head.weight": _f32(0, 0)},
            1: {"prompt.cluster": _f32(20), "head.weight": _f32(1, 1)},
            2: {"prompt.cluster": _f32(30), "head.weight": _f32(2, 2)},
        },
        cluster_template={"prompt.cluster": _f32(-1), "head.weight": _f32(-2, -2)},
    )


def _update(
    client: str, cluster: int, n: int, glob: list[float], clus: list[float], head: list[float]
) -> ClientUpdate:
    return ClientUpdate(
        client_id=client,
        cluster_id=cluster,
        num_examples=n,
        tensors={
            "prompt.global": _f32(*glob),
            "prompt.cluster": _f32(*clus),
            "head.weight": _f32(*head),
        },
    )


# Three clients in two clusters, n = 1, 3, 4 (total 8).
UPDATES = [
    _update("a", 0, 1, [4, 8], [2], [8, 0]),
    _update("b", 0, 3, [0, 4], [6], [0, 4]),
    _update("c", 1, 4, [2, -2], [1], [-3, 5]),
]


def test_weighted_fedavg_matches_a_hand_computation() -> None:
    out = WeightedFedAvg().aggregate(_model(), UPDATES)
    # Global over everyone: (1*[4,8] + 3*[0,4] + 4*[2,-2]) / 8 = [12,12]/8 = [1.5, 1.5].
    np.testing.assert_array_equal(out.global_tensors["prompt.global"], [2.5, 3.5])
    # Cluster 0 (a, b; weights 1, 3 of 4): prompt (2 + 18)/4 = 5; head ([8,0] + [0,12])/4 = [2, 3].
    np.testing.assert_array_equal(out.cluster_tensors[0]["prompt.cluster"], [15.0])
    np.testing.assert_array_equal(out.cluster_tensors[0]["head.weight"], [2.0, 3.0])
    # Cluster 1 (c alone): its own delta.
    np.testing.assert_array_equal(out.cluster_tensors[1]["prompt.cluster"], [21.0])
    np.testing.assert_array_equal(out.cluster_tensors[1]["head.weight"], [-2.0, 6.0])


def test_cluster_without_updates_is_unchanged() -> None:
    out = WeightedFedAvg().aggregate(_model(), UPDATES)
    np.testing.assert_array_equal(out.cluster_tensors[2]["prompt.cluster"], [30.0])
    np.testing.assert_array_equal(out.cluster_tensors[2]["head.weight"], [2.0, 2.0])
    assert sorted(out.cluster_tensors) == [0, 1, 2]


def test_new_cluster_starts_from_the_template() -> None:
    updates = [_update("d", 5, 2, [0, 0], [3], [1, 1]), _update("e", 5, 2, [0, 0], [1], [3, 3])]
    out = WeightedFedAvg().aggregate(_model(), updates)
    # Template [-1] + mean([3, 1]) = 1; head [-2,-2] + [2, 2] = [0, 0].
    np.testing.assert_array_equal(out.cluster_tensors[5]["prompt.cluster"], [1.0])
    np.testing.assert_array_equal(out.cluster_tensors[5]["head.weight"], [0.0, 0.0])
    np.testing.assert_array_equal(out.cluster_template["prompt.cluster"], [-1.0])
    np.testing.assert_array_equal(out.global_tensors["prompt.global"], [1.0, 2.0])


def test_input_model_and_updates_are_not_modified() -> None:
    model = _model()
    before = copy.deepcopy(model)
    updates_before = copy.deepcopy(UPDATES)
    out = WeightedFedAvg().aggregate(model, UPDATES)
    for name, value in before.global_tensors.items():
        np.testing.assert_array_equal(model.global_tensors[name], value)
    for cluster, tensors in before.cluster_tensors.items():
        for name, value in tensors.items():
            np.testing.assert_array_equal(model.cluster_tensors[cluster][name], value)
    for old, new in zip(updates_before, UPDATES, strict=True):
        for name, value in old.tensors.items():
            np.testing.assert_array_equal(new.tensors[name], value)
    # The result owns its arrays: writing to it leaves the input alone.
    out.global_tensors["prompt.global"][:] = 99
    out.cluster_tensors[2]["prompt.cluster"][:] = 99
    np.testing.assert_array_equal(model.global_tensors["prompt.global"], [1.0, 2.0])
    np.testing.assert_array_equal(model.cluster_tensors[2]["prompt.cluster"], [30.0])


def test_no_updates_returns_an_equal_model() -> None:
    out = WeightedFedAvg().aggregate(_model(), [])
    np.testing.assert_array_equal(out.global_tensors["prompt.global"], [1.0, 2.0])
    np.testing.assert_array_equal(out.cluster_tensors[1]["prompt.cluster"], [20.0])


def test_dtype_of_the_model_is_kept() -> None:
    model = FederationModel(
        global_tensors={"prompt.global": np.array([1.0, 2.0], dtype=np.float16)},
        cluster_tensors={},
        cluster_template={"prompt.cluster": np.array([0.5], dtype=np.float64)},
    )
    update = ClientUpdate(
        "a",
        0,
        2,
        {
            "prompt.global": np.array([0.5, 0.25], dtype=np.float32),
            "prompt.cluster": np.array([0.25], dtype=np.float32),
        },
    )
    out = WeightedFedAvg().aggregate(model, [update])
    assert out.global_tensors["prompt.global"].dtype == np.float16
    assert out.cluster_tensors[0]["prompt.cluster"].dtype == np.float64
    np.testing.assert_array_equal(out.global_tensors["prompt.global"], [1.5, 2.25])
    np.testing.assert_array_equal(out.cluster_tensors[0]["prompt.cluster"], [0.75])


def test_weighted_mean_delta_accumulates_in_float64() -> None:
    mean = weighted_mean_delta(UPDATES, ["prompt.global"])
    assert mean["prompt.global"].dtype == np.float64
    np.testing.assert_array_equal(mean["prompt.global"], [1.5, 1.5])


@pytest.mark.parametrize("updates", [[], [_update("z", 0, 0, [1, 1], [1], [1, 1])]])
def test_weighted_mean_of_nothing_is_an_error(updates: list[ClientUpdate]) -> None:
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean_delta(updates, ["prompt.global"])


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("prompt.global", Level.GLOBAL),
        ("prompt.global.0", Level.GLOBAL),
        ("prompt.global.layer3.bias", Level.GLOBAL),
        ("prompt.globalx", Level.CLUSTER),
        ("prompt.glob", Level.CLUSTER),
        ("prompt.cluster", Level.CLUSTER),
        ("head.weight", Level.CLUSTER),
        ("", Level.CLUSTER),
    ],
)
def test_level_of(name: str, level: Level) -> None:
    assert level_of(name) is level


def test_split_levels() -> None:
    glob, clus = split_levels(UPDATES[0].tensors)
    assert sorted(glob) == ["prompt.global"]
    assert sorted(clus) == ["head.weight", "prompt.cluster"]


def test_aggregator_registry() -> None:
    assert isinstance(make_aggregator("fedavg"), WeightedFedAvg)
    assert "fedavg" in AGGREGATORS
    with pytest.raises(ValueError, match="unknown aggregator 'median'"):
        make_aggregator("median")

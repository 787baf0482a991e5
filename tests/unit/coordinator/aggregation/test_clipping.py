"""Tests of per-client clipping: parts, the adaptive bound's rule and state, the wrapper."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedprompt_coordinator.aggregation.clipping import (
    MIN_BOUND,
    ClipBounds,
    ClipPolicy,
    NormClipping,
    bounds_from_summary,
    next_adaptive_bound,
    quantile_bound,
    with_clipping,
)
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.parts import Part, group_by_part, part_of
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_parts_follow_the_tensor_names() -> None:
    assert part_of("prompt.global") is Part.GLOBAL_PROMPT
    assert part_of("prompt.cluster") is Part.CLUSTER_PROMPT
    assert part_of("head.weight") is part_of("head.bias") is Part.HEAD
    assert part_of("lora.encoder.layer.0.query.lora_A.weight") is Part.LORA
    assert part_of("backbone.embeddings.word_embeddings.weight") is Part.BACKBONE
    assert part_of("prompt.globalish") is Part.OTHER
    assert group_by_part(["head.bias", "prompt.global", "head.weight"]) == {
        Part.GLOBAL_PROMPT: ["prompt.global"],
        Part.HEAD: ["head.bias", "head.weight"],
    }


def test_the_adaptive_rule_is_andrew_et_al_geometric_update() -> None:
    # C·exp(-η(b - gamma)): all unclipped (b = 1) shrinks, none unclipped grows, b = gamma stays
    assert next_adaptive_bound(2.0, 1.0, target_quantile=0.5, learning_rate=0.2) == (
        pytest.approx(2.0 * math.exp(-0.1))
    )
    assert next_adaptive_bound(2.0, 0.0, target_quantile=0.5, learning_rate=0.2) == (
        pytest.approx(2.0 * math.exp(0.1))
    )
    assert next_adaptive_bound(2.0, 0.5, target_quantile=0.5, learning_rate=0.2) == 2.0
    assert next_adaptive_bound(1e-9, 1.0, target_quantile=0.5, learning_rate=0.2) == MIN_BOUND


def test_the_adaptive_bound_converges_to_the_target_quantile() -> None:
    rng = np.random.default_rng(0)
    bound = 10.0
    for _ in range(400):
        norms = rng.uniform(0.0, 1.0, size=50)
        bound = next_adaptive_bound(
            bound, float(np.mean(norms <= bound)), target_quantile=0.8, learning_rate=0.2
        )
    assert bound == pytest.approx(0.8, abs=0.08)


def test_the_calibrated_bound_is_an_order_statistic_one_outlier_cannot_lift() -> None:
    assert quantile_bound(np.array([0.4, 0.5, 0.6, 1e6]), 0.5) == 0.5
    assert quantile_bound(np.array([0.4, 0.5, 0.6, 1e6]), 0.9) == 0.6  # never the outlier
    assert quantile_bound(np.array([0.0, 0.0]), 0.5) == MIN_BOUND


def test_bounds_advance_only_when_their_round_completed() -> None:
    completed = [0]
    bounds = ClipBounds(ClipPolicy(bound=1.0), rounds_completed=lambda: completed[0])
    norms = {Part.HEAD: np.array([0.1, 0.2, 0.3])}  # all under 1.0: the bound shrinks
    current, nxt = bounds.for_round(norms)
    assert current[Part.HEAD] == 1.0 and nxt[Part.HEAD] == pytest.approx(math.exp(-0.1))
    # the round failed after aggregation and is retried: the same bound again
    current, _ = bounds.for_round(norms)
    assert current[Part.HEAD] == 1.0
    completed[0] = 1  # now it completed
    current, _ = bounds.for_round(norms)
    assert current[Part.HEAD] == pytest.approx(math.exp(-0.1))


def test_bounds_resume_from_a_summary_and_fixed_bounds_never_move() -> None:
    summary = {"clip_head_next_bound": 0.25, "clip_global_prompt_bound": 3.0, "x": 1.0}
    restored = bounds_from_summary(summary)
    assert restored == {Part.HEAD: 0.25}
    current, _ = ClipBounds(ClipPolicy(bound=9.0), restored=restored).for_round(
        {Part.HEAD: np.array([1.0]), Part.GLOBAL_PROMPT: np.array([1.0])}
    )
    assert current == {Part.HEAD: 0.25, Part.GLOBAL_PROMPT: 9.0}
    fixed = ClipBounds(ClipPolicy(adaptive=False, bound=2.0, part_bounds={Part.HEAD: 0.5}))
    for _ in range(3):
        current, nxt = fixed.for_round({Part.HEAD: np.array([9.0]), Part.OTHER: np.array([0.0])})
        assert current == {Part.HEAD: 0.5, Part.OTHER: 2.0} and nxt == {}


def _model() -> FederationModel:
    return FederationModel(
        global_tensors={"prompt.global": _f32(0, 0)},
        cluster_tensors={0: {"prompt.cluster": _f32(0, 0), "head.weight": _f32(0)}},
        cluster_template={"prompt.cluster": _f32(0, 0), "head.weight": _f32(0)},
    )


def _update(
    cid: str, cluster: int, glob: list[float], clus: list[float], head: float
) -> ClientUpdate:
    return ClientUpdate(
        cid,
        cluster,
        1,
        {"prompt.global": _f32(*glob), "prompt.cluster": _f32(*clus), "head.weight": _f32(head)},
    )


def test_every_part_of_every_level_is_clipped_per_client_before_the_mean() -> None:
    updates = [
        _update("a", 0, [3, 4], [0, 1], 0.5),  # norms 5, 1, 0.5
        _update("b", 0, [0, 1], [0, 0.5], -4.0),  # norms 1, 0.5, 4
    ]
    policy = ClipPolicy(adaptive=False, bound=1.0)
    aggregator = with_clipping(WeightedFedAvg(), policy, levels=[Level.GLOBAL, Level.CLUSTER])
    out = aggregator.aggregate(_model(), updates)
    # a's global delta [3,4] is scaled to norm 1 -> [0.6, 0.8]; the mean with b's [0, 1]
    np.testing.assert_allclose(out.global_tensors["prompt.global"], [0.3, 0.9], rtol=1e-6)
    # cluster prompt: both within 1 -> plain mean; head: b's -4 clipped to -1 -> mean -0.25
    np.testing.assert_allclose(out.cluster_tensors[0]["prompt.cluster"], [0, 0.75], rtol=1e-6)
    np.testing.assert_allclose(out.cluster_tensors[0]["head.weight"], [-0.25], rtol=1e-6)
    info = aggregator.last_info
    assert info["clip_global_prompt_bound"] == 1.0
    assert info["clip_global_prompt_clipped_fraction"] == 0.5
    assert info["clip_cluster_prompt_clipped_fraction"] == 0.0
    assert info["clip_head_clipped_fraction"] == 0.5
    assert info["clip_head_norm_median"] == pytest.approx(2.25)
    # the inputs were not modified (they may be read-only memory maps)
    np.testing.assert_array_equal(updates[0].tensors["prompt.global"], [3, 4])


def test_adaptive_clipping_calibrates_on_the_first_round_across_all_clusters() -> None:
    model = _model()
    model.cluster_tensors[1] = {"prompt.cluster": _f32(0, 0), "head.weight": _f32(0)}
    updates = [
        _update("a", 0, [0, 1], [0, 1], 1.0),
        _update("b", 0, [0, 2], [0, 2], 2.0),
        _update("c", 1, [0, 3], [0, 3], 3.0),
        _update("d", 1, [0, 1000], [0, 1000], 1000.0),
    ]
    aggregator = with_clipping(WeightedFedAvg(), ClipPolicy(), levels=[Level.GLOBAL, Level.CLUSTER])
    out = aggregator.aggregate(model, updates)
    info = aggregator.last_info
    # the lower median of the round's norms [1, 2, 3, 1000] is 2, for both clusters together
    for part in ("global_prompt", "cluster_prompt", "head"):
        assert info[f"clip_{part}_bound"] == 2.0
        assert info[f"clip_{part}_clipped_fraction"] == 0.5
        assert info[f"clip_{part}_next_bound"] == pytest.approx(2.0)  # b = gamma = 0.5
    # cluster 1 (c: 3 -> 2, d: 1000 -> 2): the mean head is 2, never more than the bound
    np.testing.assert_allclose(out.cluster_tensors[1]["head.weight"], [2.0])
    np.testing.assert_allclose(out.global_tensors["prompt.global"], [0, (1 + 2 + 2 + 2) / 4])


def test_a_level_without_tensors_or_a_round_without_updates_reports_nothing() -> None:
    model = FederationModel({"prompt.global": _f32(1)}, {}, {})
    aggregator = NormClipping(
        WeightedFedAvg(), level=Level.CLUSTER, bounds=ClipBounds(ClipPolicy(bound=1.0))
    )
    out = aggregator.aggregate(model, [ClientUpdate("a", 0, 1, {"prompt.global": _f32(5)})])
    np.testing.assert_array_equal(out.global_tensors["prompt.global"], [6])
    assert not any(k.startswith("clip_") for k in aggregator.last_info)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"adaptive": False}, "fixed clipping needs"),
        ({"bound": 0.0}, "positive"),
        ({"part_bounds": {Part.HEAD: -1.0}}, "positive"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_a_policy_that_cannot_bound_is_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipPolicy(**policy)

"""Contrastive alignment weights of cluster aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.tensor_names import centroid
from fedprompt_coordinator.aggregation.contrastive import (
    alignment_scores,
    contrastive_cluster_weights,
)


def _centroids() -> dict[int, np.ndarray]:
    return {0: np.array([1.0, 0.0, 0.0]), 1: np.array([0.0, 1.0, 0.0])}


def test_a_member_planted_near_another_cluster_gets_a_lower_weight() -> None:
    rng = np.random.default_rng(0)
    own = np.tile([1.0, 0.0, 0.0], (4, 1))
    loyal = [own + rng.normal(0, 0.05, own.shape) for _ in range(2)]
    planted = np.tile([0.1, 1.0, 0.0], (4, 1))  # looks like cluster 1
    w = contrastive_cluster_weights(
        [*loyal, planted], [10, 10, 10], own=0, centroids=_centroids(), temperature=0.5
    )
    assert w.sum() == pytest.approx(1.0)
    assert w[2] < w[0] and w[2] < w[1]
    assert w[2] < 1 / 3 < w[0]


def test_weights_scale_with_sample_counts_when_alignment_is_equal() -> None:
    seg = np.tile([1.0, 0.2, 0.0], (2, 1))
    w = contrastive_cluster_weights(
        [seg, seg.copy()], [1, 3], own=0, centroids=_centroids(), temperature=0.1
    )
    np.testing.assert_allclose(w, [0.25, 0.75])


def test_scores_are_log_probabilities() -> None:
    scores = alignment_scores(
        [np.tile([1.0, 0.0, 0.0], (3, 1))], own=0, centroids=_centroids(), temperature=1.0
    )
    # cos to own = 1, to the other = 0: log(e / (e + 1))
    assert scores[0] == pytest.approx(np.log(np.e / (np.e + 1)))
    assert np.all(scores <= 0)


def test_centroid_is_the_token_mean() -> None:
    np.testing.assert_allclose(centroid(np.array([[1.0, 2.0], [3.0, 4.0]])), [2.0, 3.0])
    with pytest.raises(ValueError):
        alignment_scores([np.ones((1, 3))], own=0, centroids=_centroids(), temperature=0.0)

"""Tensor names and centroids: one definition shared by the coordinator and the clients."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.tensor_names import (
    CLUSTER_PROMPT,
    SHARED_PROMPT_KEYS,
    centroid,
    centroid_name,
    centroid_tensors,
    prompt_key,
    split_centroids,
)


def test_prompt_keys_are_built_from_segment_names() -> None:
    assert prompt_key("cluster") == CLUSTER_PROMPT == "prompt.cluster"
    assert SHARED_PROMPT_KEYS == ("prompt.global", "prompt.cluster", "head.weight", "head.bias")
    with pytest.raises(ValueError, match="unknown prompt segment"):
        prompt_key("private")


def test_centroid_is_the_float64_token_mean() -> None:
    seg = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    out = centroid(seg)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [2.0, 3.0])
    np.testing.assert_array_equal(centroid(np.array([5.0, 6.0])), [5.0, 6.0])


def test_centroid_tensors_round_trip_through_split_centroids() -> None:
    segs = {1: np.ones((3, 2), np.float32), 0: np.zeros((3, 2), np.float32)}
    tensors = centroid_tensors(segs)
    assert list(tensors) == [centroid_name(0), centroid_name(1)] == ["centroid.0", "centroid.1"]
    assert all(t.dtype == np.float32 and t.shape == (2,) for t in tensors.values())
    own = {"prompt.global": np.zeros((2, 2), np.float32)}
    centroids, rest = split_centroids({**tensors, **own})
    assert sorted(centroids) == [0, 1] and list(rest) == ["prompt.global"]
    np.testing.assert_array_equal(centroids[1], [1.0, 1.0])


def test_a_centroid_without_a_cluster_id_is_refused() -> None:
    with pytest.raises(ValueError, match="suffix must be a cluster id"):
        split_centroids({"centroid.x": np.zeros(2, np.float32)})

"""The silo's side of secure aggregation: clipping, weights, noise and encoding of a delta,
and the checks a member makes of what the coordinator sends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprompt.alignment import alignment_scores
from fedprompt.secagg import EncodingRangeError, GroupSetup, SecAggError, SecAggRefusedError
from fedprompt.tensor_names import centroid
from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_client_agent.secure_aggregation import (
    WEIGHT_CLUSTER,
    WEIGHT_GLOBAL,
    Encoding,
    SecureMember,
    clip_by_key,
    encode_update,
    member_weights,
)

MEMBERS = ("m1", "m2", "m3")
SHAPES = {"prompt.global": (2, 3), "prompt.cluster": (2, 3), "head.bias": (2,)}


def _encoding(**changes: object) -> Encoding:
    values: dict[str, object] = {
        "clip_bounds": {"global_prompt": 1.0, "cluster_prompt": 1.0, "head": 0.5},
        "clip_keys": {
            "prompt.global": "global_prompt",
            "prompt.cluster": "cluster_prompt",
            "head.bias": "head",
        },
        "weighting": "examples",
        "weight_cap": 100.0,
        "noise_std": {},
        "max_abs": 100.0,
        "temperature": 0.5,
        "global_tensors": frozenset({"prompt.global"}),
    }
    values.update(changes)
    return Encoding(**values)  # type: ignore[arg-type]


def _setup() -> GroupSetup:
    layout = tuple(sorted({**SHAPES, WEIGHT_GLOBAL: (1,), WEIGHT_CLUSTER: (1,)}.items()))
    return GroupSetup.create(
        round=1, group="cluster-0", members=MEMBERS, layout=layout, max_abs=100.0, seed=b"s" * 32
    )


def _delta(scale: float) -> dict[str, np.ndarray]:
    return {n: np.full(shape, scale, np.float32) for n, shape in SHAPES.items()}


def test_each_part_is_clipped_to_its_bound() -> None:
    clipped = clip_by_key(_delta(1.0), _encoding())
    assert np.linalg.norm(clipped["prompt.global"]) == pytest.approx(1.0)
    assert np.linalg.norm(clipped["head.bias"]) == pytest.approx(0.5)
    small = clip_by_key(_delta(0.01), _encoding())
    np.testing.assert_allclose(small["prompt.cluster"], 0.01, rtol=1e-6)
    with pytest.raises(SecAggRefusedError):
        clip_by_key({"unknown": np.zeros(2)}, _encoding())


def test_weights_examples_contrastive_unit() -> None:
    delta = clip_by_key(_delta(0.1), _encoding())
    centroids = {0: np.ones(3), 1: -np.ones(3)}
    assert member_weights(
        delta, _encoding(), num_examples=250, cluster_id=0, centroids=centroids
    ) == (100.0, 100.0)
    assert member_weights(
        delta, _encoding(weighting="unit"), num_examples=250, cluster_id=0, centroids=centroids
    ) == (1.0, 1.0)
    w_g, w_c = member_weights(
        delta,
        _encoding(weighting="contrastive"),
        num_examples=20,
        cluster_id=0,
        centroids=centroids,
    )
    proposal = centroids[0] + centroid(delta["prompt.cluster"])
    score = alignment_scores([proposal], own=0, centroids=centroids, temperature=0.5)[0]
    assert w_g == 20.0
    assert w_c == pytest.approx(20.0 * math.exp(score))
    assert 0 < w_c < w_g


def test_encoding_weighs_adds_noise_and_refuses_out_of_range_values() -> None:
    setup = _setup()
    point = setup.fixed_point
    encoded = encode_update(
        _delta(0.01), _encoding(), setup, num_examples=4, cluster_id=0, centroids={}
    )
    assert all(v.dtype == np.uint64 for v in encoded.values())
    decoded = {k: point.decode(v) for k, v in encoded.items()}
    np.testing.assert_allclose(decoded["prompt.global"], 0.04, atol=1e-9)
    assert decoded[WEIGHT_GLOBAL][0] == pytest.approx(4.0)
    noisy = encode_update(
        _delta(0.01),
        _encoding(noise_std={"global_prompt": 0.5}),
        setup,
        num_examples=4,
        cluster_id=0,
        centroids={},
        rng=np.random.default_rng(0),
    )
    assert not np.allclose(point.decode(noisy["prompt.global"]), 0.04)
    np.testing.assert_allclose(point.decode(noisy["prompt.cluster"]), 0.04, atol=1e-9)
    with pytest.raises(EncodingRangeError):  # weight 100 x bound 1 > max_abs 10
        encode_update(
            _delta(1.0),
            _encoding(max_abs=10.0),
            setup,
            num_examples=1000,
            cluster_id=0,
            centroids={},
        )
    with pytest.raises(SecAggRefusedError):  # a tensor the layout does not hold
        encode_update(
            {**_delta(0.1), "extra": np.zeros(2)},
            _encoding(clip_keys={**_encoding().clip_keys, "extra": "head"}),
            setup,
            num_examples=1,
            cluster_id=0,
            centroids={},
        )


def _keys_task(setup: GroupSetup, neighbours: tuple[str, ...]) -> coordinator_pb2.SecAggTask:
    return coordinator_pb2.SecAggTask(
        group=setup.group,
        setup=coordinator_pb2.SecAggSetup(
            members=list(setup.members),
            seed=setup.seed,
            degree=setup.degree,
            threshold=setup.threshold,
            min_survivors=setup.min_survivors,
            layout=[
                common_pb2.TensorSpec(name=n, dtype="U64", shape=list(s)) for n, s in setup.layout
            ],
            fraction_bits=setup.fraction_bits,
            neighbours=list(neighbours),
        ),
    )


def test_member_checks_the_setup_it_receives() -> None:
    setup = _setup()
    good = _keys_task(setup, setup.neighbours("m1"))
    member = SecureMember("m1", 1, good)
    assert member.keys().keys.member == "m1"
    with pytest.raises(SecAggRefusedError):  # announced neighbours differ from the graph
        SecureMember("m1", 1, _keys_task(setup, ("m2",)))
    with pytest.raises(SecAggError):  # not a member
        SecureMember("zz", 1, good)
    bad = _keys_task(setup, setup.neighbours("m1"))
    bad.setup.threshold = 1
    with pytest.raises(SecAggError):  # a threshold below the strict majority
        SecureMember("m1", 1, bad)
    other_group = coordinator_pb2.SecAggTask(group="cluster-9")
    with pytest.raises(SecAggError):
        member.shares(other_group)


def test_encoding_from_proto_refuses_what_it_cannot_honour() -> None:
    msg = coordinator_pb2.SecAggEncoding(
        clip_bounds={"head": 1.0},
        clip_keys={"head.bias": "head"},
        weighting="examples",
        weight_cap=10.0,
        max_abs=10.0,
    )
    assert Encoding.from_proto(msg).clip_bounds == {"head": 1.0}
    msg.weighting = "whatever"
    with pytest.raises(SecAggRefusedError):
        Encoding.from_proto(msg)
    msg.weighting = "unit"
    msg.clip_keys["prompt.global"] = "global_prompt"  # no bound for it
    with pytest.raises(SecAggRefusedError):
        Encoding.from_proto(msg)

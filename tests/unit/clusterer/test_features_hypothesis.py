"""Property test: every metadata document the shared validator accepts, the clusterer uses.

The coordinator refuses at Join what :mod:`fedprompt.client_input` refuses; whatever it
accepts must then never make a clustering request fail. Generated members' metadata
(arbitrary JSON objects, most of them hostile) either is refused with INVALID_ARGUMENT or
turns into a finite feature matrix that HDBSCAN clusters.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedprompt.client_input import parse_metadata
from fedprompt.errors import InvalidArgumentError
from fedprompt.v1 import clusterer_pb2
from fedprompt_clusterer import serde
from fedprompt_clusterer.clustering import MetadataClusterer
from fedprompt_clusterer.features import build_features

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2.0**53, -(2.0**53)])
    | st.text(max_size=40)
)
values = (
    scalars
    | st.lists(scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
)
keys = st.sampled_from(["region", "beds", "type", "lang", "n"]) | st.text(max_size=8)
documents = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents, min_size=1, max_size=6))
def test_accepted_metadata_always_makes_finite_features(docs: list[dict[str, object]]) -> None:
    accepted = []
    for doc in docs:
        try:
            accepted.append(parse_metadata(json.dumps(doc, allow_nan=True)))
        except InvalidArgumentError:
            continue
    ids = [f"c{i}" for i in range(len(accepted))]
    features = build_features(ids, accepted)
    assert features.values.shape[0] == len(accepted)
    assert np.isfinite(features.values).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents, min_size=2, max_size=6))
def test_a_request_of_accepted_members_always_clusters(docs: list[dict[str, object]]) -> None:
    members = []
    for i, doc in enumerate(docs):
        text = json.dumps(doc, allow_nan=True)
        try:
            parse_metadata(text)
        except InvalidArgumentError:
            continue
        members.append(clusterer_pb2.MemberMetadata(client_id=f"c{i}", metadata_json=text))
    assume(members)
    request = clusterer_pb2.ClusterRequest(members=members, min_cluster_size=2, min_samples=1)
    job = serde.cluster_request_from_proto(request)  # the clusterer's own check agrees
    result = MetadataClusterer().cluster(job.members, previous=job.previous, settings=job.settings)
    assert set(result.assignment) == {m.client_id for m in members}

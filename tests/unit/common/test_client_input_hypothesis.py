"""Property tests (hypothesis) of the shared client-input validator.

Whatever a client sends (any JSON value, any text, any metrics, any count) is either
accepted, and then in the normal form the coordinator stores, or refused with
:class:`~fedprompt.errors.InvalidArgumentError`; never any other exception. That the
clusterer's feature code takes every accepted metadata document is checked beside the
clusterer (``tests/unit/clusterer/test_features_hypothesis.py``).
"""

from __future__ import annotations

import contextlib
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprompt.client_input import (
    MAX_METADATA_BYTES,
    MetadataValue,
    canonical_metadata_json,
    check_count,
    check_metrics,
    check_text,
    parse_metadata,
)
from fedprompt.errors import InvalidArgumentError

MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=70), inner, max_size=4)
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(st.text(max_size=70), json_values, max_size=70)


def _dumps(value: object) -> str:
    return json.dumps(value, allow_nan=True)  # NaN/Infinity on purpose: clients may send them


def _check_accepted(parsed: dict[str, MetadataValue]) -> None:
    for key, value in parsed.items():
        assert isinstance(key, str) and 0 < len(key) <= 64
        assert isinstance(value, str | bool | int | float)
        if isinstance(value, float):
            assert math.isfinite(value)
    normal = canonical_metadata_json(parsed)
    assert len(normal.encode("utf-8")) <= MAX_METADATA_BYTES
    assert parse_metadata(normal) == parsed  # the stored form is accepted again, unchanged


@MANY
@given(json_objects)
def test_any_json_object_is_accepted_or_refused_with_invalid_argument(
    doc: dict[str, object],
) -> None:
    try:
        parsed = parse_metadata(_dumps(doc))
    except InvalidArgumentError:
        return
    _check_accepted(parsed)


@MANY
@given(json_values)
def test_any_json_value_is_accepted_or_refused_with_invalid_argument(value: object) -> None:
    try:
        parsed = parse_metadata(_dumps(value))
    except InvalidArgumentError:
        return
    assert isinstance(value, dict) or value is None or value == ""
    _check_accepted(parsed)


@MANY
@given(st.text(max_size=400) | st.text(alphabet='{}[]",:\\ 0123456789.eE-+natrufl', max_size=400))
def test_any_text_is_accepted_or_refused_with_invalid_argument(text: str) -> None:
    try:
        parsed = parse_metadata(text)
    except InvalidArgumentError:
        return
    _check_accepted(parsed)


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=10))
@settings(max_examples=60, deadline=None)
def test_deeply_nested_documents_are_refused_never_a_recursion_error(depth: int, k: int) -> None:
    text = '{"a":' + "[" * (depth * k) + "]" * (depth * k) + "}"
    try:
        parsed = parse_metadata(text)
    except InvalidArgumentError:
        return
    _check_accepted(parsed)


@MANY
@given(
    st.dictionaries(
        st.text(max_size=80), st.floats(allow_nan=True, allow_infinity=True), max_size=80
    )
)
def test_any_metrics_are_floats_or_refused(metrics: dict[str, float]) -> None:
    try:
        checked = check_metrics(metrics)
    except InvalidArgumentError:
        return
    assert all(math.isfinite(v) for v in checked.values()) and len(checked) <= 64


@MANY
@given(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=300))
def test_counts_and_texts_are_accepted_in_range_or_refused(value: int, text: str) -> None:
    try:
        assert 1 <= check_count(value, field="n", maximum=10**9) <= 10**9
    except InvalidArgumentError:
        assert not 1 <= value <= 10**9
    with contextlib.suppress(InvalidArgumentError):
        assert len(check_text(text, field="device")) <= 256

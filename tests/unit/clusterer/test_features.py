"""Tests of the metadata feature encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt.v1 import clusterer_pb2
from fedprompt_clusterer import serde
from fedprompt_clusterer.features import build_features


def test_numeric_fields_are_standardised_in_sorted_order() -> None:
    features = build_features(
        ["a", "b", "c"], [{"z": -1, "y": 1.0}, {"z": 0, "y": 2.0}, {"z": 1, "y": 3.0}]
    )
    assert features.names == ("log1p(y)", "z")
    assert features.values.shape == (3, 2)
    np.testing.assert_allclose(features.values.mean(axis=0), 0.0, atol=1e-12)
    assert features.values[:, 1].std() == pytest.approx(1.0)  # z is standardised
    np.testing.assert_allclose(features.values[:, 1], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    # log1p(y) is centred only: log1p(1), log1p(2), log1p(3) minus their mean
    logged = np.log1p([1.0, 2.0, 3.0])
    np.testing.assert_allclose(features.values[:, 0], logged - logged.mean())


def test_non_negative_numbers_are_log_transformed_and_centred() -> None:
    features = build_features(["a", "b", "c"], [{"n": 0}, {"n": 99}, {"n": 9999}])
    assert features.names == ("log1p(n)",)
    # log1p makes 0, 99, 9999 equally spaced (0, ~4.6, ~9.2); one unit is a factor of e.
    np.testing.assert_allclose(features.values[:, 0], [-4.6052, 0.0, 4.6052], atol=1e-3)


def test_near_equal_sizes_stay_near_equal() -> None:
    # standardising would spread 811..814 records to about ±1.3, as far apart as a specialty
    features = build_features(["a", "b", "c"], [{"n": 811}, {"n": 812}, {"n": 814}])
    assert np.ptp(features.values[:, 0]) < 0.01


def test_constant_numeric_column_is_zero() -> None:
    features = build_features(["a", "b"], [{"n": 5, "m": -3}, {"n": 5, "m": -3}])
    np.testing.assert_array_equal(features.values, np.zeros((2, 2)))


def test_categorical_fields_are_one_hot() -> None:
    features = build_features(
        ["a", "b", "c"],
        [
            {"specialty": "pain", "teaching": True},
            {"specialty": "psychiatry", "teaching": False},
            {"specialty": "pain", "teaching": True},
        ],
    )
    assert features.names == (
        "specialty=pain",
        "specialty=psychiatry",
        "teaching=false",
        "teaching=true",
    )
    np.testing.assert_array_equal(features.values, [[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1]])


def test_missing_numeric_value_gets_the_column_mean() -> None:
    features = build_features(["a", "b", "c"], [{"t": -2.0}, {}, {"t": 2.0}])
    assert features.names == ("t",)
    np.testing.assert_allclose(features.values[:, 0], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])


def test_missing_categorical_value_gets_its_own_category() -> None:
    features = build_features(["a", "b", "c"], [{"region": "eu"}, {}, {"region": None}])
    assert features.names == ("region=eu", "region=<missing>")
    np.testing.assert_array_equal(features.values, [[1, 0], [0, 1], [0, 1]])


def test_mixed_numbers_and_text_are_categorical() -> None:
    features = build_features(["a", "b", "c"], [{"size": "large"}, {"size": 5}, {"size": True}])
    assert features.names == ("size=true", "size=large", "size=5")
    np.testing.assert_array_equal(features.values, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_no_fields_gives_an_empty_matrix() -> None:
    features = build_features(["a", "b"], [{}, {}])
    assert features.values.shape == (2, 0)
    assert features.names == ()


def test_column_order_does_not_depend_on_member_or_key_order() -> None:
    first = build_features(["a", "b"], [{"x": 1, "s": "u"}, {"s": "v", "x": 2}])
    second = build_features(["b", "a"], [{"x": 2, "s": "v"}, {"s": "u", "x": 1}])
    assert first.names == second.names
    np.testing.assert_allclose(first.values, second.values[::-1])


def _member(client_id: str, text: str) -> dict[str, object]:
    """A member's metadata as the clusterer decodes it from a request."""
    message = clusterer_pb2.MemberMetadata(client_id=client_id, metadata_json=text)
    return dict(serde.member_from_proto(message).metadata)


def test_member_metadata_accepts_a_flat_object() -> None:
    parsed = _member(
        "c1", '{"specialty": "pain", "beds": 12, "ratio": 0.5, "teaching": false, "note": null}'
    )
    assert parsed == {"specialty": "pain", "beds": 12, "ratio": 0.5, "teaching": False}
    assert _member("c1", "") == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"pain"', "must be a JSON object"),
        ('{"sites": {"a": 1}}', "flat JSON object"),
        ('{"sites": [1, 2]}', "flat JSON object"),
        ('{"x": NaN}', "non-finite"),
        ('{"x": 1e400}', "'x'"),
    ],
)
def test_member_metadata_rejects_bad_input_naming_the_client(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        _member("clinic-7", text)
    assert "clinic-7" in info.value.message
    assert fragment in info.value.message


def test_error_messages_do_not_echo_metadata_values() -> None:
    for text in [
        '{"secret": {"value": "do-not-echo"}}',
        '{"secret": "do-not-echo' + "x" * 300 + '"}',
    ]:
        with pytest.raises(InvalidArgumentError) as info:
            _member("c1", text)
        assert "do-not-echo" not in info.value.message


def test_build_features_rejects_nested_values_naming_client_and_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'tags'.*'c2'"):
        build_features(["c1", "c2"], [{"tags": "a"}, {"tags": ["a", "b"]}])


def test_build_features_rejects_huge_integers() -> None:
    with pytest.raises(InvalidArgumentError, match="beyond"):
        build_features(["c1"], [{"n": 10**400}])


def test_numbers_near_the_float_limit_are_scaled_without_overflow() -> None:
    features = build_features(["a", "b", "c"], [{"x": -1e308}, {"x": 1e308}, {"x": 1e308}])
    assert np.isfinite(features.values).all()
    np.testing.assert_allclose(
        features.values[:, 0], [-math.sqrt(2), 1 / math.sqrt(2), 1 / math.sqrt(2)]
    )

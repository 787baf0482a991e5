"""The shared validator of client input: every rule, every refusal a coded INVALID_ARGUMENT."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from fedprompt.client_input import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    MAX_METRICS,
    MAX_TENSOR_NAMES,
    canonical_metadata_json,
    check_client_id,
    check_count,
    check_metadata,
    check_metrics,
    check_names,
    check_text,
    parse_metadata,
)
from fedprompt.errors import InvalidArgumentError


def _refused(fragment: str) -> pytest.RaisesContext[InvalidArgumentError]:
    return pytest.raises(InvalidArgumentError, match=fragment)


def test_client_ids_follow_the_certificate_rule_and_reserved_names_are_refused() -> None:
    assert check_client_id("hospital-a.eu_1") == "hospital-a.eu_1"
    for bad in ["", "-a", "a b", "a/b", "x" * 129, "é"]:
        with _refused("client_id must be 1-128"):
            check_client_id(bad)
    for reserved in ["ca", "coordinator", "clusterer", "operator", "Operator"]:
        with _refused("reserved"):
            check_client_id(reserved)


@pytest.mark.parametrize("value", [0, -1, 10**9 + 1, 2**63, 2**64 - 1])
def test_counts_out_of_range_are_refused_with_the_bounds(value: int) -> None:
    with _refused(r"num_train_examples must be between 1 and 1000000000") as info:
        check_count(value, field="num_train_examples", maximum=10**9)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_counts_in_range_and_zero_where_allowed() -> None:
    assert check_count(1, field="n", maximum=10) == 1
    assert check_count(10, field="n", maximum=10) == 10
    assert check_count(0, field="n", maximum=10, minimum=0) == 0
    with _refused("must be an integer"):
        check_count(True, field="n", maximum=10)


def test_text_fields_are_bounded_and_free_of_control_characters() -> None:
    assert check_text("cuda:0", field="device") == "cuda:0"
    assert check_text("", field="device") == ""
    with _refused("device is longer than 256 characters"):
        check_text("x" * 257, field="device")
    for bad in ["a\nb", "a\x00b", "\x1b[31m", "a\x85b", "\ud800"]:
        with _refused("control characters"):
            check_text(bad, field="device")


def test_names_are_counted_and_each_checked() -> None:
    assert check_names(["a", "b"], field="t") == ("a", "b")
    with _refused("more than"):
        check_names(["a"] * (MAX_TENSOR_NAMES + 1), field="t")
    with _refused("empty name"):
        check_names([""], field="t")
    with _refused("longer than 256"):
        check_names(["x" * 257], field="t")


def test_metrics_become_floats_and_bad_ones_are_refused() -> None:
    assert check_metrics({"loss": 1, "accuracy": 0.5}) == {"loss": 1.0, "accuracy": 0.5}
    assert check_metrics({}) == {}
    for bad, fragment in [
        ({"loss": float("nan")}, "'loss' is not finite"),
        ({"loss": float("inf")}, "'loss' is not finite"),
        ({"": 1.0}, "metric names must not be empty"),
        ({"x" * 65: 1.0}, "longer than 64"),
        ({"a\nb": 1.0}, "control characters"),
        ({f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}, f"at most {MAX_METRICS} metrics"),
    ]:
        with _refused(fragment) as info:
            check_metrics(bad)
        assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_flat_metadata_parses_nulls_dropped_and_normalises() -> None:
    parsed = parse_metadata(
        '{"region": "eu", "beds": 120, "ratio": 0.5, "public": true, "x": null}'
    )
    assert parsed == {"region": "eu", "beds": 120, "ratio": 0.5, "public": True}
    assert parse_metadata("") == {} and parse_metadata("  ") == {}
    assert canonical_metadata_json({"b": "ü", "a": 1}) == '{"a": 1, "b": "ü"}'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "must be a JSON object, not an array"),
        ('"text"', "must be a JSON object, not a string"),
        ("3", "must be a JSON object, not a number"),
        ('{"a": {"b": 1}}', "flat JSON object"),
        ('{"a": [1]}', "flat JSON object"),
        ('{"a": NaN}', "non-finite number NaN"),
        ('{"a": -Infinity}', "non-finite number -Infinity"),
        ('{"a": 1e999}', "not a finite number"),
        ('{"a": 9007199254740993}', "beyond"),
        ('{"a": ' + "9" * 5000 + "}", "out of range"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": "\\ud800"}', "lone surrogates"),
        ('{"": 1}', "not a non-empty string"),
        ('{"' + "k" * 65 + '": 1}', "longer than 64"),
        ('{"a": "' + "v" * 257 + '"}', "longer than 256"),
        ('{"a": 1', "not valid JSON"),
        ("{" + ",".join(f'"k{i}": 1' for i in range(MAX_METADATA_KEYS + 1)) + "}", "more than 64"),
    ],
)
def test_metadata_that_the_clusterer_cannot_use_is_refused(text: str, fragment: str) -> None:
    with _refused(fragment) as info:
        parse_metadata(text)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
    assert "do-not-echo" not in info.value.message


def test_deep_nesting_is_refused_before_parsing_without_recursion() -> None:
    for text in ["[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000, "[" * 100_000]:
        with _refused("flat JSON object|not an array|over"):
            parse_metadata(text)


def test_brackets_inside_strings_are_text_not_nesting() -> None:
    assert parse_metadata('{"a": "[{x}]", "b\\"{": "\\\\["}') == {"a": "[{x}]", 'b"{': "\\["}


def test_size_is_bounded_before_and_after_normalisation() -> None:
    with _refused(f"over {MAX_METADATA_BYTES} bytes"):
        parse_metadata(json.dumps({"a": "x" * MAX_METADATA_BYTES}))
    # 64 fields of 1e15 (4 bytes each as sent) normalise to 1000000000000000.0 (18 bytes):
    # still far under the limit, so the rule after normalisation does not bite honest input
    doc = {f"k{i}": 1e15 for i in range(64)}
    assert len(canonical_metadata_json(check_metadata(doc))) < MAX_METADATA_BYTES
    huge = {f"k{i:02d}" + "x" * 60: "é" * 256 for i in range(64)}  # ~ 64 x (66 + 514) bytes
    with _refused("once normalised"):
        check_metadata(huge)


def test_values_are_finite_scalars_in_code_too() -> None:
    assert check_metadata({"a": 1, "b": None}) == {"a": 1}
    for bad in [{"a": math.nan}, {"a": math.inf}, {"a": [1]}, {"a": {"b": 1}}, {"a": 2**60}]:
        with pytest.raises(InvalidArgumentError):
            check_metadata(bad)
    with _refused("not a non-empty string"):
        check_metadata({1: "x"})  # type: ignore[dict-item]

"""A silo with a valid certificate abuses every field it sends; each abuse is refused cleanly.

Mallory holds a real silo certificate (made by the ``fedprompt certs`` code) and speaks to a
coordinator served for real over mutual TLS, through stubs generated from our ``.proto``.
Every field of Join, of an upload's header and of ReportMetrics is abused (oversized,
negative or zero, 2^63, NaN, 1e999, nested and 5,000-deep JSON, huge strings): each gets
``INVALID_ARGUMENT`` with a message naming the field, nothing of it is stored, the honest
silos still join, train, report and read the status, and the coordinator logs no
traceback and no error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from fedprompt.codec import encode_tensors
from fedprompt.coordinator_client import CoordinatorClient
from fedprompt.v1 import common_pb2, coordinator_pb2

Code = grpc.StatusCode
TIMEOUT = 10.0
FINGERPRINT = "fp-hostile"
INITIAL = {
    "prompt.global": np.zeros((2, 3), dtype=np.float32),
    "prompt.cluster": np.zeros((1, 3), dtype=np.float32),
    "head.weight": np.zeros((2, 3), dtype=np.float32),
}
HONEST_METADATA = json.dumps({"region": "eu", "beds": 120})
MIB = 1024 * 1024


def _capabilities() -> common_pb2.ClientCapabilities:
    return common_pb2.ClientCapabilities(
        device="cpu",
        model_name="tiny",
        model_fingerprint=FINGERPRINT,
        trainable_tensors=sorted(INITIAL),
        strategy="clustered",
    )


def _join(client_id: str) -> coordinator_pb2.JoinRequest:
    return coordinator_pb2.JoinRequest(
        client_id=client_id,
        metadata_json=HONEST_METADATA,
        capabilities=_capabilities(),
        num_train_examples=40,
    )


def _metadata(text: str) -> Callable[[coordinator_pb2.JoinRequest], None]:
    def change(request: coordinator_pb2.JoinRequest) -> None:
        request.metadata_json = text

    return change


def _examples(value: int) -> Callable[[coordinator_pb2.JoinRequest], None]:
    def change(request: coordinator_pb2.JoinRequest) -> None:
        request.num_train_examples = value

    return change


def _capability(name: str, value: Any) -> Callable[[coordinator_pb2.JoinRequest], None]:
    def change(request: coordinator_pb2.JoinRequest) -> None:
        if name == "trainable_tensors":
            del request.capabilities.trainable_tensors[:]
            request.capabilities.trainable_tensors.extend(value)
        else:
            setattr(request.capabilities, name, value)

    return change


#: (attack, how the request is changed, what the refusal's message says)
JOIN_ATTACKS: list[tuple[str, Callable[[coordinator_pb2.JoinRequest], None], str]] = [
    ("0 examples", _examples(0), "num_train_examples must be between 1 and 1000000000"),
    ("2^63 examples", _examples(2**63), "num_train_examples must be between 1 and 1000000000"),
    ("2^64-1 examples", _examples(2**64 - 1), "num_train_examples must be between 1 and"),
    ("max+1 examples", _examples(10**9 + 1), "num_train_examples must be between 1 and"),
    ("nested object", _metadata('{"a": {"b": 1}}'), "metadata_json must be a flat JSON object"),
    ("list value", _metadata('{"a": [1, 2]}'), "metadata_json must be a flat JSON object"),
    ("top-level list", _metadata("[1, 2]"), "must be a JSON object, not an array"),
    ("a string", _metadata('"eu"'), "must be a JSON object, not a string"),
    ("NaN", _metadata('{"a": NaN}'), "non-finite number NaN"),
    ("Infinity", _metadata('{"a": -Infinity}'), "non-finite number -Infinity"),
    ("1e999", _metadata('{"a": 1e999}'), "field 'a' of metadata_json is not a finite number"),
    ("2^53+1", _metadata('{"a": 9007199254740993}'), "integer beyond"),
    ("5000 digits", _metadata('{"a": ' + "9" * 5000 + "}"), "number out of range"),
    ("5000-deep", _metadata('{"a":' + "[" * 5000 + "]" * 5000 + "}"), "must be a flat JSON object"),
    ("2000-deep objects", _metadata('{"a":' * 2000 + "1" + "}" * 2000), "must be a flat JSON"),
    ("5000-deep list", _metadata("[" * 5000 + "]" * 5000), "not an array"),
    ("1 MiB", _metadata(json.dumps({"a": "x" * MIB})), "metadata_json is over 16384 bytes"),
    ("65 fields", _metadata(json.dumps({f"k{i}": i for i in range(65)})), "more than 64 fields"),
    ("duplicate field", _metadata('{"a": 1, "a": 2}'), "a field name appears twice"),
    ("long value", _metadata(json.dumps({"a": "v" * 257})), "longer than 256 characters"),
    ("long name", _metadata(json.dumps({"k" * 65: 1})), "longer than 64 characters"),
    ("lone surrogate", _metadata('{"a": "\\udc00"}'), "control characters or lone surrogates"),
    ("not JSON", _metadata("{nope"), "metadata_json is not valid JSON"),
    ("1 MiB device", _capability("device", "x" * MIB), "capabilities.device is longer than 256"),
    ("escape codes", _capability("device", "\x1b[2J"), "capabilities.device contains control"),
    ("100 KiB model", _capability("model_name", "m" * 102_400), "capabilities.model_name is"),
    ("100 KiB fp", _capability("model_fingerprint", "f" * 102_400), "model_fingerprint is longer"),
    ("no fingerprint", _capability("model_fingerprint", ""), "model_fingerprint is required"),
    ("100 KiB strategy", _capability("strategy", "s" * 102_400), "capabilities.strategy is"),
    ("5000 tensors", _capability("trainable_tensors", ["t"] * 5000), "more than 4096 names"),
    ("1000-char tensor", _capability("trainable_tensors", ["t" * 1000]), "longer than 256"),
]


def _no_traceback_or_error(caplog: pytest.LogCaptureFixture) -> None:
    """The coordinator logged refusals at INFO at most: no traceback, no error."""
    for record in caplog.records:
        assert record.exc_info is None, f"traceback logged: {record.getMessage()}"
        assert record.levelno < logging.ERROR, f"error logged: {record.getMessage()}"
    assert "Traceback" not in caplog.text


async def _refused(call: Any, fragment: str, attack: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = info.value.details() or ""
    assert info.value.code() is Code.INVALID_ARGUMENT, f"{attack}: {info.value.code()} {details}"
    assert fragment in details, f"{attack}: {details!r}"
    return details


@pytest.mark.asyncio
async def test_every_join_field_abused_is_invalid_argument_and_honest_silos_carry_on(
    serve_hostile: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve_hostile() as coordinator:
        async with coordinator.channel("mallory") as channel:
            stub = coordinator.stub(channel)
            for attack, change, fragment in JOIN_ATTACKS:
                request = _join("mallory")
                change(request)
                details = await _refused(stub.Join(request, timeout=TIMEOUT), fragment, attack)
                assert "x" * 100 not in details and "do-not-echo" not in details
            assert coordinator.federation.status().clients_total == 0
            assert coordinator.state.clients() == {}  # nothing of it was stored
        for silo in ("honest-a", "honest-b", "mallory"):
            async with coordinator.channel(silo) as channel:
                reply = await coordinator.stub(channel).Join(_join(silo), timeout=TIMEOUT)
                assert reply.accepted
        async with coordinator.channel("operator") as channel:
            status = await coordinator.stub(channel).GetStatus(
                coordinator_pb2.GetStatusRequest(), timeout=TIMEOUT
            )
        assert [c.client_id for c in status.clients] == ["honest-a", "honest-b", "mallory"]
        assert {c.num_train_examples for c in status.clients} == {40}
        assert {c.metadata_json for c in status.clients} == {'{"beds": 120, "region": "eu"}'}
    _no_traceback_or_error(caplog)


def _abused_upload(
    client: CoordinatorClient, round_id: int, kind: Any, payload: bytes, fields: dict[str, Any]
) -> Any:
    """An upload whose header is honest but for ``fields`` (counts, ``train_metrics``)."""
    header = client.update_header(round_id=round_id, kind=kind, payload=payload, num_examples=40)
    for name, value in fields.items():
        if name == "train_metrics":
            header.train_metrics.update(value)
        else:
            setattr(header, name, value)
    return client.send_update(header, payload)


async def _next_task(tasks: Any) -> coordinator_pb2.Task:
    task: coordinator_pb2.Task = await asyncio.wait_for(anext(tasks), TIMEOUT)
    return task


@pytest.mark.asyncio
async def test_every_upload_header_and_metrics_field_abused_is_invalid_argument(
    serve_hostile: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve_hostile(min_clients=3, expected_clients=3) as coordinator:
        names = ("honest-a", "honest-b", "mallory")
        channels = {n: coordinator.channel(n) for n in names}
        clients = {n: CoordinatorClient(channels[n], n, call_timeout_s=TIMEOUT) for n in names}
        try:
            for client in clients.values():
                await client.join(
                    metadata_json=HONEST_METADATA,
                    capabilities=_capabilities(),
                    num_train_examples=40,
                )
            mallory = clients["mallory"]
            payload = encode_tensors(INITIAL)
            # the initial model's header: its count is unused, but never out of range
            for attack, fields, fragment in [
                ("initial 2^63", {"num_examples": 2**63}, "num_examples must be between 0 and"),
                ("initial NaN", {"train_metrics": {"loss": float("nan")}}, "'loss' is not finite"),
            ]:
                call = _abused_upload(
                    mallory, 0, coordinator_pb2.UPDATE_KIND_INITIAL, payload, fields
                )
                await _refused(call, fragment, attack)
            await clients["honest-a"].upload(
                round_id=0,
                kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                payload=payload,
                num_examples=0,
            )
            streams = {n: c.tasks() for n, c in clients.items()}
            tasks = {n: await _next_task(s) for n, s in streams.items()}
            assert {t.kind for t in tasks.values()} == {coordinator_pb2.TASK_KIND_TRAIN}
            round_id = tasks["mallory"].round
            delta = encode_tensors(
                {k: np.full(v.shape, 0.1, np.float32) for k, v in INITIAL.items()}
            )
            too_many = {f"m{i}": 0.0 for i in range(65)}
            header_attacks: list[tuple[str, dict[str, Any], str]] = [
                ("delta 0", {"num_examples": 0}, "num_examples must be between 1 and 1000000000"),
                ("delta 2^63", {"num_examples": 2**63}, "num_examples must be between 1 and"),
                ("delta 2^64-1", {"num_examples": 2**64 - 1}, "num_examples must be between 1"),
                ("delta max+1", {"num_examples": 10**9 + 1}, "num_examples must be between 1"),
                ("train NaN", {"train_metrics": {"loss": float("nan")}}, "'loss' is not finite"),
                ("train 1e999", {"train_metrics": {"acc": float("inf")}}, "'acc' is not finite"),
                ("train 65", {"train_metrics": too_many}, "at most 64 metrics per report"),
                ("train long name", {"train_metrics": {"n" * 65: 1.0}}, "longer than 64"),
                ("train no name", {"train_metrics": {"": 1.0}}, "must not be empty"),
                ("train escape", {"train_metrics": {"\x1b[2J": 1.0}}, "control characters"),
            ]
            for attack, fields, fragment in header_attacks:
                call = _abused_upload(
                    mallory, round_id, coordinator_pb2.UPDATE_KIND_DELTA, delta, fields
                )
                await _refused(call, fragment, attack)
            for attack, metrics, fragment in [
                ("report NaN", {"accuracy": float("nan")}, "'accuracy' is not finite"),
                ("report -inf", {"loss": float("-inf")}, "'loss' is not finite"),
                ("report 65", too_many, "at most 64 metrics per report"),
                ("report long name", {"a" * 65: 0.5}, "longer than 64"),
                ("report newline", {"acc\nuracy": 0.5}, "control characters"),
            ]:
                call = mallory.report_metrics(
                    round_id=round_id, phase=coordinator_pb2.METRICS_PHASE_TRAIN, metrics=metrics
                )
                await _refused(call, fragment, attack)
            # nothing of it reached the round: every client now uploads honestly
            current = coordinator.federation._progress.current
            assert current is not None and current.updates == {} and current.train_metrics == {}
            for client in clients.values():
                reply = await client.upload(
                    round_id=round_id,
                    kind=coordinator_pb2.UPDATE_KIND_DELTA,
                    payload=delta,
                    num_examples=40,
                    train_metrics={"loss": 0.5},
                )
                assert reply.accepted and not reply.duplicate
            for name, stream in streams.items():
                task = await _next_task(stream)
                assert task.kind == coordinator_pb2.TASK_KIND_EVALUATE
                await clients[name].report_metrics(
                    round_id=round_id,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.75},
                )
            for stream in streams.values():
                assert (await _next_task(stream)).kind == coordinator_pb2.TASK_KIND_FINISHED
            async with coordinator.channel("operator") as channel:
                status = await coordinator.stub(channel).GetStatus(
                    coordinator_pb2.GetStatusRequest(), timeout=TIMEOUT
                )
            (record,) = status.rounds
            assert record.status == "completed"
            assert [
                (c.client_id, c.num_examples, dict(c.train_metrics)) for c in record.clients
            ] == [(n, 40, {"loss": 0.5}) for n in names]
            assert record.summary["accuracy_mean"] == pytest.approx(0.75)
        finally:
            for channel in channels.values():
                await channel.close()
    _no_traceback_or_error(caplog)


@pytest.mark.asyncio
async def test_a_message_over_the_limit_is_resource_exhausted_and_logs_no_traceback(
    serve_hostile: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A message over gRPC's 2 MiB limit never reaches a check; the coordinator carries on."""
    caplog.set_level(logging.INFO)
    async with serve_hostile() as coordinator, coordinator.channel("mallory") as channel:
        stub = coordinator.stub(channel)
        request = _join("mallory")
        request.capabilities.device = "x" * (3 * MIB)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(request, timeout=TIMEOUT)
        assert info.value.code() is Code.RESOURCE_EXHAUSTED
        assert (await stub.Join(_join("mallory"), timeout=TIMEOUT)).accepted
    _no_traceback_or_error(caplog)

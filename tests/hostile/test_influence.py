"""A member with a valid identity cannot take over the aggregate (issue 12, bounded influence).

Over real gRPC (an in-process aio coordinator on 127.0.0.1, port 0, wired like
``fedprompt_coordinator.__main__.serve``), with the coordinator's *default* aggregation
settings, three honest silos and one malicious silo (``mallory``) that declares the largest
sample count (10^9, at Join and in the upload header) and uploads deltas at the hard
``max_update_l2_norm`` limit in a crafted direction. Every level (global prompt, cluster
prompt, head) must then move by at most the clip bound, mallory's share of any mean must
stay at or under the configured cap, no honest member's share may shrink by more than that
cap allows, the robust rules must keep each coordinate inside the honest updates' range, and
the honest silos must finish every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.server import CLIENT_ID_METADATA_KEY, create_channel
from fedprompt.transfer import payload_messages
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator.config import DEFAULT_MAX_UPDATE_L2_NORM
from fedprompt_coordinator.federation import Federation

from .conftest import serve_coordinator

SERVICE = "fedprompt.v1.Coordinator"
TIMEOUT_S = 20.0
ROUNDS = 2
#: The largest sample count a client may declare (the edge validator's max_client_examples).
MAX_EXAMPLES = 10**9
#: Every shared tensor is 2 x 4: one coordinate per member in the share test.
SHAPE = (2, 4)
TENSORS = ("head.weight", "prompt.cluster", "prompt.global")
#: The parts the round summaries report (one tensor each here).
PARTS = {
    "prompt.global": "global_prompt",
    "prompt.cluster": "cluster_prompt",
    "head.weight": "head",
}
HONEST = {"h0": 10, "h1": 20, "h2": 30}
#: The default cap on one member's share of a mean of four: max(1/4, min(0.5, 2/4)).
SHARE_CAP = 0.5
TOL = 1e-5

Deltas = dict[str, np.ndarray]


def _on_coordinate(index: int, value: float) -> Deltas:
    """A delta of ``value`` at flat coordinate ``index`` of every tensor (norm |value|)."""
    out = {}
    for name in TENSORS:
        array = np.zeros(SHAPE, dtype=np.float32)
        array.flat[index] = value
        out[name] = array
    return out


def _along(direction: np.ndarray, norm: float) -> Deltas:
    """``norm`` times the unit ``direction`` in every tensor."""
    unit = (direction / np.linalg.norm(direction)).astype(np.float32)
    return {name: (unit * np.float32(norm)).reshape(SHAPE) for name in TENSORS}


@dataclass
class Silo:
    """One silo speaking the protocol through stubs generated from our .proto."""

    stub: coordinator_pb2_grpc.CoordinatorStub
    client_id: str
    join_examples: int
    upload_examples: int
    #: The delta it uploads in a round (given the round-start model).
    delta: Callable[[int], Deltas]
    #: The aggregated model of each round, as its EVALUATE task carried it.
    aggregated: dict[int, Deltas] = field(default_factory=dict)
    round_start: dict[int, Deltas] = field(default_factory=dict)
    finished: bool = False

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((CLIENT_ID_METADATA_KEY, self.client_id),)

    async def join(self) -> coordinator_pb2.JoinResponse:
        request = coordinator_pb2.JoinRequest(
            client_id=self.client_id,
            metadata_json=json.dumps({"site": self.client_id}),
            capabilities=common_pb2.ClientCapabilities(
                device="cpu",
                model_name="tiny",
                model_fingerprint="fp-hostile",
                trainable_tensors=sorted(TENSORS),
                strategy="clustered",
            ),
            num_train_examples=self.join_examples,
        )
        return await self.stub.Join(request, metadata=self.metadata, timeout=TIMEOUT_S)

    async def upload(self, round_id: int, kind: int, tensors: Deltas, n: int) -> None:
        payload = encode_tensors(tensors)
        header, chunks = payload_messages(payload)
        messages = [
            coordinator_pb2.UploadUpdateRequest(
                header=coordinator_pb2.UpdateHeader(
                    client_id=self.client_id,
                    round=round_id,
                    kind=kind,  # type: ignore[arg-type]
                    num_examples=n,
                    payload=header,
                )
            ),
            *(coordinator_pb2.UploadUpdateRequest(chunk=c) for c in chunks),
        ]

        async def requests() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
            for message in messages:
                yield message

        response = await self.stub.UploadUpdate(
            requests(), metadata=self.metadata, timeout=TIMEOUT_S
        )
        assert response.accepted

    async def play(self) -> None:
        """Train (upload the delta), evaluate, report, round after round, until FINISHED."""
        request = coordinator_pb2.StreamTasksRequest(client_id=self.client_id)
        async for task in self.stub.StreamTasks(request, metadata=self.metadata):
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                self.round_start[task.round] = decode_tensors(task.model.data)
                await self.upload(
                    task.round,
                    coordinator_pb2.UPDATE_KIND_DELTA,
                    self.delta(task.round),
                    self.upload_examples,
                )
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                self.aggregated[task.round] = decode_tensors(task.model.data)
                await self.stub.ReportMetrics(
                    coordinator_pb2.ReportMetricsRequest(
                        client_id=self.client_id,
                        round=task.round,
                        phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                        metrics={"accuracy": 0.5},
                    ),
                    metadata=self.metadata,
                    timeout=TIMEOUT_S,
                )
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                self.finished = True
                return


@dataclass
class Coordinator:
    federation: Federation
    stub: coordinator_pb2_grpc.CoordinatorStub

    async def status(self) -> coordinator_pb2.GetStatusResponse:
        return await self.stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=TIMEOUT_S)


@contextlib.asynccontextmanager
async def running_coordinator(tmp_path: Path, **overrides: Any) -> AsyncIterator[Coordinator]:
    """A coordinator with the default aggregation settings on 127.0.0.1, port 0, plaintext."""
    settings: dict[str, Any] = {
        "rounds": ROUNDS,
        "strategy": "clustered",  # no clusterer: every silo is in cluster 0
        "min_clients": 4,
        "expected_clients": 4,
        "quorum_wait_s": 30.0,
        "tls": {"insecure": True},
    }
    async with serve_coordinator(tmp_path, tmp_path, **{**settings, **overrides}) as served:
        channel = create_channel(f"127.0.0.1:{served.port}")
        try:
            yield Coordinator(served.federation, coordinator_pb2_grpc.CoordinatorStub(channel))
        finally:
            await channel.close()


async def federate(coord: Coordinator, silos: list[Silo]) -> None:
    """Join everyone (the first provides the zero initial model) and play every round."""
    first, *others = silos
    assert (await first.join()).initial_model_requested
    initial = {name: np.zeros(SHAPE, dtype=np.float32) for name in TENSORS}
    await first.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, initial, 0)
    for silo in others:
        await silo.join()
    await asyncio.wait_for(asyncio.gather(*(s.play() for s in silos)), TIMEOUT_S * ROUNDS)


def _move(silo: Silo, round_id: int) -> Deltas:
    """How the round moved each tensor (aggregated minus round-start model)."""
    return {k: silo.aggregated[round_id][k] - silo.round_start[round_id][k] for k in TENSORS}


async def _assert_every_round_completed_with_everyone(coord: Coordinator) -> None:
    status = await coord.status()
    assert status.completed_rounds == ROUNDS
    assert status.phase == common_pb2.ROUND_PHASE_DONE
    for record in status.rounds:
        assert record.status == "completed"
        assert sorted(c.client_id for c in record.clients if c.update_accepted) == sorted(
            [*HONEST, "mallory"]
        )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("join_n", "upload_n"),
    [(MAX_EXAMPLES, MAX_EXAMPLES), (10, MAX_EXAMPLES), (MAX_EXAMPLES, 10)],
    ids=["max-count-everywhere", "max-count-in-upload-only", "max-count-at-join-only"],
)
async def test_a_max_count_max_norm_member_takes_at_most_the_capped_share_of_a_clipped_move(
    tmp_path: Path, join_n: int, upload_n: int
) -> None:
    # Each member owns one coordinate of every tensor, so the aggregate reveals each share:
    # coordinate i moves by share_i x (member i's clipped delta there).
    values = {"h0": 0.4, "h1": 0.5, "h2": 0.6}
    limit = DEFAULT_MAX_UPDATE_L2_NORM
    async with running_coordinator(tmp_path) as coord:
        silos = [
            Silo(coord.stub, cid, n, n, lambda r, i=i, v=values[cid]: _on_coordinate(i, v))
            for i, (cid, n) in enumerate(HONEST.items())
        ]
        mallory = Silo(coord.stub, "mallory", join_n, upload_n, lambda r: _on_coordinate(3, limit))
        await federate(coord, [*silos, mallory])
        assert all(s.finished for s in [*silos, mallory])
        await _assert_every_round_completed_with_everyone(coord)
        status = await coord.status()

    declared = min(join_n, upload_n)
    for record in status.rounds:
        r = record.round
        assert {c.client_id: c.num_examples for c in record.clients}["mallory"] == declared
        counts = {**HONEST, "mallory": declared}
        honest_total = sum(HONEST.values())
        move = _move(silos[0], r)
        for name in TENSORS:
            part = PARTS[name]
            bound = record.summary[f"clip_{part}_bound"]
            assert record.summary[f"clip_{part}_clipped_fraction"] >= 0.25  # mallory at least
            flat = move[name].reshape(-1)
            # the level moves by at most the clip bound (a mean of vectors of norm <= bound)
            assert np.linalg.norm(flat) <= bound * (1 + TOL)
            # mallory's share of the mean is capped, and so is its move
            clipped = {cid: min(v, bound) for cid, v in values.items()}
            share_m = flat[3] / bound
            assert 0 < share_m <= min(SHARE_CAP, counts["mallory"] / sum(counts.values())) + TOL
            assert flat[3] <= SHARE_CAP * bound * (1 + TOL)
            # every honest share keeps its ratio to the others, and is cut by at most the cap
            shares = {cid: flat[i] / clipped[cid] for i, cid in enumerate(HONEST)}
            for cid, share in shares.items():
                alone = HONEST[cid] / honest_total
                assert share >= (1 - SHARE_CAP) * alone - TOL
                assert share / shares["h0"] == pytest.approx(HONEST[cid] / HONEST["h0"], rel=1e-4)
            assert sum(shares.values()) + share_m == pytest.approx(1.0, abs=1e-4)
            # the round's bound is set by the honest norms, never by mallory's 10^2 x larger one
            assert bound <= max(values.values())
        assert {f"clip_{p}_bound" for p in PARTS.values()} <= set(record.summary)
        assert record.summary["global_max_weight"] <= SHARE_CAP + TOL


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "aggregation",
    [
        {},
        {"global_rule": "median", "cluster_rule": "median"},
        {"global_rule": "trimmed-mean", "cluster_rule": "trimmed-mean"},
        {"global_rule": "multi-krum", "cluster_rule": "multi-krum"},
    ],
    ids=["default-mean", "median", "trimmed-mean", "multi-krum"],
)
async def test_an_opposing_max_norm_member_cannot_drag_a_level_past_the_bound(
    tmp_path: Path, aggregation: dict[str, Any]
) -> None:
    # The honest members agree on a direction; mallory pushes the opposite way at the limit.
    rng = np.random.default_rng(7)
    direction = rng.normal(size=SHAPE[0] * SHAPE[1])
    norms = {"h0": 0.4, "h1": 0.5, "h2": 0.6}
    async with running_coordinator(tmp_path, aggregation=aggregation) as coord:
        silos = [
            Silo(coord.stub, cid, n, n, lambda r, v=norms[cid]: _along(direction, v))
            for cid, n in HONEST.items()
        ]
        mallory = Silo(
            coord.stub,
            "mallory",
            MAX_EXAMPLES,
            MAX_EXAMPLES,
            # at the limit, a hair under it so that float32 rounding does not cross it
            lambda r: _along(-direction, DEFAULT_MAX_UPDATE_L2_NORM * (1 - 1e-6)),
        )
        await federate(coord, [*silos, mallory])
        assert all(s.finished for s in [*silos, mallory])
        await _assert_every_round_completed_with_everyone(coord)
        status = await coord.status()

    unit = direction / np.linalg.norm(direction)
    for record in status.rounds:
        move = _move(silos[0], record.round)
        for name in TENSORS:
            bound = record.summary[f"clip_{PARTS[name]}_bound"]
            flat = move[name].reshape(-1).astype(np.float64)
            assert np.linalg.norm(flat) <= bound * (1 + TOL)
            along = float(flat @ unit)  # how far the level moved the honest way
            if aggregation:
                # robust rules: every coordinate stays inside the honest (clipped) updates'
                # range, so the level still moves the honest way
                honest = [min(v, bound) * unit for v in norms.values()]
                low, high = np.minimum.reduce(honest), np.maximum.reduce(honest)
                assert np.all(flat >= low - TOL) and np.all(flat <= high + TOL)
                assert along >= min(norms.values()) - TOL
            else:
                # the capped mean: mallory drags the level back by at most cap x bound
                honest_mean = sum(HONEST[c] * min(v, bound) for c, v in norms.items()) / sum(
                    HONEST.values()
                )
                assert along >= (1 - SHARE_CAP) * honest_mean - SHARE_CAP * bound - TOL


@pytest.mark.asyncio
async def test_an_update_over_the_hard_norm_limit_is_refused_and_the_round_goes_on(
    tmp_path: Path,
) -> None:
    honest_delta = _on_coordinate(0, 0.5)
    over = _on_coordinate(3, DEFAULT_MAX_UPDATE_L2_NORM * 1.01)
    async with running_coordinator(tmp_path, rounds=1) as coord:
        refusals: list[tuple[grpc.StatusCode, str]] = []

        def mallory_delta(round_id: int) -> Deltas:
            return _on_coordinate(3, 0.5) if refusals else over

        silos = [Silo(coord.stub, cid, n, n, lambda r: honest_delta) for cid, n in HONEST.items()]
        mallory = Silo(coord.stub, "mallory", MAX_EXAMPLES, MAX_EXAMPLES, mallory_delta)
        original_upload = mallory.upload

        async def upload_once_refused(round_id: int, kind: int, tensors: Deltas, n: int) -> None:
            try:
                await original_upload(round_id, kind, tensors, n)
            except grpc.aio.AioRpcError as exc:
                refusals.append((exc.code(), exc.details() or ""))
                await original_upload(round_id, kind, mallory_delta(round_id), n)

        mallory.upload = upload_once_refused  # type: ignore[method-assign]
        await federate(coord, [*silos, mallory])
        status = await coord.status()

    ((code, details),) = refusals
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "L2 norm" in details and "over the bound" in details
    assert status.completed_rounds == 1 and all(s.finished for s in silos)

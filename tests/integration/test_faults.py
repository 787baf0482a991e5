"""Faults with real processes and mutual TLS: the federation finishes and its state is consistent.

One federation (clusterer, coordinator, three real client agents, two rounds) goes through:

1. round 1: client A is killed with SIGKILL mid-round and client B is stopped (SIGSTOP, a
   cut network); the round completes by its deadline with C alone (quorum 1);
2. between rounds: B continues (SIGCONT; its late work is refused and discarded) and A is
   restarted; both take part in round 2;
3. round 2: the coordinator is killed with SIGKILL during aggregation/evaluation, together
   with the clusterer; the coordinator restarts on the same port, resumes after round 1,
   keeps the last cluster assignment while the clusterer is down (and says so), and round 2
   completes exactly once.

A second, cheaper test sends corrupt, truncated, oversized and malformed uploads to a real
coordinator process.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.server import channel_options
from fedprompt.transfer import payload_messages
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import Child, stop_all
from fedprompt_cli.processes import console_script as script

pytestmark = pytest.mark.integration
Code = grpc.StatusCode
ROUNDS = 2
#: Round deadline while clients are being killed (the round waits this long for them).
DEADLINE_S = 30
#: Deadline after the restart, when every client is alive (a round ends as soon as all
#: updates are in; the slack is for slow, shared CI machines).
RESTART_DEADLINE_S = 180


def _creds(certs: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{name}.key").read_bytes(),
        certificate_chain=(certs / f"{name}.crt").read_bytes(),
    )


class Watcher:
    """Polls the coordinator's status over mutual TLS as the operator (the full view)."""

    def __init__(self, port: int, certs: Path) -> None:
        self.channel = grpc.secure_channel(
            f"127.0.0.1:{port}", _creds(certs, "operator"), channel_options()
        )
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def status(self) -> coordinator_pb2.GetStatusResponse:
        return self.stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)

    def wait(
        self,
        what: str,
        predicate: Callable[[coordinator_pb2.GetStatusResponse], bool],
        children: list[Child],
        timeout_s: float = 240,
        poll_s: float = 0.05,
    ) -> coordinator_pb2.GetStatusResponse:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child in children:
                child.check()
            try:
                status = self.status()
            except grpc.RpcError:
                status = None
            if status is not None and predicate(status):
                return status
            time.sleep(poll_s)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.channel.close()


def _phase(status: coordinator_pb2.GetStatusResponse) -> str:
    return common_pb2.RoundPhase.Name(status.phase)


def test_federation_survives_dead_clients_a_cut_network_and_a_coordinator_crash(
    tmp_path: Path, silos_root: Path, certs: Path, tls_flags: Callable[[str], list[str]]
) -> None:
    logs = tmp_path / "logs"
    state_dir = tmp_path / "coordinator"
    silos = sorted(p for p in silos_root.iterdir() if p.is_dir())
    names = [s.name for s in silos]
    a, b, c = names
    env = {
        "FEDPROMPT_COORDINATOR_QUORUM_WAIT_S": "60",  # wait for every expected client
        "FEDPROMPT_COORDINATOR_EVAL_DEADLINE_S": "60",
    }

    def coordinator_child(tag: str, listen: str, clusterer_port: int, deadline_s: int) -> Child:
        return Child(
            f"coordinator-{tag}",
            [script("fedprompt-coordinator"), "--listen", listen, "--state-dir", str(state_dir),
             "--rounds", str(ROUNDS), "--min-clients", "1", "--expected-clients", "3",
             "--clusterer", f"127.0.0.1:{clusterer_port}", "--local-steps", "1",
             "--batch-size", "8", "--round-deadline-s", str(deadline_s),
             *tls_flags("coordinator")],
            logs / f"coordinator-{tag}.log",
            env=env,
        )  # fmt: skip

    def client_child(silo: Path, port: int, tag: str = "") -> Child:
        return Child(
            silo.name,
            [script("fedprompt-client-agent"), "--client-id", silo.name,
             "--coordinator", f"127.0.0.1:{port}", "--data-dir", str(silo),
             "--state-dir", str(tmp_path / "clients" / silo.name), "--max-length", "32",
             "--torch-threads", "1", "--device", "cpu", *tls_flags(silo.name)],
            logs / f"{silo.name}{tag}.log",
        )  # fmt: skip

    children: list[Child] = []
    watcher: Watcher | None = None
    try:
        clusterer = Child(
            "clusterer",
            [script("fedprompt-clusterer"), "--listen", "127.0.0.1:0", *tls_flags("clusterer")],
            logs / "clusterer.log",
        )
        clusterer.start()
        children.append(clusterer)
        cport = clusterer.wait_for_port()
        coordinator = coordinator_child("1", "127.0.0.1:0", cport, DEADLINE_S)
        coordinator.start()
        children.append(coordinator)
        port = coordinator.wait_for_port()
        clients = {s.name: client_child(s, port) for s in silos}
        for child in clients.values():
            child.start()
            children.append(child)
        watcher = Watcher(port, certs)

        # --- round 1: A dies (SIGKILL), B is cut off (SIGSTOP) as soon as training starts
        watcher.wait(
            "round 1 training",
            lambda s: s.current_round == 1 and _phase(s) == "ROUND_PHASE_TRAINING",
            list(clients.values()),
        )
        clients[a].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        clients[b].process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        clients[a].process.wait(10)  # type: ignore[union-attr]
        children.remove(clients[a])
        status = watcher.wait("round 1 completed", lambda s: s.completed_rounds >= 1, [])
        r1 = next(r for r in status.rounds if r.round == 1)
        assert r1.status == "completed"
        accepted = {rec.client_id: rec.update_accepted for rec in r1.clients}
        assert accepted == {a: False, b: False, c: True}, accepted

        # --- between rounds: B's network comes back, A restarts with its state
        clients[b].process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        clients[a] = client_child(silos[0], port, tag="-restarted")
        clients[a].start()
        children.append(clients[a])

        # --- round 2: everyone trains; crash the coordinator (and the clusterer) mid-round
        watcher.wait(
            "round 2 aggregation",
            lambda s: (
                s.current_round == 2
                and _phase(s) in ("ROUND_PHASE_AGGREGATION", "ROUND_PHASE_EVALUATION")
            ),
            list(clients.values()),
            poll_s=0.02,
        )
        coordinator.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        clusterer.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        coordinator.process.wait(10)  # type: ignore[union-attr]
        clusterer.process.wait(10)  # type: ignore[union-attr]
        children.remove(coordinator)
        children.remove(clusterer)
        db = sqlite3.connect(state_dir / "state.sqlite3")
        done = db.execute("SELECT round FROM rounds WHERE status = 'completed'").fetchall()
        assert done == [(1,)]  # the crashed round 2 left no completed record
        db.close()

        restarted = coordinator_child("2", f"127.0.0.1:{port}", cport, RESTART_DEADLINE_S)
        restarted.start()
        children.append(restarted)
        assert restarted.wait_for_port() == port
        status = watcher.wait(
            "the federation to finish",
            lambda s: s.completed_rounds >= ROUNDS and _phase(s) == "ROUND_PHASE_DONE",
            list(clients.values()),
        )
        for child in clients.values():
            assert child.process is not None
            assert child.process.wait(60) == 0, child.log_tail()
    finally:
        if watcher is not None:
            watcher.close()
        for child in children:  # a stopped child cannot act on SIGTERM
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGCONT)
        stop_all(children)

    # no lost and no duplicated round (an attempt that missed its deadline on a slow machine
    # is recorded as failed and retried; it is not a completed round)
    db = sqlite3.connect(state_dir / "state.sqlite3")
    rows = db.execute("SELECT round, status FROM rounds ORDER BY round").fetchall()
    assert [r for r in rows if r[1] == "completed"] == [(1, "completed"), (2, "completed")], rows
    assert all(r[1] == "completed" or r[1].startswith("failed") for r in rows), rows
    db.close()
    r2 = next(r for r in status.rounds if r.round == 2)
    assert {rec.client_id for rec in r2.clients if rec.update_accepted} == {a, b, c}
    # the clusterer stayed down: the last assignment was kept, and the round says so
    assert r2.summary["clustering_degraded"] == 1.0
    assert {cl.cluster_id for cl in status.clients} == {rec.cluster_id for rec in r1.clients} | {
        rec.cluster_id for rec in r2.clients
    }
    restarted_log = (logs / "coordinator-2.log").read_text()
    assert "resuming after completed round 1" in restarted_log
    assert "keeping the last assignment" in restarted_log and "retry" in restarted_log
    # tensor files are intact and the round-2 model differs from round 1's
    models = state_dir / "models"
    assert not list(models.glob(".tmp-*"))
    for path in models.glob("round-*/*.safetensors"):
        tensors = decode_tensors(path.read_bytes())
        assert tensors and all(np.isfinite(v).all() for v in tensors.values())
    g1 = decode_tensors((models / "round-000001" / "global.safetensors").read_bytes())
    g2 = decode_tensors((models / "round-000002" / "global.safetensors").read_bytes())
    assert not np.allclose(g1["prompt.global"], g2["prompt.global"])
    # the straggler's late work was refused and discarded, and it carried on
    b_log = (logs / f"{b}.log").read_text()
    assert "closed before this client finished" in b_log or "retrying in" in b_log


def test_corrupt_truncated_oversized_and_malformed_uploads(
    tmp_path: Path, certs: Path, tls_flags: Callable[[str], list[str]]
) -> None:
    coordinator = Child(
        "coordinator",
        [script("fedprompt-coordinator"), "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path / "state"), *tls_flags("coordinator")],
        tmp_path / "coordinator.log",
    )  # fmt: skip
    coordinator.start()
    try:
        port = coordinator.wait_for_port()
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", _creds(certs, "probe-a"), channel_options()
        )
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        stub.Join(
            coordinator_pb2.JoinRequest(
                client_id="probe-a",
                metadata_json=json.dumps({"site": "a"}),
                capabilities=common_pb2.ClientCapabilities(model_fingerprint="fp", strategy="fpl"),
                num_train_examples=3,
            ),
            timeout=10,
        )
        # 1.4 MiB: two chunks of at most 1 MiB
        payload = encode_tensors({"prompt.global": np.ones((600, 600), np.float32)})
        header, chunk_iter = payload_messages(payload)
        chunks = list(chunk_iter)
        assert len(chunks) == 2

        def upload(messages: list[coordinator_pb2.UploadUpdateRequest]) -> Code:
            try:
                stub.UploadUpdate(iter(messages), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
            return Code.OK

        head = coordinator_pb2.UploadUpdateRequest(
            header=coordinator_pb2.UpdateHeader(
                client_id="probe-a", round=0, kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                payload=header,
            )
        )  # fmt: skip
        good = [coordinator_pb2.UploadUpdateRequest(chunk=ch) for ch in chunks]
        corrupt = [coordinator_pb2.UploadUpdateRequest() for _ in good]
        for mine, orig in zip(corrupt, good, strict=True):
            mine.CopyFrom(orig)
        flipped = bytearray(corrupt[0].chunk.data)
        flipped[10] ^= 0xFF
        corrupt[0].chunk.data = bytes(flipped)
        assert upload([head, *corrupt]) is Code.DATA_LOSS
        assert upload([head, *good[:-1]]) is Code.DATA_LOSS  # a chunk missing: truncated
        assert upload([head]) is Code.DATA_LOSS  # header only: truncated
        huge = coordinator_pb2.UploadUpdateRequest()
        huge.CopyFrom(good[0])
        huge.chunk.data = b"x" * (3 * 1024 * 1024)  # over the per-message limit
        assert upload([head, huge]) is Code.RESOURCE_EXHAUSTED

        # malformed protobuf: raw bytes that do not parse as an UploadUpdateRequest
        raw = channel.stream_unary(
            "/fedprompt.v1.Coordinator/UploadUpdate",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            raw(iter([b"\xff\xff\xff\xff\x0f\x08"]), timeout=10)
        assert info.value.code() is Code.INVALID_ARGUMENT
        assert "malformed request message" in (info.value.details() or "")
        raw_join = channel.unary_unary(
            "/fedprompt.v1.Coordinator/Join",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            raw_join(b"\x0a\xff\xff", timeout=10)  # a length past the end of the message
        assert info.value.code() is Code.INVALID_ARGUMENT

        # ... and the coordinator still serves: the same upload, intact, is accepted
        assert upload([head, *good]) is Code.OK
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        assert status.model_fingerprint == "fp"
        channel.close()
    finally:
        stop_all([coordinator])
    text = (tmp_path / "coordinator.log").read_text()
    assert "DATA_LOSS" in text and "Traceback" not in text

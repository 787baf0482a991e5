"""Upload and download of a 1 GB model: throughput on loopback and the coordinator's memory.

Usage: ``.venv/bin/python -m bench.upload_1gb [--mib 1024] [--round-clients 4]``

A real coordinator process (strategy ``fedavg``, one client, one round) holds a model of
one fp32 tensor of ``--mib`` MiB. One light client joins, gives the initial model, fetches
the round-start model and then uploads a random delta of the same size. The bench reports:

* upload throughput: payload bytes / seconds of the UploadUpdate call (the client has
  encoded the payload and hashed it for the header before the clock starts);
* the coordinator's peak RSS growth during the upload: its VmHWM is reset just before the
  upload (``/proc/<pid>/clear_refs``) and read when the upload is accepted, relative to
  its RSS just before (target: at most 1.2 x one update);
* the round's total time and the coordinator's peak RSS over the whole run.

* download throughput: payload bytes / seconds of ``CoordinatorClient.fetch_payload`` (the
  client agent's path: every chunk's CRC-32 and the payload's SHA-256 checked, the payload
  assembled), for the round-start and the aggregated model;
* a full-fedavg round with ``--round-clients`` light clients (a second coordinator
  process): every client downloads the round-start model, uploads a delta of the model's
  size, downloads the aggregate; the coordinator's memory is sampled every 10 ms from
  ``/proc/<pid>/status`` during the round: peak ``RssAnon`` (its own memory: model copies,
  buffers) and peak ``VmRSS`` (plus file pages it maps, e.g. the memory-mapped uploads that
  aggregation reads; the kernel can drop those), both relative to the model's bytes.

Targets: upload >= 300 MB/s; peak growth <= 1.2 x the update; download >= 600 MB/s;
peak memory in the round <= 2.2 x the model's bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.light_clients import (
    CALL_TIMEOUT_S,
    LIGHT_FINGERPRINT,
    CoordinatorProcess,
    LightClientStats,
    LightTensor,
    _LightClient,
)
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.coordinator_client import CoordinatorClient
from fedprompt.server import CLIENT_ID_METADATA_KEY, create_channel
from fedprompt.strategies import StrategyName
from fedprompt.tensor_names import GLOBAL_PROMPT
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

MIB = 1024 * 1024


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


async def _run(coord: CoordinatorProcess, spec: tuple[LightTensor, ...]) -> dict[str, float]:
    stats = LightClientStats(clients=1, rounds=1)
    rng = np.random.default_rng(0)
    initial = {s.name: np.zeros(s.shape, dtype=np.float32) for s in spec}
    out: dict[str, float] = {}
    async with create_channel(coord.address) as channel:
        coordinator = CoordinatorClient(channel, "big-0", call_timeout_s=CALL_TIMEOUT_S)
        client = _LightClient(
            client=coordinator,
            stats=stats,
            initial=initial,
            rng=rng,
            strategy=StrategyName.FEDAVG.value,
            num_examples=100,
            metadata_json="{}",
            delta_scale=0.01,
        )
        t0 = time.perf_counter()
        await client.join()  # uploads the initial model
        out["initial_upload_s"] = time.perf_counter() - t0
        del initial
        round_t0 = time.perf_counter()
        async for task in coordinator.tasks():
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                t0 = time.perf_counter()
                downloaded = await coordinator.fetch_payload(
                    task.round, coordinator_pb2.MODEL_STAGE_ROUND_START
                )
                out["fetch_s"] = time.perf_counter() - t0
                out["fetch_bytes"] = float(len(downloaded))
                fetched = decode_tensors(downloaded)
                del fetched, downloaded
                # the same download as raw messages (no parsing, no checks): the wire rate
                raw: Any = channel.unary_stream(
                    "/fedprompt.v1.Coordinator/FetchModel",
                    request_serializer=coordinator_pb2.FetchModelRequest.SerializeToString,
                    response_deserializer=None,
                )
                t0 = time.perf_counter()
                wire = 0
                async for message in raw(
                    coordinator_pb2.FetchModelRequest(
                        client_id="big-0",
                        round=task.round,
                        stage=coordinator_pb2.MODEL_STAGE_ROUND_START,
                    ),
                    metadata=((CLIENT_ID_METADATA_KEY, "big-0"),),
                ):
                    wire += len(message)
                out["fetch_raw_s"] = time.perf_counter() - t0
                out["fetch_raw_bytes"] = float(wire)
                delta = {
                    s.name: rng.random(tuple(s.shape), dtype=np.float32) * np.float32(0.01)
                    for s in task.expected_update
                }
                payload = encode_tensors(delta)
                del delta
                t0 = time.perf_counter()
                header = coordinator.update_header(
                    round_id=task.round,
                    kind=coordinator_pb2.UPDATE_KIND_DELTA,
                    payload=payload,
                    num_examples=100,
                )
                out["client_hash_s"] = time.perf_counter() - t0
                rss0 = coord.rss_bytes()
                _reset_peak(coord.pid)
                t0 = time.perf_counter()
                # the client agent's upload path (fedprompt.transfer.upload_request_bytes)
                await coordinator.send_update(header, payload)
                seconds = time.perf_counter() - t0
                out["upload_bytes"] = float(len(payload))
                out["upload_s"] = seconds
                out["upload_peak_growth_bytes"] = float(coord.peak_rss_bytes() - rss0)
                out["rss_before_upload_bytes"] = float(rss0)
                del payload
                await coordinator.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_TRAIN,
                    metrics={"x": 1.0},
                )
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                t0 = time.perf_counter()
                downloaded = await coordinator.fetch_payload(
                    task.round, coordinator_pb2.MODEL_STAGE_AGGREGATED
                )
                out["fetch_aggregated_s"] = time.perf_counter() - t0
                del downloaded
                await coordinator.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.5},
                )
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                break
        out["round_s"] = time.perf_counter() - round_t0
    return out


class _MemorySampler:
    """Samples a process's ``RssAnon`` and ``VmRSS`` (bytes) every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self._path = f"/proc/{pid}/status"
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_anon = 0
        self.peak_rss = 0
        self.peak_anon_at = 0.0  # time.perf_counter() of the peak
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> tuple[int, int]:
        """(RssAnon, VmRSS) now, in bytes."""
        fields: dict[str, int] = {}
        with open(self._path) as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "VmRSS"):
                    fields[name] = int(value.split()[0]) * 1024
        return fields["RssAnon"], fields["VmRSS"]

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, rss = self.read()
            if anon > self.peak_anon:
                self.peak_anon, self.peak_anon_at = anon, time.perf_counter()
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _hash_download(
    stub: coordinator_pb2_grpc.CoordinatorStub,
    client_id: str,
    round_id: int,
    stage: coordinator_pb2.ModelStage.ValueType,
) -> tuple[bytes, float]:
    """Download a model, keeping only its SHA-256 (the round's clients hold no copy)."""
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    call: Any = stub.FetchModel(
        coordinator_pb2.FetchModelRequest(client_id=client_id, round=round_id, stage=stage),
        metadata=((CLIENT_ID_METADATA_KEY, client_id),),
        timeout=600.0,
    )
    header = None
    async for message in call:
        if message.WhichOneof("message") == "header":
            header = message.header
        else:
            digest.update(message.chunk.data)
    assert header is not None and digest.digest() == header.sha256, "download corrupted"
    return digest.digest(), time.perf_counter() - t0


async def _round_client(
    address: str,
    client_id: str,
    payload: bytes,
    joined: asyncio.Event | None,
    out: dict[str, float],
) -> None:
    async with create_channel(address) as channel:
        coordinator = CoordinatorClient(channel, client_id, call_timeout_s=CALL_TIMEOUT_S)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        response = await coordinator.join(
            metadata_json="{}",
            capabilities=common_pb2.ClientCapabilities(
                device="cpu",
                model_name="light-client",
                model_fingerprint=LIGHT_FINGERPRINT,
                trainable_tensors=[GLOBAL_PROMPT],
                strategy=StrategyName.FEDAVG.value,
            ),
            num_train_examples=100,
        )
        if response.initial_model_requested:  # the first client gives the initial model
            header = coordinator.update_header(
                round_id=0,
                kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                payload=payload,
                num_examples=0,
            )
            await coordinator.send_update(header, payload)
        if joined is not None:
            joined.set()
        async for task in coordinator.tasks():
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                _, seconds = await _hash_download(
                    stub, client_id, task.round, coordinator_pb2.MODEL_STAGE_ROUND_START
                )
                out[f"{client_id}.fetch_start_s"] = seconds
                out[f"{client_id}.at_fetched_start"] = time.perf_counter()
                header = coordinator.update_header(
                    round_id=task.round,
                    kind=coordinator_pb2.UPDATE_KIND_DELTA,
                    payload=payload,
                    num_examples=100,
                    train_metrics={"loss": 1.0},
                )
                await coordinator.send_update(header, payload)
                out[f"{client_id}.at_uploaded"] = time.perf_counter()
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                out[f"{client_id}.at_evaluate_task"] = time.perf_counter()
                _, seconds = await _hash_download(
                    stub, client_id, task.round, coordinator_pb2.MODEL_STAGE_AGGREGATED
                )
                out[f"{client_id}.fetch_aggregated_s"] = seconds
                await coordinator.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.5},
                )
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                return


async def _run_round(
    coord: CoordinatorProcess, spec: tuple[LightTensor, ...], clients: int
) -> dict[str, float]:
    """One full-fedavg round of ``clients`` light clients; the coordinator's memory sampled."""
    rng = np.random.default_rng(1)
    # one payload serves as the initial model and as every client's delta (the clients'
    # own memory stays at one model); fedavg adds the mean delta
    payload = encode_tensors(
        {s.name: rng.random(tuple(s.shape), dtype=np.float32) * np.float32(0.01) for s in spec}
    )
    out: dict[str, float] = {"model_bytes": float(len(payload))}
    sampler = _MemorySampler(coord.pid)
    out["anon_before_bytes"], out["rss_before_bytes"] = map(float, sampler.read())
    with sampler:
        t0 = time.perf_counter()
        first_joined = asyncio.Event()
        first = asyncio.create_task(
            _round_client(coord.address, "round-0", payload, first_joined, out)
        )
        await first_joined.wait()  # the initial model is in: the others join
        rest = [
            asyncio.create_task(_round_client(coord.address, f"round-{i}", payload, None, out))
            for i in range(1, clients)
        ]
        await asyncio.gather(first, *rest)
        out["round_s"] = time.perf_counter() - t0
    out["peak_anon_bytes"] = float(sampler.peak_anon)
    out["at_peak_anon"] = sampler.peak_anon_at
    out["at_round_start"] = t0
    out["peak_rss_bytes"] = float(sampler.peak_rss)
    return out


def _state_dir() -> str | None:
    runs = Path.cwd() / "runs"
    return str(runs) if runs.is_dir() else None


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=1024, help="model and update size in MiB")
    p.add_argument(
        "--round-clients", type=int, default=4, help="clients of the memory round (0: skip it)"
    )
    p.add_argument("--skip-transfer", action="store_true", help="only the memory round")
    args = p.parse_args()
    width = 1024
    spec = (LightTensor(GLOBAL_PROMPT, (args.mib * MIB // (4 * width), width)),)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    if not args.skip_transfer:
        _transfer(spec)
    if args.round_clients > 0:
        _memory_round(spec, args.round_clients)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


def _memory_round(spec: tuple[LightTensor, ...], clients: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="fedavg-round-", dir=_state_dir()) as tmp,
        CoordinatorProcess.start(
            Path(tmp),
            rounds=1,
            expected_clients=clients,
            strategy=StrategyName.FEDAVG.value,
            config={"max_update_bytes": 4 * 1024**3},
        ) as coord,
    ):
        fig = asyncio.run(_run_round(coord, spec, clients))
        hwm = coord.peak_rss_bytes()
        rounds = coord.status().rounds
    size = fig["model_bytes"]
    starts = [v for k, v in fig.items() if k.endswith(".fetch_start_s")]
    aggs = [v for k, v in fig.items() if k.endswith(".fetch_aggregated_s")]
    summary = rounds[-1].summary if rounds else {}
    print(
        f"FULL-FEDAVG ROUND, {clients} clients, model {size / MIB:.0f} MiB: {fig['round_s']:.1f} s "
        f"(status {rounds[-1].status if rounds else '?'}; aggregation "
        f"{summary.get('aggregation_seconds', float('nan')):.2f} s)"
    )
    print(
        f"  concurrent downloads: round-start {clients} x {size / MIB:.0f} MiB in max "
        f"{max(starts):.2f} s ({clients * size / max(starts) / 1e6:.0f} MB/s together); "
        f"aggregate in max {max(aggs):.2f} s ({clients * size / max(aggs) / 1e6:.0f} MB/s together)"
    )
    print(
        f"  coordinator RssAnon: {fig['anon_before_bytes'] / MIB:.0f} MiB before the initial model, "
        f"peak {fig['peak_anon_bytes'] / MIB:.0f} MiB = {fig['peak_anon_bytes'] / size:.2f} x the "
        f"model's bytes (growth {(fig['peak_anon_bytes'] - fig['anon_before_bytes']) / size:.2f} x)"
        " (target <= 2.2 x)"
    )
    t0 = fig["at_round_start"]
    events = [
        (f"{what} (last client)", max(v for k, v in fig.items() if k.endswith(f".at_{what}")) - t0)
        for what in ("fetched_start", "uploaded", "evaluate_task")
    ]
    print(
        f"  RssAnon peak at {fig['at_peak_anon'] - t0:.1f} s; "
        + ", ".join(f"{name} at {at:.1f} s" for name, at in events)
    )
    print(
        f"  coordinator VmRSS (with mapped file pages): peak sampled "
        f"{fig['peak_rss_bytes'] / MIB:.0f} MiB = {fig['peak_rss_bytes'] / size:.2f} x; "
        f"VmHWM {hwm / MIB:.0f} MiB = {hwm / size:.2f} x"
    )


def _transfer(spec: tuple[LightTensor, ...]) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="upload-1gb-", dir=_state_dir()) as tmp,
        CoordinatorProcess.start(
            Path(tmp),
            rounds=1,
            expected_clients=1,
            strategy=StrategyName.FEDAVG.value,
            config={"max_update_bytes": 4 * 1024**3},
        ) as coord,
    ):
        fig = asyncio.run(_run(coord, spec))
        peak_total = coord.peak_rss_bytes()
        rounds = coord.status().rounds
    size = fig["upload_bytes"]
    print(f"update: {size / MIB:.0f} MiB fp32 (one tensor {spec[0].shape})")
    print(f"initial model upload + join: {fig['initial_upload_s']:.2f} s")
    print(
        f"DOWNLOAD (fetch_payload, checked and assembled): round-start {fig['fetch_s']:.2f} s = "
        f"{fig['fetch_bytes'] / fig['fetch_s'] / 1e6:.0f} MB/s; aggregate "
        f"{fig['fetch_aggregated_s']:.2f} s = {fig['fetch_bytes'] / fig['fetch_aggregated_s'] / 1e6:.0f} MB/s"
        "  (target >= 600 MB/s)"
    )
    print(
        f"download as raw messages (no parse, no checks): {fig['fetch_raw_s']:.2f} s = "
        f"{fig['fetch_raw_bytes'] / fig['fetch_raw_s'] / 1e6:.0f} MB/s on the wire"
    )
    print(f"client header hash (SHA-256): {fig['client_hash_s']:.2f} s (before the upload clock)")
    print(
        f"UPLOAD: {fig['upload_s']:.2f} s = {size / fig['upload_s'] / 1e6:.0f} MB/s  (target >= 300 MB/s)"
    )
    growth = fig["upload_peak_growth_bytes"]
    print(
        f"coordinator RSS before upload {fig['rss_before_upload_bytes'] / MIB:.0f} MiB; "
        f"peak growth during upload {growth / MIB:.0f} MiB = {growth / size:.2f} x the update "
        "(target <= 1.2 x)"
    )
    summary = rounds[-1].summary if rounds else {}
    print(
        f"round: {fig['round_s']:.1f} s (aggregation {summary.get('aggregation_seconds', float('nan')):.2f} s, "
        f"snapshot write {summary.get('model_save_seconds', float('nan')):.2f} s); "
        f"coordinator peak RSS since the upload {peak_total / MIB:.0f} MiB"
    )


if __name__ == "__main__":
    raise SystemExit(main())

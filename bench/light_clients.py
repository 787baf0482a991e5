"""Light federation clients for system benchmarks: real gRPC, no model, no torch.

A light client speaks the full client protocol against a real coordinator (Join, the
initial model when asked, StreamTasks, the task's model (inline in the task, else
FetchModel), UploadUpdate of a random delta shaped by the task's ``expected_update`` with
its training metrics in the header, ReportMetrics for EVALUATE) but trains nothing,
so what a bench measures is the coordinator's and the wire's cost of a round. The calls
are the client agent's own (:class:`fedprompt.coordinator_client.CoordinatorClient`); a
light client only times around them and counts the bytes.

Reusable API (kept stable; other benches build on it)::

    from bench.light_clients import (
        CoordinatorProcess, LightTensor, run_light_clients, tensor_spec_for_bytes,
    )

    spec = tensor_spec_for_bytes(30_000)                 # one F32 tensor of ~30 KB
    with CoordinatorProcess.start(state_dir, rounds=5, expected_clients=100) as coord:
        stats = asyncio.run(run_light_clients(coord.address, n=100, rounds=5, tensor_spec=spec))
        print(stats.round_seconds(), coord.peak_rss_bytes())

Run it directly for a quick check: ``.venv/bin/python -m bench.light_clients --clients 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import yaml

from fedprompt.codec import NUMPY_DTYPES, decode_tensors, encode_tensors
from fedprompt.coordinator_client import CoordinatorClient
from fedprompt.server import create_channel
from fedprompt.status_pages import read_full_status_async
from fedprompt.strategies import StrategyName
from fedprompt.tensor_names import GLOBAL_PROMPT
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import Child, console_script

#: Fingerprint every light client (and only light clients) reports.
LIGHT_FINGERPRINT = "light-bench-client/v1"
#: Deadline of a light client's short calls (Join, ReportMetrics) under a large fleet.
CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LightTensor:
    """One tensor of the federation's shared model: name, shape, safetensors dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "F32"

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * NUMPY_DTYPES[self.dtype].itemsize


def tensor_spec_for_bytes(
    total_bytes: int, *, name: str = GLOBAL_PROMPT, width: int = 384
) -> tuple[LightTensor, ...]:
    """One F32 tensor of ``rows x width`` holding about ``total_bytes`` (at least one row)."""
    rows = max(1, round(total_bytes / (4 * width)))
    return (LightTensor(name=name, shape=(rows, width)),)


def random_tensors(
    spec: Sequence[LightTensor] | Sequence[common_pb2.TensorSpec],
    rng: np.random.Generator,
    *,
    scale: float = 0.01,
) -> dict[str, np.ndarray]:
    """Random normal tensors matching ``spec`` (light or protobuf tensor specs)."""
    out = {}
    for s in spec:
        dtype = NUMPY_DTYPES[s.dtype]
        shape = tuple(int(d) for d in s.shape)
        out[s.name] = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)
    return out


@dataclass
class LightClientStats:
    """What a fleet of light clients observed.

    Times are ``time.monotonic()`` seconds. ``round_done_at[r]`` is when the last client
    reported its evaluation of round ``r``; consecutive differences are the rounds' wall
    times as clients see them (everything but compute, which is zero here).
    """

    clients: int
    rounds: int
    started_at: float = 0.0
    finished_at: float = 0.0
    joined: int = 0
    finished: int = 0
    train_tasks: int = 0
    eval_tasks: int = 0
    uploads: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: list[str] = field(default_factory=list)
    round_done_at: dict[int, float] = field(default_factory=dict)
    first_task_at: dict[int, float] = field(default_factory=dict)
    #: Per-call latencies in seconds, by RPC name.
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every client finished and no call failed."""
        return not self.errors and self.finished == self.clients

    def round_seconds(self) -> list[float]:
        """Wall seconds of each round after the first, from round completion to completion."""
        done = [self.round_done_at[r] for r in sorted(self.round_done_at)]
        return [b - a for a, b in itertools.pairwise(done)]

    def latency_summary(self) -> dict[str, tuple[float, float]]:
        """RPC name -> (median, max) latency in milliseconds."""
        return {
            k: (1000 * statistics.median(v), 1000 * max(v))
            for k, v in sorted(self.latencies.items())
            if v
        }

    def _time(self, rpc: str, seconds: float) -> None:
        self.latencies.setdefault(rpc, []).append(seconds)


class _LightClient:
    """One light client: the client agent's protocol (``CoordinatorClient``) without learning.

    Its statistics (latencies, bytes) are taken around the coordinator client's calls.
    """

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        stats: LightClientStats,
        initial: Mapping[str, np.ndarray],
        rng: np.random.Generator,
        strategy: str,
        num_examples: int,
        metadata_json: str,
        delta_scale: float,
    ) -> None:
        self.client_id = client.client_id
        self._client = client
        self._stats = stats
        self._initial = initial
        self._rng = rng
        self._strategy = strategy
        self._num_examples = num_examples
        self._metadata_json = metadata_json
        self._scale = delta_scale

    async def join(self) -> None:
        t0 = time.perf_counter()
        response = await self._client.join(
            metadata_json=self._metadata_json,
            capabilities=common_pb2.ClientCapabilities(
                device="cpu",
                model_name="light-client",
                model_fingerprint=LIGHT_FINGERPRINT,
                trainable_tensors=sorted(self._initial),
                strategy=self._strategy,
            ),
            num_train_examples=self._num_examples,
        )
        self._stats._time("Join", time.perf_counter() - t0)
        self._stats.joined += 1
        if response.initial_model_requested:
            await self._upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, self._initial, 0)

    async def serve(self) -> None:
        async for task in self._client.tasks():
            self._stats.first_task_at.setdefault(task.round, time.monotonic())
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                await self._train(task)
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                await self._evaluate(task)
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                self._stats.finished += 1
                return
        raise RuntimeError(f"{self.client_id}: task stream closed without FINISHED")

    async def _train(self, task: coordinator_pb2.Task) -> None:
        self._stats.train_tasks += 1
        await self._model(task, coordinator_pb2.MODEL_STAGE_ROUND_START)
        delta = random_tensors(task.expected_update, self._rng, scale=self._scale)
        await self._upload(
            task.round,
            coordinator_pb2.UPDATE_KIND_DELTA,
            delta,
            self._num_examples,
            train_metrics={"train_loss": 1.0},
        )

    async def _evaluate(self, task: coordinator_pb2.Task) -> None:
        self._stats.eval_tasks += 1
        await self._model(task, coordinator_pb2.MODEL_STAGE_AGGREGATED)
        accuracy = float(self._rng.random())
        await self._report(
            task.round, coordinator_pb2.METRICS_PHASE_EVALUATE, {"accuracy": accuracy}
        )
        self._stats.round_done_at[task.round] = time.monotonic()

    async def _report(
        self,
        round_id: int,
        phase: coordinator_pb2.MetricsPhase.ValueType,
        metrics: dict[str, float],
    ) -> None:
        t0 = time.perf_counter()
        await self._client.report_metrics(round_id=round_id, phase=phase, metrics=metrics)
        self._stats._time("ReportMetrics", time.perf_counter() - t0)

    async def _model(
        self, task: coordinator_pb2.Task, stage: coordinator_pb2.ModelStage.ValueType
    ) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        payload = await self._client.task_payload(task, stage)
        self._stats.bytes_down += len(payload)
        if not task.HasField("model"):  # not inline in the task: a FetchModel download
            self._stats._time("FetchModel", time.perf_counter() - t0)
        return decode_tensors(payload)

    async def _upload(
        self,
        round_id: int,
        kind: coordinator_pb2.UpdateKind.ValueType,
        tensors: Mapping[str, np.ndarray],
        num_examples: int,
        *,
        train_metrics: Mapping[str, float] | None = None,
    ) -> None:
        t0 = time.perf_counter()
        payload = encode_tensors(tensors)
        await self._client.upload(
            round_id=round_id,
            kind=kind,
            payload=payload,
            num_examples=num_examples,
            train_metrics=train_metrics,
        )
        self._stats.uploads += 1
        self._stats.bytes_up += len(payload)
        self._stats._time("UploadUpdate", time.perf_counter() - t0)


async def run_light_clients(
    target: str,
    n: int,
    rounds: int,
    tensor_spec: Sequence[LightTensor],
    *,
    strategy: str = StrategyName.FEDAVG.value,
    client_prefix: str = "light",
    clients_per_channel: int = 1,
    num_examples: int = 100,
    delta_scale: float = 0.01,
    seed: int = 0,
    metadata: Mapping[str, object] | None = None,
    join_concurrency: int = 64,
    timeout_s: float = 600.0,
) -> LightClientStats:
    """Run ``n`` light clients against the coordinator at ``target`` until it finishes.

    Parameters
    ----------
    target
        ``host:port`` of a running coordinator (its ``strategy`` must equal ``strategy``).
    n
        Number of clients (ids ``<client_prefix>-00000`` ...).
    rounds
        Rounds the coordinator is configured for (used for the stats only: the clients
        follow their task streams until the coordinator sends FINISHED).
    tensor_spec
        The federation's shared tensors; the first client uploads them (seeded random) as
        the initial model when the coordinator asks. Deltas follow each task's spec.
    clients_per_channel
        How many clients share one gRPC channel (1: one TCP connection per client, as in a
        real deployment).
    join_concurrency
        At most this many Join calls are in flight at once (the rest queue client-side).
    timeout_s
        Give up (and record an error) after this many seconds.

    Returns
    -------
    LightClientStats
        Counters, per-RPC latencies and per-round completion times.
    """
    if n < 1 or clients_per_channel < 1:
        raise ValueError("n and clients_per_channel must be >= 1")
    stats = LightClientStats(clients=n, rounds=rounds, started_at=time.monotonic())
    master = np.random.default_rng(seed)
    initial = random_tensors(tensor_spec, master, scale=0.02)
    meta_json = json.dumps(dict(metadata or {"bench": "light"}), sort_keys=True)
    num_channels = (n + clients_per_channel - 1) // clients_per_channel
    channels = [create_channel(target) for _ in range(num_channels)]
    clients = [
        _LightClient(
            client=CoordinatorClient(
                channels[i // clients_per_channel],
                f"{client_prefix}-{i:05d}",
                call_timeout_s=CALL_TIMEOUT_S,
            ),
            stats=stats,
            initial=initial,
            rng=np.random.default_rng([seed, i]),
            strategy=strategy,
            num_examples=num_examples,
            metadata_json=meta_json,
            delta_scale=delta_scale,
        )
        for i in range(n)
    ]
    join_gate = asyncio.Semaphore(join_concurrency)

    async def one(client: _LightClient, *, first: bool) -> None:
        try:
            if not first:  # the first client already joined (and gave the initial model)
                async with join_gate:
                    await client.join()
            await client.serve()
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            stats.errors.append(f"{client.client_id}: {detail}")

    try:
        async with asyncio.timeout(timeout_s):
            await clients[0].join()
            await asyncio.gather(*(one(c, first=i == 0) for i, c in enumerate(clients)))
    except TimeoutError:
        stats.errors.append(f"timed out after {timeout_s:.0f} s")
    except grpc.aio.AioRpcError as exc:
        stats.errors.append(f"{clients[0].client_id}: join failed: {exc.details()}")
    finally:
        for ch in channels:
            await ch.close()
        stats.finished_at = time.monotonic()
    return stats


# --------------------------------------------------------------------------- coordinator


def _read_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


class CoordinatorProcess:
    """A real ``fedprompt-coordinator`` process on 127.0.0.1 for benches.

    Use :meth:`start` as a context manager; the process is stopped (by its PID) on exit.
    """

    def __init__(self, child: Child, port: int, state_dir: Path) -> None:
        self._child = child
        self.port = port
        self.state_dir = state_dir

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The coordinator's PID."""
        return self._child.pid

    def rss_bytes(self) -> int:
        """Current resident set size."""
        return 1024 * _read_kib(self.pid, "VmRSS")

    def peak_rss_bytes(self) -> int:
        """Peak resident set size so far (VmHWM)."""
        return 1024 * _read_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds the coordinator has used so far."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self) -> coordinator_pb2.GetStatusResponse:
        """The coordinator's whole status, every page merged (blocking, for use after a run)."""

        async def get() -> coordinator_pb2.GetStatusResponse:
            async with create_channel(self.address) as ch:
                stub = coordinator_pb2_grpc.CoordinatorStub(ch)
                return await read_full_status_async(lambda r: stub.GetStatus(r, timeout=60))

        return asyncio.run(get())

    def round_seconds(self) -> list[float]:
        """``round_seconds`` the coordinator recorded for each completed round."""
        return [r.summary["round_seconds"] for r in self.status().rounds if r.status == "completed"]

    def phase_medians(self) -> dict[str, float]:
        """Median seconds of each phase the coordinator timed (training, aggregation, ...)."""
        keys = (
            "training_seconds",
            "aggregation_seconds",
            "evaluation_seconds",
            "model_save_seconds",
            "checkpoint_wait_seconds",
        )
        done = [r.summary for r in self.status().rounds if r.status == "completed"]
        return {k: statistics.median(s[k] for s in done if k in s) for k in keys if done}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the coordinator's log."""
        return self._child.log_tail(lines)

    def stop(self) -> None:
        """SIGTERM the coordinator (SIGKILL after a grace period)."""
        self._child.stop()

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        state_dir: Path,
        *,
        rounds: int,
        expected_clients: int,
        strategy: str = StrategyName.FEDAVG.value,
        min_clients: int | None = None,
        config: Mapping[str, object] | None = None,
        log_level: str = "WARNING",
        nice: int = 0,
    ) -> Iterator[CoordinatorProcess]:
        """Start a coordinator whose rounds open as soon as ``expected_clients`` are connected.

        ``config`` entries are merged into the YAML config (e.g. ``{"max_update_bytes": ...}``).
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, object] = {
            "listen": "127.0.0.1:0",
            "state_dir": str(state_dir / "state"),
            "rounds": rounds,
            "min_clients": min_clients or expected_clients,
            "expected_clients": expected_clients,
            "quorum_wait_s": 600.0,
            "round_deadline_s": 600.0,
            "eval_deadline_s": 600.0,
            "strategy": strategy,
            "log_level": log_level,
            # light clients open plaintext channels: the coordinator must accept them
            "tls": {"insecure": True},
        }
        cfg.update(config or {})
        cfg_path = state_dir / "coordinator.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        argv = [console_script("fedprompt-coordinator"), "--config", str(cfg_path)]
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        child = Child("coordinator", argv, state_dir / "coordinator.log")
        child.start()
        try:
            port = child.wait_for_port(60)
            yield cls(child, port, state_dir)
        finally:
            child.stop()


def main() -> int:
    """Run a small light federation and print its figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--update-bytes", type=int, default=30_000)
    p.add_argument("--clients-per-channel", type=int, default=1)
    args = p.parse_args()
    spec = tensor_spec_for_bytes(args.update_bytes)
    with (
        tempfile.TemporaryDirectory(prefix="light-") as tmp,
        CoordinatorProcess.start(
            Path(tmp), rounds=args.rounds, expected_clients=args.clients
        ) as coord,
    ):
        stats = asyncio.run(
            run_light_clients(
                coord.address,
                args.clients,
                args.rounds,
                spec,
                clients_per_channel=args.clients_per_channel,
            )
        )
        rss = coord.peak_rss_bytes()
        coordinator_rounds = coord.round_seconds()
    print(f"clients={args.clients} rounds={args.rounds} ok={stats.ok} errors={stats.errors[:3]}")
    print(f"coordinator round_seconds: {[round(s, 4) for s in coordinator_rounds]}")
    print(f"client-side round wall s:  {[round(s, 4) for s in stats.round_seconds()]}")
    print(f"coordinator peak RSS: {rss / 1024**2:.1f} MiB; pid {os.getpid()} (bench)")
    for rpc, (med, mx) in stats.latency_summary().items():
        print(f"  {rpc:14s} median {med:8.2f} ms  max {mx:8.2f} ms")
    return 0 if stats.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

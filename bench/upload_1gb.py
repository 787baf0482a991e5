"""Upload of a 1 GB update: throughput on loopback and the coordinator's peak memory.

Usage: ``.venv/bin/python -m bench.upload_1gb [--mib 1024]``

A real coordinator process (strategy ``fedavg``, one client, one round) holds a model of
one fp32 tensor of ``--mib`` MiB. One light client joins, gives the initial model, fetches
the round-start model and then uploads a random delta of the same size. The bench reports:

* upload throughput: payload bytes / seconds of the UploadUpdate call (the client has
  encoded the payload and hashed it for the header before the clock starts);
* the coordinator's peak RSS growth during the upload: its VmHWM is reset just before the
  upload (``/proc/<pid>/clear_refs``) and read when the upload is accepted, relative to
  its RSS just before (target: at most 1.2 x one update);
* the round's total time and the coordinator's peak RSS over the whole run.

Targets: >= 300 MB/s; peak growth <= 1.2 x the update.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.light_clients import (
    CALL_TIMEOUT_S,
    CoordinatorProcess,
    LightClientStats,
    LightTensor,
    _LightClient,
)
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.coordinator_client import CoordinatorClient
from fedprompt.server import create_channel
from fedprompt.strategies import StrategyName
from fedprompt.tensor_names import GLOBAL_PROMPT
from fedprompt.v1 import coordinator_pb2

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
                fetched = decode_tensors(
                    await coordinator.fetch_payload(
                        task.round, coordinator_pb2.MODEL_STAGE_ROUND_START
                    )
                )
                out["fetch_s"] = time.perf_counter() - t0
                del fetched
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
                await coordinator.fetch_payload(task.round, coordinator_pb2.MODEL_STAGE_AGGREGATED)
                await coordinator.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.5},
                )
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                break
        out["round_s"] = time.perf_counter() - round_t0
    return out


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=1024, help="update size in MiB")
    args = p.parse_args()
    width = 1024
    spec = (LightTensor(GLOBAL_PROMPT, (args.mib * MIB // (4 * width), width)),)
    with (
        tempfile.TemporaryDirectory(
            prefix="upload-1gb-",
            dir=Path.cwd() / "runs" if (Path.cwd() / "runs").is_dir() else None,
        ) as tmp,
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
        f"round-start model download:  {fig['fetch_s']:.2f} s ({size / fig['fetch_s'] / 1e6:.0f} MB/s)"
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The server optimizer in the federation's rounds: the step on the aggregate, its moments
durable with the snapshot across a restart, old state dirs, corrupt moment files, and secure
aggregation (only released clusters step)."""

from __future__ import annotations

import asyncio
import hashlib
from math import sqrt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt.codec import encode_tensors
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import FederationModel, ServerMoments
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.state_check import StateIntegrityError
from fedprompt_coordinator.state_store import SqliteStateStore
from tests.unit.coordinator.test_federation import (
    CLUSTERS,
    PLAIN_FEDAVG,
    TIMEOUT_S,
    FakeClient,
    FixedClusters,
    Harness,
    federation,
)
from tests.unit.coordinator.test_secure_federation import SECURE, SecureClient

ADAM = {**PLAIN_FEDAVG, "server_optimizer": {"name": "adam", "lr": 0.1}}
G, C = "prompt.global", "prompt.cluster"


def _adam_first_step(x: float, delta: float, lr: float = 0.1) -> float:
    """x + η m / (√v + τ) from fresh moments, Reddi et al.'s defaults β1 0.9, β2 0.99,
    τ 1e-3: m = 0.1 Δ, v = 0.99 τ² + 0.01 Δ²."""
    return x + lr * 0.1 * delta / (sqrt(0.99e-6 + 0.01 * delta * delta) + 1e-3)


async def _rounds(
    h: Harness, *, first_join: bool, client_class: type[FakeClient] = FakeClient
) -> None:
    """Run the configured rounds with clients a, b and c (joined afresh, or rejoining)."""
    run = h.start()
    for cid in "abc":
        client = client_class(h.fed, cid)
        if first_join:
            await h.connect(client)
        else:
            await client.join()
            h.spawn(client.serve())
    await asyncio.wait_for(run, TIMEOUT_S)


def _snapshot(h: Harness, round_id: int) -> tuple[FederationModel, ServerMoments]:
    files = h.state.snapshots()[round_id]
    return h.models.load(round_id, expected=files), h.models.load_moments(round_id, expected=files)


def _bytes(model: FederationModel, moments: ServerMoments) -> dict[str, bytes]:
    out = {f"g/{k}": v.tobytes() for k, v in model.global_tensors.items()}
    for c, tensors in model.cluster_tensors.items():
        out.update({f"c{c}/{k}": v.tobytes() for k, v in tensors.items()})
    for k, tm in moments.global_moments.items():
        out.update({f"mg/{k}": tm.first.tobytes(), f"vg/{k}": tm.second.tobytes()})
    for c, level in moments.cluster_moments.items():
        for k, tm in level.items():
            out.update({f"m{c}/{k}": tm.first.tobytes(), f"v{c}/{k}": tm.second.tobytes()})
    return out


@pytest.mark.asyncio
async def test_adam_steps_each_level_and_resumes_its_moments_after_a_restart(
    tmp_path: Path,
) -> None:
    straight, restarted = tmp_path / "straight", tmp_path / "restarted"
    straight.mkdir()
    restarted.mkdir()
    async with federation(straight, rounds=2, aggregation=ADAM) as h:
        await _rounds(h, first_join=True)
        one, one_moments = _snapshot(h, 1)
        expected = _bytes(*_snapshot(h, 2))
        summary = h.state.rounds()[0].summary
    # the weighted means of test_federation: global Δ = [1.5, 1.5], cluster 0 Δ = 5, 1 Δ = 1
    np.testing.assert_allclose(
        one.global_tensors[G], [_adam_first_step(1, 1.5), _adam_first_step(2, 1.5)], rtol=1e-6
    )
    np.testing.assert_allclose(one.cluster_tensors[0][C], [_adam_first_step(10, 5)], rtol=1e-6)
    np.testing.assert_allclose(one.cluster_tensors[1][C], [_adam_first_step(10, 1)], rtol=1e-6)
    np.testing.assert_allclose(one_moments.cluster_moments[0][C].first, [0.5], rtol=1e-12)
    np.testing.assert_allclose(one_moments.cluster_moments[1][C].first, [0.1], rtol=1e-12)
    assert one_moments.optimizer == "adam"
    assert summary["server_optimizer_adam"] == 1.0 and summary["server_lr"] == 0.1
    assert summary["global_server_update_norm"] > 0

    async with federation(restarted, rounds=1, aggregation=ADAM) as h:
        await _rounds(h, first_join=True)
    async with federation(restarted, rounds=2, aggregation=ADAM) as h:  # a new process
        await _rounds(h, first_join=False)
        # the same moments, the same second round, bit for bit
        assert _bytes(*_snapshot(h, 2)) == expected


@pytest.mark.asyncio
async def test_a_state_dir_without_moments_resumes_adam_from_fresh_moments(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path, rounds=1) as h:  # plain sgd: the update of old versions
        await _rounds(h, first_join=True)
        assert not any(n.startswith("optimizer-") for n in h.state.snapshots()[1])
        assert h.state.rounds()[0].summary["server_optimizer_sgd"] == 1.0
    async with federation(tmp_path, rounds=2, aggregation=ADAM) as h:
        await _rounds(h, first_join=False)
        two, moments = _snapshot(h, 2)
    # round 1 left global [2.5, 3.5], clusters 15 and 11; round 2 applies the same deltas
    np.testing.assert_allclose(
        two.global_tensors[G], [_adam_first_step(2.5, 1.5), _adam_first_step(3.5, 1.5)], rtol=1e-6
    )
    np.testing.assert_allclose(two.cluster_tensors[0][C], [_adam_first_step(15, 5)], rtol=1e-6)
    np.testing.assert_allclose(moments.global_moments[G].second, [0.99e-6 + 0.01 * 2.25] * 2)


def _open(tmp_path: Path, **settings: Any) -> Federation:
    config = CoordinatorConfig(
        state_dir=tmp_path, strategy="clustered", aggregation=ADAM, **settings
    )
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    try:
        return Federation(
            config=config,
            state=state,
            models=ModelStore(tmp_path / "models"),
            clustering=FixedClusters(CLUSTERS),
        )
    finally:
        state.close()


@pytest.mark.asyncio
async def test_a_corrupt_moment_file_stops_the_coordinator_at_start(tmp_path: Path) -> None:
    async with federation(tmp_path, rounds=1, aggregation=ADAM) as h:
        await _rounds(h, first_join=True)
    path = tmp_path / "models" / "round-000001" / "optimizer-cluster-1.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(StateIntegrityError, match=r"optimizer-cluster-1\.safetensors"):
        _open(tmp_path)


@pytest.mark.asyncio
async def test_moments_that_do_not_fit_the_model_stop_the_coordinator_at_start(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path, rounds=1, aggregation=ADAM) as h:
        await _rounds(h, first_join=True)
        files = h.state.snapshots()[1]
        # moments of a two-coordinate cluster prompt (the model's has one), digest recorded
        payload = encode_tensors(
            {"first." + C: np.zeros(2), "second." + C: np.ones(2)}, metadata={"optimizer": "adam"}
        )
        name = "optimizer-cluster-0.safetensors"
        (h.models.folder(1) / name).write_bytes(payload)
        h.state.record_snapshot(1, {**files, name: hashlib.sha256(payload).hexdigest()})
    with pytest.raises(StateIntegrityError, match=r"prompt\.cluster \(cluster 0\) have shapes"):
        _open(tmp_path)


@pytest.mark.asyncio
async def test_secure_aggregation_steps_only_the_clusters_it_released(tmp_path: Path) -> None:
    async with federation(tmp_path, rounds=1, aggregation=ADAM) as h:  # every cluster moves
        await _rounds(h, first_join=True)
        one, one_moments = _snapshot(h, 1)
    async with federation(
        tmp_path, rounds=2, secure_aggregation=SECURE, aggregation=ADAM
    ) as h:  # restarted with secure aggregation
        await _rounds(h, first_join=False, client_class=SecureClient)
        two, two_moments = _snapshot(h, 2)
        summary = h.state.rounds()[-1].summary
    # cluster 0's group (a, b) is released: global Δ = [1, 5] from it alone, cluster Δ = 5
    # (fixed point); the second moments follow Adam's EMA from round 1's
    v1 = one_moments.global_moments[G].second
    np.testing.assert_allclose(
        two_moments.global_moments[G].second, 0.99 * v1 + 0.01 * np.array([1.0, 25.0]), rtol=1e-4
    )
    assert two.cluster_tensors[0][C] != one.cluster_tensors[0][C]
    # c is alone in cluster 1: not aggregated, so neither its tensors nor its moments move
    assert summary["secagg_cluster_1_skipped"] == 1.0
    assert two.cluster_tensors[1][C].tobytes() == one.cluster_tensors[1][C].tobytes()
    for old, new in ((one_moments, two_moments),):
        assert (
            new.cluster_moments[1][C].first.tobytes() == old.cluster_moments[1][C].first.tobytes()
        )
        assert (
            new.cluster_moments[1][C].second.tobytes() == old.cluster_moments[1][C].second.tobytes()
        )
    assert "cluster_1_server_update_norm" not in summary
    assert summary["cluster_0_server_update_norm"] > 0

"""The light-client harness of the system benches against a real coordinator process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench.light_clients import (
    CoordinatorProcess,
    run_light_clients,
    tensor_spec_for_bytes,
)


def test_light_clients_complete_every_round_of_a_real_coordinator(tmp_path: Path) -> None:
    spec = tensor_spec_for_bytes(4096)
    with CoordinatorProcess.start(tmp_path, rounds=2, expected_clients=3) as coord:
        stats = asyncio.run(run_light_clients(coord.address, 3, 2, spec, timeout_s=120))
        status = coord.status()
        rss = coord.peak_rss_bytes()
    assert stats.ok, stats.errors
    assert (stats.joined, stats.finished, stats.train_tasks, stats.eval_tasks) == (3, 3, 6, 6)
    assert stats.uploads == 1 + 6  # the initial model, then one delta per client and round
    assert sorted(stats.round_done_at) == [1, 2] and len(stats.round_seconds()) == 1
    assert status.completed_rounds == 2
    assert all(c.update_accepted for r in status.rounds for c in r.clients)
    assert rss > 0

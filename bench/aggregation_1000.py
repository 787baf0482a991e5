"""Aggregation of 1000 updates of 30 KB each (target: <= 100 ms).

Usage: ``.venv/bin/python -m bench.aggregation_1000 [--clients 1000] [--kib 30]``

Times the coordinator's aggregators on in-memory updates: ``fedavg`` (one global prompt),
``clustered`` and ``contrastive`` (a global plus a cluster segment, 4 clusters) and
DP-FedAvg of the global segment; prints the median of several runs for each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.aggregation.dp_fedavg import DPFedAvgGlobal
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


def _updates(
    n: int, spec: dict[str, tuple[int, int]], clusters: int, rng: np.random.Generator
) -> list[ClientUpdate]:
    return [
        ClientUpdate(
            client_id=f"c{i:05d}",
            cluster_id=i % clusters,
            num_examples=int(rng.integers(50, 500)),
            tensors={k: rng.standard_normal(s, dtype=np.float32) * 0.01 for k, s in spec.items()},
        )
        for i in range(n)
    ]


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--kib", type=float, default=30.0, help="update size per client")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    width = 384
    rows = max(2, round(args.kib * 1024 / 4 / width))
    rng = np.random.default_rng(0)
    cases: list[tuple[str, ClusterAggregator, FederationModel, list[ClientUpdate]]] = []
    # fedavg: one global tensor of the whole size
    g_spec = {"prompt.global": (rows, width)}
    g_model = FederationModel(
        global_tensors={"prompt.global": np.zeros((rows, width), np.float32)},
        cluster_tensors={},
        cluster_template={},
    )
    cases.append(
        (
            "fedavg (1 global tensor)",
            WeightedFedAvg(),
            g_model,
            _updates(args.clients, g_spec, 1, rng),
        )
    )
    # clustered / contrastive: global + cluster halves, 4 clusters
    half = rows // 2
    c_spec = {"prompt.global": (half, width), "prompt.cluster": (rows - half, width)}
    c_model = FederationModel(
        global_tensors={"prompt.global": np.zeros((half, width), np.float32)},
        cluster_tensors={
            k: {"prompt.cluster": rng.standard_normal((rows - half, width), dtype=np.float32)}
            for k in range(4)
        },
        cluster_template={"prompt.cluster": np.zeros((rows - half, width), np.float32)},
    )
    c_updates = _updates(args.clients, c_spec, 4, rng)
    cases.append(("clustered (4 clusters)", WeightedFedAvg(), c_model, c_updates))
    cases.append(("contrastive (4 clusters)", ContrastiveFedAvg(), c_model, c_updates))
    dp = DPFedAvgGlobal(
        ContrastiveFedAvg(),
        clip_norm=1.0,
        noise_multiplier=1.0,
        expected_participants=lambda: float(args.clients),
        server_learning_rate=1.0,
        rng=np.random.default_rng(1),
    )
    cases.append(("contrastive + DP-FedAvg", dp, c_model, c_updates))
    print(
        f"{args.clients} updates of {rows * width * 4 / 1024:.1f} KiB fp32 each; median of {args.repeats}"
    )
    for name, agg, model, updates in cases:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            agg.aggregate(model, updates)
            times.append(time.perf_counter() - t0)
        print(f"  {name:28s} {1000 * statistics.median(times):8.1f} ms  (target <= 100 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

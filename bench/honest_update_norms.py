"""L2 norms of honest updates, per tensor and per clipped part, on the bundled tasks.

Usage: ``.venv/bin/python bench/honest_update_norms.py [--tasks text vision]
[--strategies fpl fedavg lora-fedavg full-fedavg] [--rounds 3] [--clients 4]``

Each silo of ``fedprompt up``'s bundled data (same silos, seeds and training settings as
``fedprompt up --clients 4``: 15 local steps, batch 16, the strategy's learning rate) trains
from the federation's model with the real client runtime; its delta is what an honest agent
uploads. The rounds are aggregated by the coordinator's own aggregator without clipping or
a weight cap (the federation as it was), so the norms of later rounds are those of an
unclipped federation. Prints, per task and strategy, the median and largest norm of each
clipped part (global prompt, cluster prompt, head, LoRA, backbone) and the largest norm of
any single tensor: the figures that the default clip bounds and ``max_update_l2_norm`` are
chosen from (README, "Aggregation"). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedprompt.strategies import StrategyName, strategy_spec
from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.runtime import SiloRuntime
from fedprompt_coordinator.aggregation.parts import part_of
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import ClientUpdate, FederationModel
from fedprompt_coordinator.strategies import build_strategy

PLAIN = {"clipping": {"mode": "off"}, "max_weight_share": 1.0, "max_weight_multiple": None}


def make_silos(task: str, clients: int, out: Path) -> list[Path]:
    """The silos ``fedprompt up`` makes for ``task`` (seed 0)."""
    argv = [str(Path(sys.executable).parent / "fedprompt-make-silos"), "--task", task,
            "--num-silos", str(clients), "--seed", "0", "--out", str(out)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)
    return sorted(p for p in out.iterdir() if (p / "metadata.json").exists())


def measure(task: str, strategy: str, *, rounds: int, clients: int, work: Path) -> dict[str, list]:
    """Per-part and per-tensor norms of every client's delta in every round."""
    silos = make_silos(task, clients, work / f"silos-{task}")
    spec = strategy_spec(strategy)
    runtimes = [
        SiloRuntime(
            ClientAgentConfig(
                client_id=silo.name,
                data_dir=silo,
                state_dir=work / strategy / silo.name,
                strategy=StrategyName(strategy),
                max_length=96,
                seed=0,
                torch_threads=2,
                device="cpu",
            )
        )
        for silo in silos
    ]
    config = CoordinatorConfig(strategy=StrategyName(strategy), aggregation=PLAIN)  # type: ignore[arg-type]
    coordinator = build_strategy(config)
    aggregator = coordinator.make_aggregator()
    glob, clus = coordinator.split_levels(runtimes[0].shared_state())
    model = FederationModel(glob, {}, {k: v.copy() for k, v in clus.items()})
    clusters = [i % 2 if spec.clustered else 0 for i in range(len(runtimes))]  # the demo's groups
    settings = config.training
    contrastive = config.contrastive
    out: dict[str, list] = defaultdict(list)
    for r in range(1, rounds + 1):
        updates = []
        extras = coordinator.round_start_tensors(model, sorted(set(clusters)))
        for runtime, cluster in zip(runtimes, clusters, strict=True):
            start = model.for_cluster(cluster)
            runtime.load_shared_state(start)
            centroids = {
                int(k.split(".")[1]): v for k, v in extras.items() if k.startswith("centroid.")
            }
            runtime.train(
                TrainSettings(
                    local_steps=15,
                    batch_size=16,
                    learning_rate=spec.learning_rate(task),
                    head_learning_rate=settings.head_learning_rate,
                    contrastive_weight=contrastive.weight if strategy == "fpl" else 0.0,
                    contrastive_temperature=contrastive.temperature,
                    cluster_id=cluster,
                    centroids=centroids,
                )
            )
            after = runtime.shared_state()
            delta = {k: (after[k].astype(np.float64) - start[k]).astype(np.float32) for k in start}
            updates.append(
                ClientUpdate(runtime.client_id, cluster, runtime.num_train_examples, delta)
            )
            squares: dict[str, float] = defaultdict(float)
            for name, value in delta.items():
                sq = float(np.sum(np.square(value, dtype=np.float64)))
                squares[part_of(name).value] += sq
                out["tensor"].append((r, name, sq**0.5))
            for part, sq in squares.items():
                out[part].append((r, sq**0.5))
        model = aggregator.aggregate(model, updates)
        print(f"  {task} {strategy}: round {r} done", file=sys.stderr, flush=True)
    return out


def main() -> int:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument(
        "--strategies", nargs="+", default=["fpl", "fedavg", "lora-fedavg", "full-fedavg"]
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()
    print("| task | strategy | part | median norm | max norm | largest tensor (norm) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for strategy in args.strategies:
                norms = measure(
                    task, strategy, rounds=args.rounds, clients=args.clients, work=Path(tmp)
                )
                _, name, top = max(norms.pop("tensor"), key=lambda t: t[2])
                for part, values in norms.items():
                    v = np.array([x for _, x in values])
                    print(
                        f"| {task} | {strategy} | {part} | {np.median(v):.3g} | {v.max():.3g} "
                        f"| {name} ({top:.3g}) |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

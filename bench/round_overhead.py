"""Round overhead against the number of clients: no-op training, random 30 KB deltas.

Usage: ``.venv/bin/python -m bench.round_overhead [--clients 10 100 1000] [--rounds 6]``

For each fleet size a real coordinator process (strategy ``fedavg``, SQLite state, durable
checkpoints) runs ``--rounds`` rounds with light clients (bench/light_clients.py: real gRPC,
no model) that upload random deltas of ``--kib`` KiB. Client compute is zero, so a round's
wall time is its overhead. Prints per fleet size: the median of the coordinator's
``round_seconds`` (round start to checkpoint), the median wall time between consecutive
round completions as clients see them, and the coordinator's peak RSS.
Targets: 10 clients <= 50 ms median; 1000 clients <= 2 s per round and RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.light_clients import CoordinatorProcess, run_light_clients, tensor_spec_for_bytes
from fedprompt.strategies import StrategyName


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--kib", type=float, default=30.0)
    p.add_argument("--clients-per-channel", type=int, default=1)
    p.add_argument("--strategy", default=StrategyName.FEDAVG.value)
    args = p.parse_args()
    spec = tensor_spec_for_bytes(int(args.kib * 1024))
    print(
        f"update {spec[0].nbytes / 1024:.1f} KiB fp32, {args.rounds} rounds, strategy {args.strategy}"
    )
    print(
        f"{'clients':>8} {'coord median s':>15} {'client median s':>16} {'max s':>7} "
        f"{'peak RSS MiB':>13} {'coord CPU ms/round':>18} ok"
    )
    failed = False
    for n in args.clients:
        with (
            tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp,
            CoordinatorProcess.start(
                Path(tmp), rounds=args.rounds, expected_clients=n, strategy=args.strategy
            ) as coord,
        ):
            cpu0 = coord.cpu_seconds()
            stats = asyncio.run(
                run_light_clients(
                    coord.address,
                    n,
                    args.rounds,
                    spec,
                    strategy=args.strategy,
                    clients_per_channel=args.clients_per_channel,
                    timeout_s=1800,
                )
            )
            cpu = coord.cpu_seconds() - cpu0
            rss = coord.peak_rss_bytes()
            coord_rounds = coord.round_seconds()
            phases = coord.phase_medians()
        client_rounds = stats.round_seconds()
        failed |= not stats.ok
        print(
            f"{n:>8} {statistics.median(coord_rounds):>15.4f} "
            f"{statistics.median(client_rounds) if client_rounds else float('nan'):>16.4f} "
            f"{max(coord_rounds):>7.3f} {rss / 1024**2:>13.1f} "
            f"{1000 * cpu / args.rounds:>18.1f} {stats.ok}"
            + (f"  errors: {stats.errors[:2]}" if stats.errors else ""),
            flush=True,
        )
        print("         phase medians (s): " + ", ".join(f"{k}={v:.4f}" for k, v in phases.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

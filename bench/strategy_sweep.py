"""Short runs of every strategy on the bundled text and vision tasks; prints one table.

Usage: ``.venv/bin/python bench/strategy_sweep.py [--rounds 3] [--clients 4] [--out runs/sweep]``

Each run is a real ``fedprompt up`` federation on loopback (separate processes). The table
reports, per run: mean and worst client accuracy of the aggregated model after the last
round, Jain's fairness index, bytes sent up per client per round as counted on the wire,
the client-level ε of DP-FedAvg (if on), the record-level ε of DP-SGD (if on) and wall time.
This is a smoke-level comparison (one seed, few rounds), not the evaluation report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fedprompt.strategies import STRATEGY_NAMES, TASKS, StrategyName

RUNS: list[tuple[str, str, list[str]]] = [
    *[(task, s, []) for task in TASKS for s in STRATEGY_NAMES],
    ("text", StrategyName.FPL, ["--dp-epsilon", "4"]),
    ("text", StrategyName.FPL, ["--dp-sgd-epsilon", "8"]),
    ("vision", StrategyName.FPL, ["--dp-epsilon", "4"]),
]


def main() -> int:
    """Run the sweep and print the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    args = p.parse_args()
    bindir = Path(sys.executable).parent
    rows = []
    for task, strategy, extra in RUNS:
        tag = f"{task}-{strategy}{''.join(extra).replace('--', '-')}"
        run_dir = args.out / tag
        task_flags = (
            ["--max-length", "64"]
            if task == "text"
            else ["--max-images", "2000", "--batch-size", "32"]
        )
        started = time.monotonic()
        proc = subprocess.run(
            [str(bindir / "fedprompt"), "up", "--clients", str(args.clients), "--rounds",
             str(args.rounds), "--local-steps", str(args.local_steps), "--strategy", strategy,
             "--task", task, "--run-dir", str(run_dir), *task_flags, *extra],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.monotonic() - started
        if proc.returncode != 0:
            print(f"{tag}: FAILED\n{proc.stdout[-2000:]}{proc.stderr[-1000:]}", file=sys.stderr)
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        last = summary["rounds"][-1]["summary"]
        clients = summary["clients"].values()
        up = sum(c["bytes_up_per_round"] for c in clients) / len(summary["clients"])
        dp_sgd = [
            max(
                (r["train"].get("train_dp_sgd_epsilon", 0.0) for r in c["rounds"].values()),
                default=0,
            )
            for c in clients
        ]
        rows.append(
            (tag, last.get("accuracy_mean", 0), last.get("accuracy_worst", 0),
             last.get("jain_index", 0), up, summary.get("epsilon", 0.0), max(dp_sgd), wall)
        )  # fmt: skip
        print(f"done {tag} in {wall:.0f} s", file=sys.stderr, flush=True)
    header = (
        "| run | mean acc | worst acc | Jain | up/client/round | ε DP-FedAvg | ε DP-SGD | wall s |"
    )
    print(header)
    print("|" + "---|" * 8)
    for tag, mean, worst, jain, up, eps, eps_sgd, wall in rows:
        print(
            f"| {tag} | {mean:.3f} | {worst:.3f} | {jain:.3f} | {up / 1024:,.1f} KiB | "
            f"{eps:.2f} | {eps_sgd:.2f} | {wall:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

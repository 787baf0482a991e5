"""A federation of many real silos on one machine: wall time, round times and peak memory.

Usage: ``.venv/bin/python -m bench.many_silos [--clients 100] [--clients-per-process 50]
[--rounds 3] [--local-steps 3] [--max-length 64] [--task text] [--sequential-too]``

Runs ``fedprompt up`` (fpl, mutual TLS, the clusterer, the bundled task split into
``--clients`` clinics) with the client agents hosted ``--clients-per-process`` to a process,
each host training its open tasks together (one backbone pass per step), and prints from
the run's ``summary.json``: the wall time, the seconds per round, the mean and worst client
accuracy after the last round, and the peak resident memory (``VmHWM``) of every process.
With ``--sequential-too`` it runs the same federation again with ``--sequential`` hosts
(every silo trained alone, one after another) for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace, run_dir: Path, *, sequential: bool) -> dict[str, Any]:
    """One ``fedprompt up``; returns its summary (plus the launcher's wall time)."""
    argv = [
        sys.executable, "-m", "fedprompt_cli", "up",
        "--clients", str(args.clients),
        "--clients-per-process", str(args.clients_per_process),
        "--rounds", str(args.rounds),
        "--local-steps", str(args.local_steps),
        "--max-length", str(args.max_length),
        "--task", args.task,
        "--torch-threads", str(args.torch_threads),
        "--timeout-s", str(args.timeout_s),
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    if sequential:
        argv.append("--sequential-hosts")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"fedprompt up failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    summary["launcher_seconds"] = wall
    return summary


def report(name: str, summary: dict[str, Any]) -> None:
    """Print the figures of one run."""
    rounds = [r["summary"] for r in summary.get("rounds", [])]
    print(f"## {name}")
    print(f"wall: {summary['launcher_seconds']:.1f} s (federation {summary['wall_seconds']:.1f} s)")
    if rounds:
        print("seconds per round: " + ", ".join(f"{r['round_seconds']:.1f}" for r in rounds))
        print("  of which training: " + ", ".join(f"{r['training_seconds']:.1f}" for r in rounds))
    after = [
        c["accuracy_after"]
        for c in summary["clients"].values()
        if c.get("accuracy_after") is not None
    ]
    if after:
        print(
            f"accuracy after the last round: mean {100 * sum(after) / len(after):.1f} %, worst "
            f"{100 * min(after):.1f} % over the {len(after)} of {len(summary['clients'])} "
            "clients with a test split"
        )
    for process, peak in sorted(summary.get("peak_rss_bytes", {}).items()):
        print(f"peak RSS {process}: {peak / 2**20:,.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--clients-per-process", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--task", choices=["text", "vision"], default="text")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=3600)
    p.add_argument("--sequential-too", action="store_true")
    args = p.parse_args()
    print(
        f"{args.clients} {args.task} silos, {args.clients_per_process} per process, "
        f"{args.rounds} rounds x {args.local_steps} steps, max_length {args.max_length}, fpl, mTLS"
    )
    with tempfile.TemporaryDirectory(prefix="many-silos-") as tmp:
        report("batched hosts", run(args, Path(tmp) / "batched", sequential=False))
        if args.sequential_too:
            report("sequential hosts", run(args, Path(tmp) / "sequential", sequential=True))


if __name__ == "__main__":
    main()

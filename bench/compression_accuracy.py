"""Effect of upload compression (none, fp16, int8) on accuracy and upload bytes.

Usage: ``.venv/bin/python -m bench.compression_accuracy [--rounds 3] [--clients 4]
[--local-steps 10] [--out runs/compress] [--reuse]``

Runs one real ``fedprompt up`` federation (strategy ``fpl``, text task, same seed) per
compression method, the client agents configured through
``FEDPROMPT_CLIENT_UPLOAD_COMPRESSION``, and prints the aggregated model's mean and worst
client accuracy after the last round and the bytes each client sent up per round.
``--reuse`` reads finished runs from ``--out`` instead of running them again.
One seed, few rounds: a smoke-level comparison. The evaluation report's comparison (both
tasks, three seeds, against the seed spread) is ``fedprompt bench --compression``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fedprompt.strategies import StrategyName

METHODS = ("none", "fp16", "int8")


def main() -> int:
    """Run (or reuse) the three federations and print the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/compress"))
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    bindir = Path(sys.executable).parent
    print("| upload compression | mean acc | worst acc | up bytes/client/round | wall s |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        run_dir = Path(f"{args.out}-{method}")
        wall = float("nan")
        if not (args.reuse and (run_dir / "summary.json").exists()):
            started = time.monotonic()
            proc = subprocess.run(
                [str(bindir / "fedprompt"), "up", "--clients", str(args.clients), "--rounds",
                 str(args.rounds), "--local-steps", str(args.local_steps), "--strategy", StrategyName.FPL,
                 "--task", "text", "--max-length", "64", "--run-dir", str(run_dir)],
                env={**os.environ, "FEDPROMPT_CLIENT_UPLOAD_COMPRESSION": method},
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.monotonic() - started
            if proc.returncode != 0:
                print(f"| {method} | FAILED: {proc.stderr[-300:]!r} | | | |")
                continue
        summary = json.loads((run_dir / "summary.json").read_text())
        last = summary["rounds"][-1]["summary"]
        clients = summary["clients"].values()
        up = sum(c["bytes_up_per_round"] for c in clients) / len(summary["clients"])
        wall = summary.get("wall_seconds", wall)
        print(
            f"| {method} | {last.get('accuracy_mean', 0):.4f} | "
            f"{last.get('accuracy_worst', 0):.4f} | {up:,.0f} | {wall:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One ``fedprompt up`` federation of ``fpl`` under a named variant, shared by the bench
scripts that compare variants of one honest federation (``defence_accuracy``,
``privacy_accuracy``): the same silos, seeds and budget for every variant, which differs
only in its flags and coordinator environment."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedprompt.strategies import StrategyName


def run_fpl(
    run_dir: Path,
    *,
    task: str,
    seed: int,
    clients: int,
    rounds: int,
    local_steps: int,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    reuse: bool = False,
) -> tuple[dict[str, Any], float]:
    """The run's summary (made now, or read when ``reuse`` finds it) and its wall seconds.

    Raises
    ------
    RuntimeError
        When ``fedprompt up`` fails (with the tail of its output).
    """
    started = time.monotonic()
    if not (reuse and (run_dir / "summary.json").exists()):
        command = [
            str(Path(sys.executable).parent / "fedprompt"), "up",
            "--clients", str(clients), "--rounds", str(rounds),
            "--local-steps", str(local_steps), "--strategy", StrategyName.FPL.value,
            "--task", task, "--seed", str(seed), "--max-length", "64",
            "--clients-per-process", str(clients), "--run-dir", str(run_dir),
            *flags,
        ]  # fmt: skip
        proc = subprocess.run(
            command, env={**os.environ, **(env or {})}, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{run_dir.name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary, float(summary.get("wall_seconds", time.monotonic() - started))


def last_accuracy(summary: Mapping[str, Any]) -> dict[str, float]:
    """Mean and worst client accuracy of the last round."""
    last = summary["rounds"][-1]["summary"]
    return {"mean": float(last["accuracy_mean"]), "worst": float(last["accuracy_worst"])}


def spread(values: list[float]) -> str:
    """``mean ± std`` in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"

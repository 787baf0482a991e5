"""FedProx's μ for fpl, chosen on validation splits (never test) against μ = 0.

Usage: ``.venv/bin/python -m bench.fedprox_grid [--tasks text vision] [--seeds 0 1]
[--mus 0.01 0.1 1] [--reference reports/full] [--out runs/fedprox]``

Runs ``fpl`` with each μ (``fedprompt up --proximal-mu``) at the ``make bench`` budget on
the ``make bench`` silos of each task and seed (made with ``fedprompt-make-silos`` when the
reference report's work folder no longer holds them). μ = 0 is plain ``fpl``: its runs are
taken from ``--reference``'s ``runs.jsonl`` when it holds them with the same settings, and
run here otherwise. Prints, per task and μ, every client's *validation* accuracy after the
last round, averaged over clients and seeds, and the paired difference to μ = 0 (one per
client and seed) with a 95 % two-stage bootstrap interval (``fedprompt_cli.bench_stats``).
The last line per task names the μ with the best mean validation accuracy and whether its
interval clears 0; test splits are not read.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedprompt_cli.bench import (
    RUNS_FILE,
    _load_done,
    _make_silos,
    _options,
    _same_settings,
    silos_folder,
    untuned_learning_rates,
)
from fedprompt_cli.bench_plan import METHOD, BenchPlan, RunSpec, full_plan
from fedprompt_cli.bench_stats import paired_interval
from fedprompt_cli.up import run_up

ValAccs = dict[str, float]


def validation_accuracies(summary: dict[str, Any]) -> ValAccs:
    """Every client's validation accuracy after the last round, by client id."""
    last = int(summary["rounds"][-1]["round"])
    out: ValAccs = {}
    for cid, client in summary["clients"].items():
        entry = {int(k): v for k, v in client.get("rounds", {}).items()}.get(last, {})
        if "val_accuracy" in entry.get("eval", {}):
            out[cid] = float(entry["eval"]["val_accuracy"])
    if not out:
        raise ValueError("no client reported a validation accuracy in the last round")
    return out


def _reference(path: Path, plan: BenchPlan) -> dict[str, dict[str, Any]]:
    """The reference report's finished runs made with this plan's settings."""
    done = _load_done(path / RUNS_FILE)
    return {name: r for name, r in done.items() if _same_settings(r, plan)}


def _run(
    spec: RunSpec, plan: BenchPlan, work: Path, out: Path, mu: float, console: Console
) -> ValAccs:
    """fpl with μ on the silos of ``spec`` under ``work`` (made there when missing)."""
    run_dir = out / f"{spec.name}-mu{mu:g}"
    if not (run_dir / "summary.json").exists():
        silos = _make_silos(spec, plan, silos_folder(work, spec))
        options = replace(_options(spec, plan, out, silos), run_dir=run_dir, proximal_mu=mu)
        code = run_up(options, console)
        if code != 0:
            raise SystemExit(f"{run_dir.name} failed (exit {code}); logs in {run_dir / 'logs'}")
    return validation_accuracies(json.loads((run_dir / "summary.json").read_text()))


def main() -> int:
    """Run the grid and print the validation table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--mus", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--reference", type=Path, default=Path("reports/full"))
    p.add_argument("--out", type=Path, default=Path("runs/fedprox"))
    args = p.parse_args()
    plan = replace(full_plan(), seeds=tuple(args.seeds))
    plan = replace(plan, tasks={t: plan.tasks[t] for t in args.tasks})
    chosen = untuned_learning_rates(plan)
    reference = _reference(args.reference, plan)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Console(file=(args.out / "fedprox.log").open("a"), width=150)
    # when the reference report's work folder holds the silos, use exactly those
    work = args.reference / "work" if (args.reference / "work" / "silos").is_dir() else args.out
    print("| task | μ | seeds | mean val acc % | μ minus 0 (points) | 95 % CI | pairs |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        base: dict[int, ValAccs] = {}
        for seed in plan.seeds:
            spec = RunSpec("tune", task, METHOD, seed, chosen[(task, METHOD)])
            record = reference.get(spec.name)
            if record is not None:
                base[seed] = validation_accuracies(record["summary"])
            else:
                base[seed] = _run(spec, plan, work, args.out, 0.0, log)
        mean0 = statistics.fmean(v for accs in base.values() for v in accs.values())
        print(f"| {task} | 0 | {list(plan.seeds)} | {100 * mean0:.1f} | - | - | - |")
        best: tuple[float, float, tuple[float, float] | None] = (0.0, mean0, None)
        for mu in args.mus:
            pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            values = []
            for seed in plan.seeds:
                spec = RunSpec("tune", task, METHOD, seed, chosen[(task, METHOD)])
                accs = _run(spec, plan, work, args.out, mu, log)
                clients = sorted(set(accs) & set(base[seed]))
                pairs[seed] = (
                    np.array([accs[c] for c in clients]),
                    np.array([base[seed][c] for c in clients]),
                )
                values += [accs[c] for c in clients]
            diff = statistics.fmean(
                float(d) for ours, theirs in pairs.values() for d in ours - theirs
            )
            low, high = paired_interval(pairs)
            mean = statistics.fmean(values)
            n = sum(len(o) for o, _ in pairs.values())
            print(
                f"| {task} | {mu:g} | {list(plan.seeds)} | {100 * mean:.1f} | {100 * diff:+.1f} | "
                f"{100 * low:+.1f} to {100 * high:+.1f} | {n} |"
            )
            if mean > best[1]:
                best = (mu, mean, (low, high))
        mu, mean, ci = best
        if ci is None:
            print(f"\n{task}: no μ > 0 beats plain fpl on mean validation accuracy: keep μ = 0.\n")
        else:
            clears = "clears 0" if ci[0] > 0 else "does not clear 0"
            print(
                f"\n{task}: best μ = {mu:g} ({100 * mean:.1f} % mean validation accuracy); its "
                f"paired interval {clears}.\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cluster refinement's r for fpl, chosen on validation splits, then read on test.

Usage: ``.venv/bin/python -m bench.refine_grid [--tasks text vision] [--seeds 0 1]
[--scenarios clinics misleading-metadata] [--points 1:0.1 1:0.25 2:0.1]
[--baselines local clustered] [--test R:M] [--reference reports/full] [--out runs/refine]``

Runs ``fpl`` with cluster refinement after ``r`` rounds of update alignment with margin
``m`` (``fedprompt up --refine-after-rounds r --refine-margin m``; a grid point is ``r:m``)
at the ``make bench`` budget on the ``make bench`` silos of each task, scenario and seed.
r = 0 is plain ``fpl``; its runs (and the ``--baselines``') are taken from
``--reference``'s ``runs.jsonl`` when it holds them with the same settings, and run here
otherwise.

Without ``--test`` it prints, per task, scenario and grid point, every client's *validation*
accuracy after the last round averaged over clients and seeds, and the paired difference to
r = 0 (one pair per client and seed) with a 95 % two-stage bootstrap interval
(``fedprompt_cli.bench_stats``); test splits are not read. With ``--test R:M`` (chosen on
that table) it prints the *test* accuracy of fpl with that point against plain fpl and each
baseline, mean and worst client, paired per client over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.fedprox_grid import _reference, validation_accuracies
from fedprompt_cli.bench import _make_silos, _options, silos_folder, untuned_learning_rates
from fedprompt_cli.bench_plan import METHOD, BenchPlan, RunSpec, full_plan
from fedprompt_cli.bench_stats import paired_interval
from fedprompt_cli.up import run_up

Accs = dict[str, float]
Pairs = dict[int, tuple[np.ndarray, np.ndarray]]
#: A grid point: (r, margin); r = 0 is plain fpl.
Point = tuple[int, float]
PLAIN: Point = (0, 0.0)


def parse_point(text: str) -> Point:
    """``r:m`` as (r, m)."""
    r, _, m = text.partition(":")
    return int(r), float(m or 0.0)


def test_accuracies(summary: dict[str, Any]) -> Accs:
    """Every client's test accuracy after the last round, by client id."""
    last = int(summary["rounds"][-1]["round"])
    out: Accs = {}
    for cid, client in summary["clients"].items():
        entry = {int(k): v for k, v in client.get("rounds", {}).items()}.get(last, {})
        if "accuracy" in entry.get("eval", {}):
            out[cid] = float(entry["eval"]["accuracy"])
    if not out:
        raise ValueError("no client reported a test accuracy in the last round")
    return out


def run_summary(
    spec: RunSpec,
    plan: BenchPlan,
    work: Path,
    out: Path,
    *,
    suffix: str,
    knobs: dict[str, Any],
    reference: dict[str, dict[str, Any]],
    console: Console,
) -> dict[str, Any]:
    """The summary of ``spec`` with ``knobs`` set on its ``fedprompt up`` options.

    Without knobs (``suffix`` empty) it comes from the reference when held there; every
    other run is made once under ``out`` (its folder is the run's name plus ``suffix``) and
    read from there afterwards.
    """
    if not suffix and spec.name in reference:
        summary: dict[str, Any] = reference[spec.name]["summary"]
        return summary
    run_dir = out / f"{spec.name}{suffix}"
    if not (run_dir / "summary.json").exists():
        silos = _make_silos(spec, plan, silos_folder(work, spec))
        options = replace(_options(spec, plan, out, silos), run_dir=run_dir, **knobs)
        code = run_up(options, console)
        if code != 0:
            raise SystemExit(f"{run_dir.name} failed (exit {code}); logs in {run_dir / 'logs'}")
    loaded: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return loaded


@dataclass
class Grid:
    """What every run of a validation grid shares: the plan (the ``make bench`` budget on the
    chosen tasks and seeds), its learning rates, the reference runs and where runs go."""

    plan: BenchPlan
    rates: dict[tuple[str, str], float]
    reference: dict[str, dict[str, Any]]
    work: Path
    out: Path
    console: Console

    @classmethod
    def from_args(cls, args: argparse.Namespace, log_name: str) -> Grid:
        """The grid of ``--tasks``, ``--seeds``, ``--reference`` and ``--out``."""
        plan = replace(full_plan(), seeds=tuple(args.seeds))
        plan = replace(plan, tasks={t: plan.tasks[t] for t in args.tasks})
        args.out.mkdir(parents=True, exist_ok=True)
        reference_silos = args.reference / "work" / "silos"
        return cls(
            plan=plan,
            rates=untuned_learning_rates(plan),
            reference=_reference(args.reference, plan),
            work=args.reference / "work" if reference_silos.is_dir() else args.out,
            out=args.out,
            console=Console(file=(args.out / log_name).open("a"), width=150),
        )

    def accuracies(
        self,
        task: str,
        scenario: str,
        strategy: str,
        *,
        suffix: str,
        knobs: dict[str, Any],
        test: bool,
    ) -> dict[int, Accs]:
        """Per seed, every client's test (or validation) accuracy after the last round."""
        read = test_accuracies if test else validation_accuracies
        out: dict[int, Accs] = {}
        for seed in self.plan.seeds:
            rate = self.rates[(task, strategy)]
            spec = RunSpec("eval", task, strategy, seed, rate, scenario=scenario)
            summary = run_summary(
                spec,
                self.plan,
                self.work,
                self.out,
                suffix=suffix,
                knobs=knobs,
                reference=self.reference,
                console=self.console,
            )
            out[seed] = read(summary)
        return out


def paired(ours: dict[int, Accs], theirs: dict[int, Accs]) -> tuple[Pairs, list[float]]:
    """Per seed, the clients both sides report, as paired arrays; and every difference."""
    pairs: Pairs = {}
    diffs: list[float] = []
    for seed in ours:
        clients = sorted(set(ours[seed]) & set(theirs[seed]))
        a = np.array([ours[seed][c] for c in clients])
        b = np.array([theirs[seed][c] for c in clients])
        pairs[seed] = (a, b)
        diffs += [float(d) for d in a - b]
    return pairs, diffs


def worst_pairs(ours: dict[int, Accs], theirs: dict[int, Accs]) -> Pairs:
    """One pair per seed: the worst client's accuracy of each side."""
    return {
        seed: (np.array([min(ours[seed].values())]), np.array([min(theirs[seed].values())]))
        for seed in ours
    }


def main() -> int:
    """Run the grid and print the validation (or, with --test, the test) table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--scenarios", nargs="+", default=["clinics", "misleading-metadata"])
    p.add_argument("--points", type=parse_point, nargs="+", default=[(1, 0.1), (1, 0.25), (2, 0.1)])
    p.add_argument("--baselines", nargs="+", default=["local", "clustered"])
    p.add_argument("--test", type=parse_point, default=None, help="r:m chosen on validation")
    p.add_argument("--reference", type=Path, default=Path("reports/full"))
    p.add_argument("--out", type=Path, default=Path("runs/refine"))
    args = p.parse_args()
    grid = Grid.from_args(args, "refine.log")

    def accs(task: str, scenario: str, strategy: str, point: Point, test: bool) -> dict[int, Accs]:
        refine, margin = point
        if refine == 0:
            return grid.accuracies(task, scenario, strategy, suffix="", knobs={}, test=test)
        knobs = {"refine_after_rounds": refine, "refine_margin": margin}
        suffix = f"-refine{refine}-m{margin:g}"
        return grid.accuracies(task, scenario, strategy, suffix=suffix, knobs=knobs, test=test)

    if args.test is None:
        print(
            "| task | scenario | r | margin | mean val acc % | minus plain fpl (points) | "
            "95 % CI | pairs |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for task in args.tasks:
            for scenario in args.scenarios:
                base = accs(task, scenario, METHOD, PLAIN, False)
                mean0 = statistics.fmean(v for a in base.values() for v in a.values())
                print(f"| {task} | {scenario} | 0 | - | {100 * mean0:.1f} | - | - | - |")
                for point in args.points:
                    ours = accs(task, scenario, METHOD, point, False)
                    pairs, diffs = paired(ours, base)
                    low, high = paired_interval(pairs)
                    mean = statistics.fmean(v for a in ours.values() for v in a.values())
                    print(
                        f"| {task} | {scenario} | {point[0]} | {point[1]:g} | {100 * mean:.1f} | "
                        f"{100 * statistics.fmean(diffs):+.1f} | "
                        f"{100 * low:+.1f} to {100 * high:+.1f} | {len(diffs)} |"
                    )
        return 0
    print(
        f"| task | scenario | fpl r={args.test[0]} m={args.test[1]:g} minus | "
        "mean test acc % (theirs) | "
        "mean diff (95 % CI) | worst-client diff (95 % CI) | pairs |"
    )
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for scenario in args.scenarios:
            ours = accs(task, scenario, METHOD, args.test, True)
            mean_ours = statistics.fmean(v for a in ours.values() for v in a.values())
            for other in (METHOD, *args.baselines):
                theirs = accs(task, scenario, other, PLAIN, True)
                pairs, diffs = paired(ours, theirs)
                low, high = paired_interval(pairs)
                worst = worst_pairs(ours, theirs)
                w_diff = statistics.fmean(float(a[0] - b[0]) for a, b in worst.values())
                w_low, w_high = paired_interval(worst)
                mean_theirs = statistics.fmean(v for a in theirs.values() for v in a.values())
                print(
                    f"| {task} | {scenario} | {other} | {100 * mean_ours:.1f} "
                    f"({100 * mean_theirs:.1f}) | {100 * statistics.fmean(diffs):+.1f} "
                    f"({100 * low:+.1f} to {100 * high:+.1f}) | {100 * w_diff:+.1f} "
                    f"({100 * w_low:+.1f} to {100 * w_high:+.1f}) | {len(diffs)} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

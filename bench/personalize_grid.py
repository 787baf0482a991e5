"""The final personalization pass's steps, chosen on validation splits, then read on test.

Usage: ``.venv/bin/python -m bench.personalize_grid [--tasks text vision] [--seeds 0 1]
[--scenarios clinics] [--steps 8 32] [--strategies fpl local] [--test K]
[--baselines local clustered] [--reference reports/full] [--out runs/personalize]``

Runs each of ``--strategies`` with the clients' personalization pass of K steps at every
evaluation (``fedprompt up --personalize-steps K``: a copy of the aggregate whose local
segment and head alone train on the silo's own training split, then evaluated) at the
``make bench`` budget on the ``make bench`` silos. Without the pass a run is taken from
``--reference``'s ``runs.jsonl`` when held there with the same settings, and run here
otherwise. The pass is applied to ``local`` too, since on ``local`` it is simply more local
training: fpl's gain from the pass is only its own where it exceeds local's.

Without ``--test`` it prints, per task, scenario, strategy and K, the clients' *validation*
accuracy after the last round (the personalized copy's when K > 0) and the paired difference
to the same strategy without the pass, with a 95 % two-stage bootstrap interval; test splits
are not read. With ``--test K`` (chosen on that table) it prints the *test* accuracy of fpl
with the pass against fpl without it, against ``local`` with the same pass, and against each
baseline, mean and worst client, paired per client over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.refine_grid import Accs, Grid, paired, worst_pairs
from fedprompt_cli.bench_plan import METHOD
from fedprompt_cli.bench_stats import paired_interval


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    """Run the grid and print the validation (or, with --test, the test) table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--scenarios", nargs="+", default=["clinics"])
    p.add_argument("--steps", type=int, nargs="+", default=[8, 32])
    p.add_argument("--strategies", nargs="+", default=[METHOD, "local"])
    p.add_argument("--baselines", nargs="+", default=["local", "clustered"])
    p.add_argument("--test", type=int, default=None, help="K chosen on validation")
    p.add_argument("--reference", type=Path, default=Path("reports/full"))
    p.add_argument("--out", type=Path, default=Path("runs/personalize"))
    args = p.parse_args()
    grid = Grid.from_args(args, "personalize.log")

    def accs(task: str, scenario: str, strategy: str, steps: int, test: bool) -> dict[int, Accs]:
        knobs: dict[str, Any] = {"personalize_steps": steps} if steps else {}
        suffix = f"-personalize{steps}" if steps else ""
        return grid.accuracies(task, scenario, strategy, suffix=suffix, knobs=knobs, test=test)

    def mean(values: dict[int, Accs]) -> float:
        return statistics.fmean(v for a in values.values() for v in a.values())

    if args.test is None:
        print(
            "| task | scenario | strategy | K | mean val acc % | minus K = 0 (points) | "
            "95 % CI | pairs |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for task in args.tasks:
            for scenario in args.scenarios:
                for strategy in args.strategies:
                    base = accs(task, scenario, strategy, 0, False)
                    print(
                        _row([task, scenario, strategy, "0", f"{100 * mean(base):.1f}"] + ["-"] * 3)
                    )
                    for k in args.steps:
                        ours = accs(task, scenario, strategy, k, False)
                        pairs, diffs = paired(ours, base)
                        low, high = paired_interval(pairs)
                        print(
                            _row(
                                [
                                    task,
                                    scenario,
                                    strategy,
                                    str(k),
                                    f"{100 * mean(ours):.1f}",
                                    f"{100 * statistics.fmean(diffs):+.1f}",
                                    f"{100 * low:+.1f} to {100 * high:+.1f}",
                                    str(len(diffs)),
                                ]
                            )
                        )
        return 0
    k = args.test
    print(
        f"| task | scenario | fpl with K={k} minus | mean test acc % (theirs) | "
        "mean diff (95 % CI) | worst-client diff (95 % CI) | pairs |"
    )
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for scenario in args.scenarios:
            ours = accs(task, scenario, METHOD, k, True)
            others = [(METHOD, 0), ("local", k)] + [(b, 0) for b in args.baselines]
            for other, steps in others:
                theirs = accs(task, scenario, other, steps, True)
                pairs, diffs = paired(ours, theirs)
                low, high = paired_interval(pairs)
                worst = worst_pairs(ours, theirs)
                w_diff = statistics.fmean(float(a[0] - b[0]) for a, b in worst.values())
                w_low, w_high = paired_interval(worst)
                name = f"{other} with K={steps}" if steps else other
                print(
                    _row(
                        [
                            task,
                            scenario,
                            name,
                            f"{100 * mean(ours):.1f} ({100 * mean(theirs):.1f})",
                            f"{100 * statistics.fmean(diffs):+.1f} "
                            f"({100 * low:+.1f} to {100 * high:+.1f})",
                            f"{100 * w_diff:+.1f} ({100 * w_low:+.1f} to {100 * w_high:+.1f})",
                            str(len(diffs)),
                        ]
                    )
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

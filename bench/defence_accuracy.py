"""What the default defences against a hostile member cost an honest federation in accuracy.

Usage: ``.venv/bin/python -m bench.defence_accuracy [--tasks text vision] [--seeds 0 1 2]
[--rounds 5] [--local-steps 10] [--clients 4] [--out runs/defences] [--reuse]``

Runs real ``fedprompt up`` federations (strategy ``fpl``, the bundled silos of each task,
the same seeds for every variant) and prints, per task and variant, the aggregated model's
mean and worst client accuracy after the last round over the seeds (mean ± std, with the
per-seed values), and the paired difference to the undefended run of the same seed:

- ``none``: no clipping and no cap on a member's share (the coordinator before issue 12;
  only the hard ``max_update_l2_norm`` remains);
- ``default``: the coordinator's defaults (per-client adaptive clipping of every part, each
  member's weight the smaller of its two counts and capped);
- ``median``: the defaults plus the coordinate-wise median on the global level;
- ``multi-krum``: the defaults plus multi-Krum on both levels.

The variants are set through the coordinator's environment (``FEDPROMPT_COORDINATOR_...``),
which ``fedprompt up`` passes to the processes it starts. ``--reuse`` reads finished runs
from ``--out`` instead of running them again. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.fpl_variants import last_accuracy, run_fpl, spread

_ENV = "FEDPROMPT_COORDINATOR_AGGREGATION__"
#: Coordinator settings of each variant (environment overrides of ``aggregation:``).
VARIANTS: dict[str, dict[str, str]] = {
    "none": {
        f"{_ENV}CLIPPING__MODE": "off",
        f"{_ENV}MAX_WEIGHT_SHARE": "1.0",
        f"{_ENV}MAX_WEIGHT_MULTIPLE": "1000000",
    },
    "default": {},
    "median": {f"{_ENV}GLOBAL_RULE": "median"},
    "multi-krum": {f"{_ENV}GLOBAL_RULE": "multi-krum", f"{_ENV}CLUSTER_RULE": "multi-krum"},
}


def _run(args: argparse.Namespace, task: str, seed: int, variant: str) -> dict[str, float]:
    """One federation (or its saved summary): final mean and worst accuracy, wall seconds."""
    summary, seconds = run_fpl(
        args.out / f"{task}-{variant}-s{seed}",
        task=task,
        seed=seed,
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.local_steps,
        env=VARIANTS[variant],
        reuse=args.reuse,
    )
    return {**last_accuracy(summary), "seconds": seconds}


def main() -> int:
    """Run (or reuse) every federation and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/defences"))
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    print(
        f"fpl, {args.clients} clients, {args.rounds} rounds x {args.local_steps} local steps, "
        f"seeds {args.seeds}; accuracy in % after the last round (mean ± std over seeds)"
    )
    print("| task | variant | mean acc | worst acc | Δ mean vs none (per seed) | wall s/run |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks:
        results = {v: [_run(args, task, s, v) for s in args.seeds] for v in args.variants}
        for variant, runs in results.items():
            means = [r["mean"] for r in runs]
            delta = ""
            if "none" in results and variant != "none":
                diffs = [
                    100 * (r["mean"] - b["mean"])
                    for r, b in zip(runs, results["none"], strict=True)
                ]
                delta = f"{statistics.fmean(diffs):+.1f} ({', '.join(f'{d:+.1f}' for d in diffs)})"
            print(
                f"| {task} | {variant} | {spread(means)} | "
                f"{spread([r['worst'] for r in runs])} | {delta} | "
                f"{statistics.fmean(r['seconds'] for r in runs):.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

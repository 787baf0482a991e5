"""What DP on every shared level and secure aggregation cost an honest federation in accuracy.

Usage: ``.venv/bin/python -m bench.privacy_accuracy [--tasks text vision] [--seeds 0 1 2]
[--variants plain dp8 ...] [--rounds 5] [--local-steps 10] [--clients 4]
[--out runs/privacy] [--reuse]``

Runs real ``fedprompt up`` federations (strategy ``fpl``, the bundled silos of each task,
mutual TLS, the same seeds for every variant) and prints, per task and variant, the
aggregated model's mean and worst client accuracy after the last round over the seeds
(mean ± std, with the per-seed values), the paired difference to the ``plain`` run of the
same seed, and the ε spent (per level where the summary has it):

- ``plain``: the coordinator's defaults (no DP, no secure aggregation);
- ``dp1``, ``dp4``, ``dp8``: client-level DP on every shared level (global, cluster, head)
  calibrated to ε = 1, 4, 8 over the run at δ = 1e-5;
- ``dp8-global``: ε = 8 on the global level only (``privacy.levels: [global]``, what DP
  covered before issue 13; the cluster segments and heads travel without noise);
- ``secagg``: secure aggregation inside each cluster, no noise (must equal ``plain`` up to
  the fixed-point encoding and float summation order);
- ``secagg-dp8``: secure aggregation with distributed noise at ε = 8;
- ``plain-raw`` and ``secagg-raw``: the same arithmetic without and with masks (no clipping,
  no weight caps): their accuracies must agree up to the fixed-point rounding (2^-38 of the
  range) and the float summation order.

``--reuse`` reads finished runs from ``--out`` instead of running them again (a ``plain``
run of an earlier bench with the same settings can be linked there). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.fpl_variants import last_accuracy, run_fpl, spread

#: ``fedprompt up`` flags of each variant.
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "dp1": ["--dp-epsilon", "1"],
    "dp4": ["--dp-epsilon", "4"],
    "dp8": ["--dp-epsilon", "8"],
    "dp8-global": ["--dp-epsilon", "8"],
    "secagg": ["--secure-aggregation"],
    "secagg-dp8": ["--secure-aggregation", "--dp-epsilon", "8"],
    "plain-raw": [],
    "secagg-raw": ["--secure-aggregation"],
}
_AGG = "FEDPROMPT_COORDINATOR_AGGREGATION__"
#: Coordinator environment of a variant (``fedprompt up`` passes it to the processes).
ENVIRONMENT: dict[str, dict[str, str]] = {
    "dp8-global": {"FEDPROMPT_COORDINATOR_PRIVACY__LEVELS": '["global"]'},
    # the same arithmetic with and without masks: no clipping (the secure bound is the hard
    # max_update_l2_norm, never reached) and no weight caps (a masked sum has none)
    "plain-raw": {
        f"{_AGG}CLIPPING__MODE": "off",
        f"{_AGG}MAX_WEIGHT_SHARE": "1.0",
        f"{_AGG}MAX_WEIGHT_MULTIPLE": "1000000",
    },
    "secagg-raw": {"FEDPROMPT_COORDINATOR_SECURE_AGGREGATION__CLIP_BOUND": "1000"},
}


def _run(args: argparse.Namespace, task: str, seed: int, variant: str) -> dict[str, float]:
    """One federation (or its saved summary): final accuracy, ε, wall seconds."""
    summary, seconds = run_fpl(
        args.out / f"{task}-{variant}-s{seed}",
        task=task,
        seed=seed,
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.local_steps,
        flags=VARIANTS[variant],
        env=ENVIRONMENT.get(variant, {}),
        reuse=args.reuse,
    )
    out = {
        **last_accuracy(summary),
        "epsilon": float(summary.get("epsilon", 0.0)),
        "seconds": seconds,
    }
    for key, value in summary["rounds"][-1]["summary"].items():
        if key.startswith("dp_epsilon_"):
            out[key.removeprefix("dp_")] = float(value)
    return out


def _epsilons(runs: list[dict[str, float]]) -> str:
    first = runs[0]
    if not first["epsilon"]:
        return "∞ (no DP)"
    levels = ", ".join(
        f"{k.removeprefix('epsilon_')} {v:.2f}"
        for k, v in sorted(first.items())
        if k.startswith("epsilon_")
    )
    return f"{first['epsilon']:.2f}" + (f" ({levels})" if levels else "")


def main() -> int:
    """Run (or reuse) every federation and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["text", "vision"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/privacy"))
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    print(
        f"fpl, {args.clients} clients, {args.rounds} rounds x {args.local_steps} local steps, "
        f"seeds {args.seeds}; accuracy in % after the last round (mean ± std over seeds)"
    )
    print("| task | variant | mean acc | worst acc | Δ mean vs plain (per seed) | ε | wall s/run |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        results = {v: [_run(args, task, s, v) for s in args.seeds] for v in args.variants}
        for variant, runs in results.items():
            delta = ""
            if "plain" in results and variant != "plain":
                diffs = [
                    100 * (r["mean"] - b["mean"])
                    for r, b in zip(runs, results["plain"], strict=True)
                ]
                delta = f"{statistics.fmean(diffs):+.1f} ({', '.join(f'{d:+.1f}' for d in diffs)})"
            print(
                f"| {task} | {variant} | {spread([r['mean'] for r in runs])} | "
                f"{spread([r['worst'] for r in runs])} | {delta} | {_epsilons(runs)} | "
                f"{statistics.fmean(r['seconds'] for r in runs):.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Paired statistics of two strategies on one task: differences, intervals, verdicts, power.

Within a seed every strategy runs on the same silos (the same partition, the same test
splits), from the same initial prompt and head and with the same data order (see
``fedprompt bench``), so two strategies are compared *paired*:

- **mean accuracy**: one pair per (seed, client): ``d = acc_method - acc_baseline`` on that
  client's test split; the pairs of every seed are pooled and the estimate is their mean
  (every client of every seed weighs the same, as in the headline's mean over clients and
  seeds).
- **worst-client accuracy**: one pair per seed: the method's worst client minus the
  baseline's worst client (each side's own worst); the estimate is their mean over seeds.

**Interval**: a two-stage (hierarchical) percentile bootstrap (:data:`RESAMPLES`
resamples, seeded with :data:`BOOTSTRAP_SEED`, so a report is reproducible). Each resample
draws the seeds with replacement, then the clients of each drawn seed with replacement
*within that seed* (the same drawn clients on both sides of the pair), and recomputes the
estimate; the 95 % interval is its 2.5th to 97.5th percentile. The interval so carries both
the client (and test-example) sampling and the seed-to-seed variation of training (and, for
the bundled tasks, of the partition); with one seed it is the client bootstrap alone. With
few seeds the seed stage is coarse (3 seeds give 10 distinct seed draws), and the worst
client of a resample is never worse than the worst client observed, so worst-client
intervals lean towards the observed difference: read them with their Wilcoxon p.

**Wilcoxon signed-rank p-value** (two-sided, ``scipy.stats.wilcoxon``, zero differences
dropped): over the pooled client pairs for mean accuracy, over the per-seed pairs for
worst-client accuracy (3 seeds cannot give p below 0.25). Pooled pairs of different seeds
are treated as independent, which they are not quite (a seed's clients share a training
run): read p next to the interval, not alone.

**Verdict**, from the interval only (:meth:`PairedComparison.verdict`):
"beats" when it lies above 0, "loses" when below 0, "ties" when it lies inside
``±margin`` (:data:`MARGIN`, one accuracy point: smaller differences do not matter in
practice), and "cannot tell with this data" otherwise.

**Power**: the smallest difference the design could have detected is
``(z_0.975 + z_0.80) · SE ≈ 2.8 · SE`` (:data:`POWER_FACTOR`), with SE the bootstrap
standard error of the estimate: a true difference that large is found (the interval
excludes 0) with about 80 % probability at alpha = 0.05. It shrinks as 1/√(clients) while
the clients dominate the error, and as 1/√(seeds) once the seed-to-seed variation does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

import numpy as np
from scipy import stats

from fedprompt_cli.bench_analysis import VariantResult
from fedprompt_cli.bench_plan import METHOD

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "MARGIN",
    "METRICS",
    "POWER_FACTOR",
    "RESAMPLES",
    "PairedComparison",
    "ablation_comparisons",
    "compare",
    "paired_comparisons",
    "paired_interval",
    "paired_runs",
    "points",
    "scenario_comparisons",
    "wilcoxon_p",
]

#: Practical-equivalence margin (accuracy as a fraction: 0.01 = one point).
MARGIN: Final = 0.01
#: Bootstrap resamples per comparison.
RESAMPLES: Final = 10_000
#: Seed of the bootstrap's generator (the same for every comparison).
BOOTSTRAP_SEED: Final = 14
#: Coverage of the interval.
CONFIDENCE: Final = 0.95
#: z_{1-alpha/2} + z_{power} for alpha = 0.05 and 80 % power.
POWER_FACTOR: Final = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.80))

Metric = Literal["accuracy_mean", "accuracy_worst"]
#: The compared metrics and their names in sentences.
METRICS: Final[dict[Metric, str]] = {
    "accuracy_mean": "mean accuracy",
    "accuracy_worst": "worst-client accuracy",
}

#: Per seed: the two sides' accuracies on the clients both evaluated, in the same order.
SeedPairs = dict[int, tuple[np.ndarray, np.ndarray]]


def paired_runs(method: VariantResult, baseline: VariantResult) -> SeedPairs:
    """The per-client accuracies of two results on their common seeds and clients.

    Parameters
    ----------
    method, baseline : VariantResult
        Two strategies on the same task.

    Returns
    -------
    dict of int to (ndarray, ndarray)
        Per common seed, ``(method's, baseline's)`` accuracies of the clients both have,
        sorted by client id; seeds without a common client are left out.
    """
    theirs = dict(zip(baseline.seeds, baseline.runs, strict=True))
    out: SeedPairs = {}
    for seed, ours in zip(method.seeds, method.runs, strict=True):
        other = theirs.get(seed)
        if other is None:
            continue
        clients = sorted(set(ours.per_client) & set(other.per_client))
        if clients:
            out[seed] = (
                np.array([ours.per_client[c] for c in clients], dtype=np.float64),
                np.array([other.per_client[c] for c in clients], dtype=np.float64),
            )
    return out


def wilcoxon_p(differences: Sequence[float] | np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped).

    Returns
    -------
    float or None
        The p-value; 1.0 when every difference is 0; None without any difference.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return None
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():  # small samples with ties: scipy warns and falls back
        warnings.simplefilter("ignore")
        result = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(result.pvalue)
    return None if math.isnan(p) else p


def _estimate(pairs: SeedPairs, metric: Metric) -> float:
    if metric == "accuracy_mean":
        return float(np.concatenate([a - b for a, b in pairs.values()]).mean())
    return float(np.mean([a.min() - b.min() for a, b in pairs.values()]))


def _bootstrap(pairs: SeedPairs, metric: Metric, resamples: int, seed: int) -> np.ndarray:
    """The estimate on ``resamples`` two-stage resamples: seeds, then clients within each.

    Stage 1 draws as many seeds as there are, with replacement; stage 2 draws the clients of
    each drawn seed with replacement (the same clients on both sides of the pair). The
    estimate of a resample is the mean of its client differences (mean accuracy) or the
    mean over its drawn seeds of their worst-client differences.
    """
    rng = np.random.default_rng(seed)
    # per seed and resample: the sum of the drawn clients' differences, or the drawn
    # clients' worst-client difference
    within = np.empty((len(pairs), resamples))
    counts = np.empty(len(pairs))
    for k, (a, b) in enumerate(pairs.values()):
        idx = rng.integers(0, len(a), size=(resamples, len(a)))
        counts[k] = len(a)
        if metric == "accuracy_mean":
            within[k] = (a - b)[idx].sum(axis=1)
        else:
            within[k] = a[idx].min(axis=1) - b[idx].min(axis=1)
    drawn = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    picked = within[drawn, np.arange(resamples)[:, None]]  # [resamples, drawn seeds]
    if metric == "accuracy_mean":
        return np.asarray(picked.sum(axis=1) / counts[drawn].sum(axis=1))
    return np.asarray(picked.mean(axis=1))


def _interval(boot: np.ndarray) -> tuple[float, float]:
    alpha = 1.0 - CONFIDENCE
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_interval(
    pairs: SeedPairs,
    metric: Metric = "accuracy_mean",
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The 95 % two-stage bootstrap interval of a paired difference (see :func:`compare`).

    Parameters
    ----------
    pairs : SeedPairs
        Per seed, ``(ours, theirs)``: the same clients' accuracies on both sides.
    metric : str
        ``accuracy_mean`` (pooled client differences) or ``accuracy_worst``.
    resamples, seed : int
        Bootstrap resamples and their generator's seed.

    Returns
    -------
    tuple of float
        The interval's ends (fractions, ours minus theirs).
    """
    if not pairs:
        raise ValueError("no paired seed to resample")
    return _interval(_bootstrap(pairs, metric, resamples, seed))


@dataclass(frozen=True)
class PairedComparison:
    """The method against one baseline on one task and metric (accuracy as fractions).

    Attributes
    ----------
    task, method, baseline : str
        What is compared.
    metric : str
        ``accuracy_mean`` or ``accuracy_worst``.
    seeds : tuple of int
        The common seeds.
    clients : int
        Client pairs over all seeds.
    pairs : int
        Pairs the Wilcoxon test ranks: client pairs (mean) or seeds (worst client).
    difference : float
        Method minus baseline (positive: the method is better).
    ci_low, ci_high : float
        The bootstrap interval.
    se : float
        Bootstrap standard error of ``difference``.
    p_value : float or None
        Wilcoxon signed-rank p (None: no pair).
    margin : float
        The practical-equivalence margin.
    """

    task: str
    method: str
    baseline: str
    metric: Metric
    seeds: tuple[int, ...]
    clients: int
    pairs: int
    difference: float
    ci_low: float
    ci_high: float
    se: float
    p_value: float | None
    margin: float = MARGIN

    @property
    def detectable(self) -> float:
        """The smallest difference the design could detect (80 % power, alpha = 0.05)."""
        return POWER_FACTOR * self.se

    @property
    def verdict(self) -> str:
        """``beats``, ``loses``, ``ties`` or ``cannot tell``, from the interval alone."""
        if self.clients < 2:
            return "cannot tell"
        if self.ci_low > 0:
            return "beats"
        if self.ci_high < 0:
            return "loses"
        if -self.margin <= self.ci_low and self.ci_high <= self.margin:
            return "ties"
        return "cannot tell"

    def interval(self) -> str:
        """``+1.2 points (95 % CI -0.3 to +2.8)``."""
        return (
            f"{points(self.difference)} points (95 % CI {points(self.ci_low)} to "
            f"{points(self.ci_high)})"
        )

    def evidence(self) -> str:
        """The test and the size of the design, in words."""
        p = "= -" if self.p_value is None else _p(self.p_value)
        seeds = len(self.seeds)
        if self.metric == "accuracy_mean":
            size = f"{self.clients} client pairs over {seeds} seed{'s' * (seeds != 1)}"
        else:
            size = f"{seeds} seed pair{'s' * (seeds != 1)} of {self.clients} clients"
        return f"Wilcoxon p {p}, {size}"

    def sentence(self) -> str:
        """The verdict as a sentence, with the interval, the test and the power."""
        what = METRICS[self.metric]
        m, b, t = self.method, self.baseline, self.task
        margin = f"{100 * self.margin:g}-point"
        verdict = self.verdict
        if verdict == "beats":
            head = f"**{t}: {m} beats {b}** on {what}"
            if self.ci_high < self.margin:
                head += f", by less than the {margin} margin that matters in practice"
        elif verdict == "loses":
            head = f"**{t}: {m} loses to {b}** on {what}"
            if self.ci_low > -self.margin:
                head += f", by less than the {margin} margin that matters in practice"
        elif verdict == "ties":
            head = (
                f"{t}: {m} ties with {b} on {what} (the interval lies inside "
                f"±{100 * self.margin:g} points)"
            )
        else:
            head = f"**{t}: cannot tell whether {m} beats {b}** on {what} with this data"
        power = (
            f"the smallest difference this design could detect is about "
            f"{100 * self.detectable:.1f} points"
        )
        return f"{head}: {self.interval()}; {self.evidence()}; {power}."


def points(value: float) -> str:
    """A difference in accuracy points, signed, one decimal (``-0.0``: below 0, not 0)."""
    return "+0.0" if value == 0 else f"{value * 100:+.1f}"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"= {value:.3f}" if value < 0.1 else f"= {value:.2f}"


def compare(
    method: VariantResult,
    baseline: VariantResult,
    metric: Metric,
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    margin: float = MARGIN,
) -> PairedComparison | None:
    """The paired comparison of two results on one metric (None: no common seed and client).

    See the module docstring for the pairs, the interval, the test and the verdict.
    """
    pairs = paired_runs(method, baseline)
    if not pairs:
        return None
    boot = _bootstrap(pairs, metric, resamples, seed)
    low, high = _interval(boot)
    if metric == "accuracy_mean":
        diffs = np.concatenate([a - b for a, b in pairs.values()])
    else:
        diffs = np.array([a.min() - b.min() for a, b in pairs.values()])
    return PairedComparison(
        task=method.task,
        method=method.variant,
        baseline=baseline.variant,
        metric=metric,
        seeds=tuple(sorted(pairs)),
        clients=sum(len(a) for a, _ in pairs.values()),
        pairs=int(diffs.size),
        difference=_estimate(pairs, metric),
        ci_low=low,
        ci_high=high,
        se=float(boot.std(ddof=1)) if resamples > 1 else 0.0,
        p_value=wilcoxon_p(diffs),
        margin=margin,
    )


def paired_comparisons(
    results: Sequence[VariantResult],
    method: str = METHOD,
    *,
    resamples: int = RESAMPLES,
    margin: float = MARGIN,
) -> list[PairedComparison]:
    """The method against every other strategy of each task, on mean and worst-client accuracy.

    Parameters
    ----------
    results : sequence of VariantResult
        The headline results (one per task and strategy).
    method : str
        The strategy judged (``fpl``).
    resamples, margin
        See :func:`compare`.

    Returns
    -------
    list of PairedComparison
        By task, then baseline, then metric (mean first).
    """
    out = []
    by_task: dict[str, dict[str, VariantResult]] = {}
    for r in results:
        by_task.setdefault(r.task, {})[r.strategy] = r
    for _task, by_strategy in sorted(by_task.items()):
        ours = by_strategy.get(method)
        if ours is None:
            continue
        for name, other in sorted(by_strategy.items()):
            if name == method:
                continue
            for metric in METRICS:
                found = compare(ours, other, metric, resamples=resamples, margin=margin)
                if found is not None:
                    out.append(found)
    return out


def _where(result: VariantResult) -> str:
    """``text, many-small``: the task and scenario a comparison is about."""
    return f"{result.task}, {result.scenario}"


def scenario_comparisons(
    results: Sequence[VariantResult],
    method: str = METHOD,
    *,
    resamples: int = RESAMPLES,
    margin: float = MARGIN,
) -> list[PairedComparison]:
    """The method against every other strategy on each (task, scenario).

    :func:`paired_comparisons` within each scenario (the same silos per seed); each
    comparison's ``task`` reads ``<task>, <scenario>``.
    """
    out = []
    for where in sorted({(r.task, r.scenario) for r in results}):
        same = [r for r in results if (r.task, r.scenario) == where]
        label = _where(same[0])
        out += [
            replace(c, task=label)
            for c in paired_comparisons(same, method, resamples=resamples, margin=margin)
        ]
    return out


def ablation_comparisons(
    full: Sequence[VariantResult],
    ablated: Sequence[VariantResult],
    *,
    resamples: int = RESAMPLES,
    margin: float = MARGIN,
) -> list[PairedComparison]:
    """Full fpl against each ablation of it, paired, on mean and worst-client accuracy.

    Parameters
    ----------
    full : sequence of VariantResult
        Full runs (headline and scenario results); the reference of an ablation is the
        run of the same strategy with no ablation, task and scenario.
    ablated : sequence of VariantResult
        The ablations.

    Returns
    -------
    list of PairedComparison
        ``method`` full fpl, ``baseline`` the ablation (positive difference: the part taken
        away helps); ``task`` reads ``<task>, <scenario>``; by task, scenario, ablation
        and metric. Ablations without a reference on a common seed are left out.
    """
    out = []
    for a in ablated:
        reference = next(
            (
                f
                for f in full
                if (f.task, f.scenario, f.strategy) == (a.task, a.scenario, a.strategy)
                and f.variant == f.strategy
            ),
            None,
        )
        if reference is None:
            continue
        for metric in METRICS:
            found = compare(reference, a, metric, resamples=resamples, margin=margin)
            if found is not None:
                out.append(replace(found, task=_where(a)))
    return sorted(out, key=lambda c: (c.task, c.baseline, list(METRICS).index(c.metric)))

"""Analysis of the benchmark's run records: grouping, learning-rate choice, comparisons.

Pure functions and frozen dataclasses over the records ``fedprompt bench`` keeps: they
write no file and draw nothing (:mod:`fedprompt_cli.bench_report` and
:mod:`fedprompt_cli.plots` render them). Every sentence that compares strategies is
generated from the numbers (the paired verdicts are :mod:`fedprompt_cli.bench_stats`'s);
nothing here is hard-coded about who wins.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from fedprompt.strategies import StrategyName
from fedprompt_cli.bench_metrics import RunMetrics, Spread, run_metrics, spread
from fedprompt_cli.bench_plan import DEFAULT_SCENARIO, RunSpec

__all__ = [
    "COMMUNICATION_REFERENCE",
    "CompressionComparison",
    "VariantResult",
    "ablation_results",
    "choose_learning_rates",
    "communication_ratios",
    "compression_comparisons",
    "headline",
    "held_out_sizes",
    "identical_groups",
    "is_private",
    "privacy_results",
    "scenario_of",
    "scenario_results",
    "targets",
    "variant_of",
]

#: The strategy whose bytes every communication ratio divides by (every weight travels).
COMMUNICATION_REFERENCE = StrategyName.FULL_FEDAVG


def is_private(spec: Mapping[str, Any]) -> bool:
    """Whether a record's spec ran under client-level DP-FedAvg, secure aggregation or
    record-level DP-SGD (the privacy stage's runs: never in the headline)."""
    return (
        spec.get("dp_epsilon") is not None
        or spec.get("dp_sgd_epsilon") is not None
        or bool(spec.get("secure_aggregation"))
    )


def _compression(spec: Mapping[str, Any]) -> str | None:
    """The run's lossy upload compression (None: uploads were exact)."""
    method = spec.get("upload_compression")
    return None if method in (None, "none") else str(method)


def scenario_of(spec: Mapping[str, Any]) -> str:
    """The run's scenario (records from before scenarios ran on the clinics)."""
    return str(spec.get("scenario") or DEFAULT_SCENARIO)


def _ablation(spec: Mapping[str, Any]) -> str | None:
    """The part of fpl the run took away (None: none)."""
    value = spec.get("ablation")
    return None if value is None else str(value)


def _is_full(spec: Mapping[str, Any]) -> bool:
    """Neither private, nor compressed, nor ablated (any scenario)."""
    return not is_private(spec) and _compression(spec) is None and _ablation(spec) is None


def _is_plain(spec: Mapping[str, Any]) -> bool:
    """Neither private, compressed nor ablated, on the clinics: a run that may enter the
    headline."""
    return _is_full(spec) and scenario_of(spec) == DEFAULT_SCENARIO


def choose_learning_rates(tune: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Per (task, strategy): the tuning run's learning rate with the best mean *validation* accuracy.

    Ties go to the smaller learning rate. Test accuracy is never looked at.
    """
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for record in tune:
        spec = record["spec"]
        if not _is_plain(spec):
            continue
        key = (spec["task"], spec["strategy"])
        val = run_metrics(record).val_accuracy
        val = -1.0 if math.isnan(val) else val
        lr = float(spec["learning_rate"])
        current = best.get(key)
        if current is None or val > current[0] or (val == current[0] and lr < current[1]):
            best[key] = (val, lr)
    return {key: lr for key, (_, lr) in best.items()}


@dataclass(frozen=True)
class VariantResult:
    """One (task, variant) over its seeds."""

    task: str
    variant: str
    strategy: str
    learning_rate: float
    seeds: tuple[int, ...]
    runs: tuple[RunMetrics, ...]
    #: The silos' scenario (``fedprompt-make-silos --scenario``).
    scenario: str = DEFAULT_SCENARIO

    def stat(self, field: str) -> Spread:
        """Mean ± std over seeds of one RunMetrics field."""
        return spread(float(getattr(r, field)) for r in self.runs)

    def bytes_per_client_round(self) -> float:
        """Mean (up + down) bytes per client per round over seeds."""
        return statistics.fmean(
            r.bytes_up_per_client_round + r.bytes_down_per_client_round for r in self.runs
        )

    def per_round(self) -> list[Spread]:
        """Mean ± std over seeds of the mean accuracy after each round."""
        n = min(len(r.accuracy_by_round) for r in self.runs)
        return [spread(r.accuracy_by_round[i] for r in self.runs) for i in range(n)]

    def cumulative_bytes(self) -> list[float]:
        """Mean over seeds of the bytes sent by the end of each round."""
        n = min(len(r.cumulative_bytes_by_round) for r in self.runs)
        return [
            statistics.fmean(r.cumulative_bytes_by_round[i] for r in self.runs) for i in range(n)
        ]

    def epsilon_by_level(self) -> dict[str, Spread]:
        """Client-level ε of each DP level alone, mean ± std over seeds (empty: no DP or
        runs from before per-level accounting)."""
        levels = sorted({lv for r in self.runs for lv in r.epsilon_by_level})
        return {
            lv: spread(r.epsilon_by_level[lv] for r in self.runs if lv in r.epsilon_by_level)
            for lv in levels
        }

    def per_group(self) -> dict[str, Spread]:
        """Per true group (cluster) accuracy, mean ± std over seeds."""
        groups = sorted({g for r in self.runs for g in r.per_group})
        return {g: spread(r.per_group.get(g) for r in self.runs) for g in groups}

    def per_client_position(self) -> list[Spread]:
        """Accuracy of the i-th client (clients sorted by id), mean ± std over seeds."""
        n = min(len(r.per_client) for r in self.runs)
        ordered = [[r.per_client[c] for c in sorted(r.per_client)] for r in self.runs]
        return [spread(o[i] for o in ordered) for i in range(n)]

    def client_names(self) -> list[str]:
        """Client ids of the first seed, sorted."""
        return sorted(self.runs[0].per_client)


def _group(records: Sequence[Mapping[str, Any]]) -> list[VariantResult]:
    grouped: dict[tuple[str, str, str, float], list[Mapping[str, Any]]] = {}
    for record in records:
        spec = record["spec"]
        key = (spec["task"], scenario_of(spec), variant_of(spec), float(spec["learning_rate"]))
        grouped.setdefault(key, []).append(record)
    results = []
    for (task, scenario, variant, lr), group in grouped.items():
        group = sorted(group, key=lambda r: int(r["spec"]["seed"]))
        results.append(
            VariantResult(
                task=task,
                variant=variant,
                strategy=group[0]["spec"]["strategy"],
                learning_rate=lr,
                seeds=tuple(int(r["spec"]["seed"]) for r in group),
                runs=tuple(run_metrics(r) for r in group),
                scenario=scenario,
            )
        )
    return results


def variant_of(spec: Mapping[str, Any]) -> str:
    """:attr:`~fedprompt_cli.bench_plan.RunSpec.variant` of a record's spec."""
    known = {f.name for f in fields(RunSpec)}
    kept = {k: v for k, v in spec.items() if k in known}
    return RunSpec(**{**kept, "upload_compression": _compression(spec)}).variant


def headline(
    records: Sequence[Mapping[str, Any]], chosen: Mapping[tuple[str, str], float]
) -> list[VariantResult]:
    """Non-private, uncompressed runs at the chosen learning rate, one per (task, strategy)."""
    kept = [
        r
        for r in records
        if _is_plain(r["spec"])
        and chosen.get((r["spec"]["task"], r["spec"]["strategy"]))
        == float(r["spec"]["learning_rate"])
    ]
    return _group(kept)


def _at_chosen_rate(record: Mapping[str, Any], chosen: Mapping[tuple[str, str], float]) -> bool:
    spec = record["spec"]
    return chosen.get((spec["task"], spec["strategy"])) == float(spec["learning_rate"])


def scenario_results(
    records: Sequence[Mapping[str, Any]], chosen: Mapping[tuple[str, str], float]
) -> list[VariantResult]:
    """Every strategy on each hard scenario (not ``clinics``: the headline's), at the chosen
    rate, neither private, compressed nor ablated; one result per (task, scenario, strategy)."""
    kept = [
        r
        for r in records
        if _is_full(r["spec"])
        and scenario_of(r["spec"]) != DEFAULT_SCENARIO
        and _at_chosen_rate(r, chosen)
    ]
    return sorted(_group(kept), key=lambda r: (r.task, r.scenario, r.variant))


def ablation_results(
    records: Sequence[Mapping[str, Any]], chosen: Mapping[tuple[str, str], float]
) -> list[VariantResult]:
    """The ablated fpl runs at fpl's chosen rate, one result per (task, scenario, ablation)."""
    kept = [
        r
        for r in records
        if _ablation(r["spec"]) is not None
        and not is_private(r["spec"])
        and _compression(r["spec"]) is None
        and _at_chosen_rate(r, chosen)
    ]
    return sorted(_group(kept), key=lambda r: (r.task, r.scenario, r.variant))


def privacy_results(records: Sequence[Mapping[str, Any]]) -> list[VariantResult]:
    """The private fpl runs, one result per (task, variant)."""
    return _group([r for r in records if is_private(r["spec"])])


def _points(value: float) -> str:
    """A signed difference in accuracy points, one decimal, never ``-0.0``."""
    return f"{round(value * 100, 1) + 0.0:+.1f}"


@dataclass(frozen=True)
class CompressionComparison:
    """One lossy upload compression of a strategy against its exact uploads, same seeds."""

    task: str
    method: str
    compressed: VariantResult
    #: The uncompressed runs of the same task, strategy, learning rate and seeds (None: none).
    baseline: VariantResult | None

    def bytes_ratio(self) -> float | None:
        """Upload bytes per client and round, compressed over uncompressed."""
        if self.baseline is None:
            return None
        base = self.baseline.stat("bytes_up_per_client_round").mean
        return None if base <= 0 else self.compressed.stat("bytes_up_per_client_round").mean / base

    def sentence(self) -> str:
        """What the compression did to the upload bytes and the accuracy, from the numbers.

        A change of mean accuracy is "within the seed spread" when it is no larger than the
        larger of the two sample stds over seeds.
        """
        who = f"{self.task}: {self.method} uploads"
        strategy = self.compressed.strategy
        seeds = ", ".join(str(s) for s in self.compressed.seeds)
        if self.baseline is None:
            return f"{who} have no uncompressed {strategy} run of seeds {seeds} to compare with."
        ratio = self.bytes_ratio()
        if ratio is None:
            size = f"the uncompressed {strategy} runs sent no upload bytes"
        elif ratio < 1:
            size = f"cut {strategy}'s upload bytes by {1 / ratio:.1f}x"
        else:
            size = f"do not cut {strategy}'s upload bytes ({ratio:.2f}x of uncompressed)"
        a, b = self.compressed.stat("accuracy_mean"), self.baseline.stat("accuracy_mean")
        worst = (
            self.compressed.stat("accuracy_worst").mean - self.baseline.stat("accuracy_worst").mean
        )
        change = (
            f"mean accuracy changes by {_points(a.mean - b.mean)} points (worst client: "
            f"{_points(worst)})"
        )
        if len(self.compressed.seeds) < 2:
            judged = f"one seed ({seeds}), so there is no seed spread to judge it by"
        else:
            noise = max(a.std, b.std)
            where = "within" if abs(a.mean - b.mean) <= noise else "more than"
            judged = f"{where} the seed spread ({100 * noise:.1f} points, seeds {seeds})"
        return f"{who} {size}; {change}, {judged}."


def _restricted(result: VariantResult, seeds: set[int]) -> VariantResult | None:
    """``result`` on those of its seeds that are in ``seeds`` (None: no seed left)."""
    kept = [(s, m) for s, m in zip(result.seeds, result.runs, strict=True) if s in seeds]
    if not kept:
        return None
    return replace(result, seeds=tuple(s for s, _ in kept), runs=tuple(m for _, m in kept))


def compression_comparisons(records: Sequence[Mapping[str, Any]]) -> list[CompressionComparison]:
    """Every (task, lossy upload compression) against the exact uploads of the same seeds.

    The baseline of a compressed variant is the non-private, uncompressed run of the same
    task, strategy and learning rate; both sides keep only the seeds that both have.
    """
    plain = _group([r for r in records if _is_plain(r["spec"])])
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        method = _compression(record["spec"])
        if method is not None and not is_private(record["spec"]):
            by_method.setdefault(method, []).append(record)
    out = []
    for method, group in by_method.items():
        for c in _group(group):
            base = next(
                (
                    p
                    for p in plain
                    if (p.task, p.strategy, p.learning_rate)
                    == (c.task, c.strategy, c.learning_rate)
                ),
                None,
            )
            common = set(c.seeds) & set(base.seeds) if base is not None else set()
            paired = _restricted(c, common)
            out.append(
                CompressionComparison(
                    task=c.task,
                    method=method,
                    compressed=paired or c,
                    baseline=None if base is None else _restricted(base, common),
                )
            )
    return sorted(out, key=lambda x: (x.task, x.method))


def communication_ratios(results: Sequence[VariantResult]) -> dict[tuple[str, str], float | None]:
    """Bytes per client per round of each strategy divided by the reference's on the same task.

    The reference is :data:`COMMUNICATION_REFERENCE` (full-fedavg: every weight travels).
    """
    reference = {
        r.task: r.bytes_per_client_round() for r in results if r.strategy == COMMUNICATION_REFERENCE
    }
    out: dict[tuple[str, str], float | None] = {}
    for r in results:
        ref = reference.get(r.task)
        out[(r.task, r.variant)] = None if not ref else r.bytes_per_client_round() / ref
    return out


def targets(results: Sequence[VariantResult], fraction: float) -> dict[str, float]:
    """Per task: ``fraction`` of the best strategy's mean final accuracy."""
    best: dict[str, float] = {}
    for r in results:
        best[r.task] = max(best.get(r.task, 0.0), r.stat("accuracy_mean").mean)
    return {task: fraction * acc for task, acc in best.items()}


def identical_groups(results: Sequence[VariantResult]) -> list[str]:
    """Sentences naming strategies whose per-client accuracies are identical on every seed.

    Identical accuracies of different strategies mean the models made the same predictions
    on every test example (typically each silo's or the federation's majority class): the
    run was too short to tell those strategies apart.
    """
    lines = []
    by_task: dict[str, dict[tuple[tuple[float, ...], ...], list[str]]] = {}
    for r in results:
        key = tuple(tuple(round(m.per_client[c], 9) for c in sorted(m.per_client)) for m in r.runs)
        by_task.setdefault(r.task, {}).setdefault(key, []).append(r.variant)
    for task, groups in sorted(by_task.items()):
        for names in groups.values():
            if len(names) > 1:
                lines.append(
                    f"**{task}: {', '.join(names)} give identical per-client accuracies on every "
                    "seed**: their models made the same predictions, so this run's training "
                    "budget cannot tell them apart (compare their validation accuracies and "
                    "bytes, not their accuracy)."
                )
    return lines


def held_out_sizes(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per task: the smallest and largest client test split (examples) over all runs."""
    sizes: dict[str, list[int]] = {}
    for record in records:
        for client in record["summary"]["clients"].values():
            for entry in client.get("rounds", {}).values():
                n = entry.get("eval", {}).get("num_examples")
                if n:
                    sizes.setdefault(record["spec"]["task"], []).append(int(n))
    return {task: (min(v), max(v)) for task, v in sizes.items()}

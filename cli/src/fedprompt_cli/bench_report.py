"""Turn the benchmark's run records into ``report.md``, CSV/JSON files and PNG plots.

Every sentence that compares strategies is generated from the numbers (see
:func:`verdicts`); nothing in the report is hard-coded about who wins.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedprompt_cli.bench_metrics import RunMetrics, Spread, run_metrics, spread
from fedprompt_cli.bench_plan import BenchPlan, RunSpec

__all__ = [
    "CompressionComparison",
    "VariantResult",
    "choose_learning_rates",
    "communication_ratios",
    "compression_comparisons",
    "headline",
    "privacy_results",
    "verdicts",
    "write_report",
]


#: The make target that reproduces a report of each plan.
REPRODUCE = {
    "full": "make bench",
    "quick": "make bench-quick",
    "tiny": "fedprompt bench --tiny",
    "gpu": "bench/run_gpu_bench.sh",
    "compression": "fedprompt bench --compression",
}


def _is_private(spec: Mapping[str, Any]) -> bool:
    return spec.get("dp_epsilon") is not None or spec.get("dp_sgd_epsilon") is not None


def _compression(spec: Mapping[str, Any]) -> str | None:
    """The run's lossy upload compression (None: uploads were exact)."""
    method = spec.get("upload_compression")
    return None if method in (None, "none") else str(method)


def _is_plain(spec: Mapping[str, Any]) -> bool:
    """Neither private nor compressed: a run that may enter the headline."""
    return not _is_private(spec) and _compression(spec) is None


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
    grouped: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for record in records:
        spec = record["spec"]
        variant = _variant(spec)
        grouped.setdefault((spec["task"], variant, float(spec["learning_rate"])), []).append(record)
    results = []
    for (task, variant, lr), group in grouped.items():
        group = sorted(group, key=lambda r: int(r["spec"]["seed"]))
        results.append(
            VariantResult(
                task=task,
                variant=variant,
                strategy=group[0]["spec"]["strategy"],
                learning_rate=lr,
                seeds=tuple(int(r["spec"]["seed"]) for r in group),
                runs=tuple(run_metrics(r) for r in group),
            )
        )
    return results


def _variant(spec: Mapping[str, Any]) -> str:
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


def privacy_results(records: Sequence[Mapping[str, Any]]) -> list[VariantResult]:
    """The private fpl runs, one result per (task, variant)."""
    return _group([r for r in records if _is_private(r["spec"])])


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
        larger of the two sample stds over seeds (as in :func:`verdicts`).
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
        if method is not None and not _is_private(record["spec"]):
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
    """Bytes per client per round of each strategy divided by full-fedavg's on the same task."""
    reference = {r.task: r.bytes_per_client_round() for r in results if r.strategy == "full-fedavg"}
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


def verdicts(results: Sequence[VariantResult], method: str = "fpl") -> list[str]:
    """Plain sentences comparing ``method`` with every baseline, per task, from the numbers.

    ``method`` beats a baseline when its mean accuracy over seeds is higher by more than the
    larger of the two seed spreads; a smaller lead is called "within the seed spread", and
    a lower mean is a loss. Worst-client accuracy is compared the same way.
    """
    lines = []
    by_task: dict[str, dict[str, VariantResult]] = {}
    for r in results:
        by_task.setdefault(r.task, {})[r.strategy] = r
    for task, by_strategy in sorted(by_task.items()):
        ours = by_strategy.get(method)
        if ours is None:
            continue
        for name, other in sorted(by_strategy.items()):
            if name == method:
                continue
            for field, what in (
                ("accuracy_mean", "mean accuracy"),
                ("accuracy_worst", "worst-client accuracy"),
            ):
                a, b = ours.stat(field), other.stat(field)
                diff = (a.mean - b.mean) * 100
                noise = max(a.std, b.std) * 100
                figures = f"{a.fmt(100)} % vs {b.fmt(100)} %"
                if abs(diff) < 0.05:
                    lines.append(
                        f"**{task}: {method} does not beat {name}** on {what}: a tie ({figures})."
                    )
                elif diff < 0:
                    lines.append(
                        f"**{task}: {method} does not beat {name}** on {what} ({figures}, "
                        f"{diff:+.1f} points)."
                    )
                elif diff <= noise:
                    lines.append(
                        f"{task}: {method} is ahead of {name} on {what} by {diff:.1f} points, "
                        f"within the seed spread ({figures}): not a clear win."
                    )
                else:
                    lines.append(
                        f"{task}: {method} beats {name} on {what} by {diff:.1f} points ({figures})."
                    )
    return lines


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


def _mib(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    if value >= 1024**2:
        return f"{value / 1024**2:.1f} MiB"
    return f"{value / 1024:.1f} KiB"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value < 0.01 else f"{value:.3f}"


def _headline_table(
    results: Sequence[VariantResult],
    ratios: Mapping[tuple[str, str], float | None],
    target: Mapping[str, float],
) -> list[str]:
    lines = [
        "| task | strategy | lr | mean acc % | worst acc % | std % | Jain | macro-F1 % | "
        "up / client / round | down / client / round | bytes ratio to full-fedavg | "
        "bytes to target (reached) | round s | client train s / round |",
        "|" + "---|" * 14,
    ]
    for r in results:
        reached = [m.bytes_to_reach(target[r.task]) for m in r.runs]
        hit = [b for b in reached if b is not None]
        to_target = f"{_mib(statistics.fmean(hit)) if hit else '-'} ({len(hit)}/{len(reached)})"
        lines.append(
            f"| {r.task} | {r.variant} | {r.learning_rate:g} | {r.stat('accuracy_mean').fmt(100)} | "
            f"{r.stat('accuracy_worst').fmt(100)} | {r.stat('accuracy_std').fmt(100)} | "
            f"{r.stat('jain').fmt(1, 3)} | {r.stat('macro_f1').fmt(100)} | "
            f"{_mib(r.stat('bytes_up_per_client_round').mean)} | "
            f"{_mib(r.stat('bytes_down_per_client_round').mean)} | {_ratio(ratios.get((r.task, r.variant)))} | "
            f"{to_target} | {r.stat('round_seconds').fmt(1, 1)} | "
            f"{r.stat('client_train_seconds').fmt(1, 2)} |"
        )
    return lines


def _cluster_table(results: Sequence[VariantResult]) -> list[str]:
    groups = sorted({(r.task, g) for r in results for g in r.per_group()})
    lines = [
        "| task | strategy | clusters found | " + " | ".join(f"{t}: {g}" for t, g in groups) + " |"
    ]
    lines.append("|" + "---|" * (3 + len(groups)))
    for r in results:
        pg = r.per_group()
        cells = [pg[g].fmt(100) if t == r.task and g in pg else "" for t, g in groups]
        lines.append(
            f"| {r.task} | {r.variant} | {r.stat('num_clusters').fmt(1, 1)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _privacy_table(base: Sequence[VariantResult], private: Sequence[VariantResult]) -> list[str]:
    if not private:
        return ["No private runs in this plan."]
    lines = [
        "| task | variant | client-level ε (DP-FedAvg) | record-level ε (DP-SGD) | mean acc % | "
        "worst acc % | macro-F1 % |",
        "|" + "---|" * 7,
    ]
    tasks = {r.task for r in private}
    rows = [r for r in base if r.strategy == "fpl" and r.task in tasks] + list(private)
    for r in sorted(rows, key=lambda r: (r.task, r.variant)):
        eps = r.stat("epsilon")
        sgd = r.stat("dp_sgd_epsilon")
        lines.append(
            f"| {r.task} | {r.variant} | {eps.fmt(1, 2) if eps.mean > 0 else '∞'} | "
            f"{sgd.fmt(1, 2) if sgd.mean > 0 else '∞'} | {r.stat('accuracy_mean').fmt(100)} | "
            f"{r.stat('accuracy_worst').fmt(100)} | {r.stat('macro_f1').fmt(100)} |"
        )
    return lines


def _compression_section(comparisons: Sequence[CompressionComparison]) -> list[str]:
    """Per task: exact uploads (the plain runs of the same seeds), then each compression."""
    if not comparisons:
        return ["No upload-compression runs in these records."]
    lines = [
        "fpl with lossy uploads (client agents' `--upload-compression`; the initial model "
        "and every download stay exact) against the plain fpl runs of the same seeds; "
        "bytes are counted on the wire (headers, metadata and int8 scales included).",
        "",
    ]
    for task in sorted({c.task for c in comparisons}):
        rows = [c for c in comparisons if c.task == task]
        lines += [
            f"### {task}",
            "",
            "| upload | seeds | mean acc % | worst acc % | up / client / round | "
            "up bytes ratio to none |",
            "|" + "---|" * 6,
        ]
        # one row of exact uploads per set of compared seeds (one row when all runs finished)
        exact = {c.baseline.seeds: c.baseline for c in rows if c.baseline is not None}
        for base in sorted(exact.values(), key=lambda b: (-len(b.seeds), b.seeds)):
            lines.append(_compression_row(f"none ({base.strategy})", base, 1.0))
        for c in rows:
            lines.append(_compression_row(c.method, c.compressed, c.bytes_ratio()))
        lines += ["", *[f"- {c.sentence()}" for c in rows], ""]
    return lines[:-1]


def _compression_row(method: str, r: VariantResult, ratio: float | None) -> str:
    return (
        f"| {method} | {', '.join(str(s) for s in r.seeds)} | {r.stat('accuracy_mean').fmt(100)} "
        f"| {r.stat('accuracy_worst').fmt(100)} | "
        f"{_mib(r.stat('bytes_up_per_client_round').mean)} | {_ratio(ratio)} |"
    )


def _tuning_table(
    tune: Sequence[Mapping[str, Any]], chosen: Mapping[tuple[str, str], float]
) -> list[str]:
    lines = [
        "| task | strategy | learning rate | mean val acc % (seed 0) | chosen |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for record in tune:
        spec = record["spec"]
        if _is_private(spec):
            continue
        m = run_metrics(record)
        key = (spec["task"], spec["strategy"])
        rows.append(
            (
                spec["task"],
                spec["strategy"],
                float(spec["learning_rate"]),
                m.val_accuracy,
                chosen.get(key),
            )
        )
    for task, strategy, lr, val, pick in sorted(rows):
        lines.append(
            f"| {task} | {strategy} | {lr:g} | {100 * val:.1f} | {'yes' if pick == lr else ''} |"
        )
    return lines


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_raw(
    out: Path, records: Sequence[Mapping[str, Any]], results: Sequence[VariantResult]
) -> None:
    (out / "results.json").write_text(json.dumps(list(records), indent=1, sort_keys=True))
    fields = [
        "accuracy_mean", "accuracy_worst", "accuracy_std", "jain", "macro_f1", "val_accuracy",
        "bytes_up_per_client_round", "bytes_down_per_client_round", "epsilon", "dp_sgd_epsilon",
        "round_seconds", "client_train_seconds", "wall_seconds", "num_clusters",
    ]  # fmt: skip
    rows = []
    for record in records:
        spec, m = record["spec"], run_metrics(record)
        rows.append(
            [
                spec["name"],
                spec["stage"],
                spec["task"],
                _variant(spec),
                spec["seed"],
                spec["learning_rate"],
            ]
            + [getattr(m, f) for f in fields]
            + [m.cumulative_bytes_by_round[-1]]
        )
    _csv(
        out / "runs.csv",
        ["run", "stage", "task", "variant", "seed", "learning_rate", *fields, "total_bytes"],
        rows,
    )
    summary_rows = []
    for r in results:
        row: list[Any] = [r.task, r.variant, r.learning_rate, len(r.runs)]
        for f in fields:
            s = r.stat(f)
            row += [s.mean, s.std]
        summary_rows.append(row)
    _csv(
        out / "summary.csv",
        ["task", "variant", "learning_rate", "seeds"]
        + [f"{f}_{k}" for f in fields for k in ("mean", "std")],
        summary_rows,
    )


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


def _size_sentence(records: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        f"{task}: {lo}-{hi} test examples per client (one example = up to {100 / lo:.0f} points "
        "of that client's accuracy)"
        for task, (lo, hi) in sorted(held_out_sizes(records).items())
        if lo > 0
    ]
    return "- Small held-out splits: " + "; ".join(parts) + "." if parts else ""


def _tuning_sentence(plan: BenchPlan) -> str:
    if len(plan.lr_factors) > 1:
        return (
            "The learning rate was chosen per (task, strategy) on the *validation* splits of "
            f"seed {plan.seeds[0]} (factors {list(plan.lr_factors)} of the default); test "
            "splits were not used for any choice."
        )
    return (
        "**Learning rates were not tuned in this plan**: every strategy ran at the default of "
        "`fedprompt up` (set before these runs); validation accuracy is reported below, and no "
        "choice looked at the test splits."
    )


def _timing_line(meta: Mapping[str, Any], runs: int) -> str:
    federations = float(meta.get("run_seconds_total", 0)) / 60
    if meta.get("note") or meta.get("report_only"):
        return (
            f"Reported {meta.get('finished_utc', '?')} UTC from {runs} recorded federations "
            f"({federations:.1f} min of federation wall time in total). {meta.get('note', '')}"
        ).rstrip()
    return (
        f"Finished {meta.get('finished_utc', '?')} UTC; the bench took "
        f"{float(meta.get('elapsed_seconds', 0)) / 60:.1f} min of wall time on this machine "
        f"({runs} federations, {federations:.1f} min of federation time in total)."
    )


def write_report(
    out: Path, plan: BenchPlan, records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json``, ``runs.csv``, ``summary.csv`` and the plots.

    Private and upload-compressed runs stay out of the headline, its verdicts and the
    learning-rate choice; each has its own section.
    """
    from fedprompt_cli.plots import write_plots

    tune = [
        r
        for r in records
        if r["spec"]["stage"] == "tune" and int(r["spec"]["seed"]) == plan.seeds[0]
    ]
    chosen = choose_learning_rates(tune)
    base = headline(records, chosen)
    private = privacy_results(records)
    compressed = compression_comparisons(records)
    ratios = communication_ratios(base)
    target = targets(base, plan.target_fraction)
    _write_raw(out, records, [*base, *private, *(c.compressed for c in compressed)])
    plots = write_plots(out, base, private)
    settings = "; ".join(
        f"{task}: {s.rounds} rounds × {s.local_steps} local steps, batch {s.batch_size}"
        + (f", {s.max_length} tokens" if task == "text" else f", {s.max_images} images")
        for task, s in plan.tasks.items()
    )
    lines = [
        f"# fedprompt evaluation report ({plan.mode})",
        "",
        _timing_line(meta, len(records)),
        "",
        f"Reproduce: `{REPRODUCE.get(plan.mode, 'make bench')}` (this report was made by "
        f"`{meta.get('command', 'fedprompt bench')}`).",
        "",
        "## Setup",
        "",
        f"- {plan.clients} silos per task, seeds {list(plan.seeds)}, {settings}.",
        "- text: drug reviews (condition prediction, 8 classes), silos = clinics skewed to a "
        "specialty; vision: MNIST digits through a frozen EfficientNet-Lite0, silos with label "
        "skew and a scanner rotation per group.",
        "- Each run is a real federation on loopback: clusterer, coordinator and client agents "
        f"talking gRPC ({plan.clients_per_process} agents per host process, each its own gRPC "
        "client); bytes are counted on the wire by the coordinator's interceptor.",
        "- Accuracy = each client's own *test* split after the last round (personalised "
        "model), then mean / worst / std / Jain's index over clients, then mean ± sample std "
        "over seeds. " + _tuning_sentence(plan),
        f"- Bytes to target: all clients' bytes (up + down, setup included) until the mean "
        f"accuracy first reached {plan.target_fraction:.0%} of the task's best strategy "
        f"({', '.join(f'{t}: {100 * v:.1f} %' for t, v in sorted(target.items()))}); "
        "(k/n) = seeds that reached it.",
        _size_sentence(records),
        "",
        "## Headline",
        "",
        *_headline_table(base, ratios, target),
        "",
        "## What the numbers say",
        "",
        *(
            [f"- {line}" for line in [*identical_groups(base), *verdicts(base)]]
            or ["- One strategy per task in this plan: there is nothing to compare it with."]
        ),
        "",
        "## Per-cluster accuracy",
        "",
        "Clusters are the silos' true groups (specialty for text, scanner rotation for vision); "
        "'clusters found' is how many clusters the clusterer formed from public metadata.",
        "",
        *_cluster_table(base),
        "",
        "## Privacy",
        "",
        *_privacy_table(base, private),
        "",
        "## Upload compression",
        "",
        *_compression_section(compressed),
        "",
        "## Learning-rate selection (validation)",
        "",
        *_tuning_table(tune, chosen),
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "Raw results: `results.json` (every run's summary), `runs.csv` (one row per run), "
        "`summary.csv` (mean and std per task and variant), `plan.json`.",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "headline.json").write_text(
        json.dumps(
            {
                "chosen_learning_rates": {f"{t}/{s}": lr for (t, s), lr in chosen.items()},
                "targets": target,
                "verdicts": verdicts(base),
                "upload_compression": [
                    {
                        "task": c.task,
                        "method": c.method,
                        "seeds": list(c.compressed.seeds),
                        "bytes_up_ratio_to_uncompressed": c.bytes_ratio(),
                        "sentence": c.sentence(),
                    }
                    for c in compressed
                ],
                "results": [
                    {
                        "task": r.task,
                        "variant": r.variant,
                        "seeds": list(r.seeds),
                        **{
                            f: asdict(r.stat(f))
                            for f in ("accuracy_mean", "accuracy_worst", "jain", "macro_f1")
                        },
                        "bytes_ratio_to_full_fedavg": ratios.get((r.task, r.variant)),
                    }
                    for r in base
                ],
            },
            indent=2,
            sort_keys=True,
        )
    )
    return report

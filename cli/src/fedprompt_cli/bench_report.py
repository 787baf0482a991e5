"""Render the benchmark's analysis as ``report.md``, CSV/JSON files and PNG plots.

The numbers and the sentences come from :mod:`fedprompt_cli.bench_analysis`; this module
lays them out as markdown tables and raw files, and :mod:`fedprompt_cli.plots` draws the
figures.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedprompt_cli.bench_analysis import (
    COMMUNICATION_REFERENCE,
    CompressionComparison,
    VariantResult,
    ablation_results,
    choose_learning_rates,
    communication_ratios,
    compression_comparisons,
    headline,
    held_out_sizes,
    identical_groups,
    is_private,
    privacy_results,
    scenario_of,
    scenario_results,
    targets,
    variant_of,
)
from fedprompt_cli.bench_metrics import run_metrics
from fedprompt_cli.bench_plan import ABLATIONS, LR_GRID_FACTORS, METHOD, BenchPlan
from fedprompt_cli.bench_stats import (
    MARGIN,
    METRICS,
    POWER_FACTOR,
    RESAMPLES,
    PairedComparison,
    ablation_comparisons,
    paired_comparisons,
    points,
    scenario_comparisons,
)
from fedprompt_cli.plots import write_plots

__all__ = ["REPRODUCE", "write_report"]


#: The make target that reproduces a report of each plan.
REPRODUCE = {
    "full": "make bench",
    "quick": "make bench-quick",
    "lr-grid": "make bench-lr",
    "tiny": "fedprompt bench --tiny",
    "gpu": "bench/run_gpu_bench.sh",
    "compression": "fedprompt bench --compression",
    "scenarios": "fedprompt bench --scenarios",
}


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
        f"up / client / round | down / client / round | bytes ratio to {COMMUNICATION_REFERENCE} | "
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


def _paired_section(comparisons: Sequence[PairedComparison]) -> list[str]:
    """The method against each baseline: paired differences, intervals, p, power, verdict."""
    if not comparisons:
        return [f"No baseline ran next to {METHOD} on the same seeds: nothing to compare."]
    lines = [
        f"{METHOD} minus each baseline, paired: mean accuracy pairs each client of each seed "
        "with itself under the other strategy (the same silo, test split, initial prompt and "
        "head, and data order) and pools the pairs of all seeds; worst-client accuracy pairs "
        f"each seed's worst clients. 95 % CI: two-stage percentile bootstrap ({RESAMPLES:,} "
        "resamples of the seeds, then of the clients within each drawn seed; seeded); p: "
        "Wilcoxon signed-rank, two-sided, over the pairs. "
        f"Verdicts come from the interval: above 0 beats, below 0 loses, inside "
        f"±{100 * MARGIN:g} point(s) ties, otherwise cannot tell with this data. Detectable: "
        f"the smallest difference this design finds with 80 % power at alpha = 0.05 "
        f"({POWER_FACTOR:.1f} × the bootstrap standard error).",
        "",
        f"| task | {METHOD} vs | metric | difference (points) | 95 % CI | Wilcoxon p | pairs | "
        "detectable (points) | verdict |",
        "|" + "---|" * 9,
    ]
    for c in comparisons:
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        lines.append(
            f"| {c.task} | {c.baseline} | {METRICS[c.metric]} | {points(c.difference)} | "
            f"{points(c.ci_low)} to {points(c.ci_high)} | {p} | {c.pairs} | "
            f"{100 * c.detectable:.1f} | {c.verdict} |"
        )
    return lines


#: What each hard scenario is, for the report (``fedprompt-make-silos --scenario``).
SCENARIO_TEXT = {
    "many-small": "Many small clinics (24 text silos of ~18 reviews, 30 image silos of ~100 "
    "images): local training starves and one global model is pulled apart",
    "misleading-metadata": "A third of the silos (0.33 by default) publish the metadata of a silo of "
    "another group; their data is their own. The truth (scenario.json beside the silos) "
    "never reached the coordinator; per-group accuracy below is by the true group",
    "concept-shift": "In one group, the two labels its silos see most often swap meaning "
    "(every split); its metadata is unchanged, so a single global prompt and head must "
    "fail that group or the others",
}

#: How an ablation's verdict reads: full fpl against fpl without the part.
ABLATION_READING = {
    "beats": "the part helps",
    "loses": "fpl is better without it",
    "ties": "no practical difference",
    "cannot tell": "cannot tell with this data",
}


def _comparison_rows(comparisons: Sequence[PairedComparison], *, reading: bool) -> list[str]:
    rows = []
    for c in comparisons:
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        extra = f" {ABLATION_READING[c.verdict]} |" if reading else ""
        rows.append(
            f"| {c.task} | {c.baseline} | {METRICS[c.metric]} | {points(c.difference)} | "
            f"{points(c.ci_low)} to {points(c.ci_high)} | {p} | {c.pairs} | "
            f"{100 * c.detectable:.1f} | {c.verdict} |{extra}"
        )
    return rows


def _scenario_section(
    results: Sequence[VariantResult], comparisons: Sequence[PairedComparison]
) -> list[str]:
    """Per (task, hard scenario): each strategy's accuracy, then fpl against each baseline."""
    if not results:
        return [
            "No hard-scenario runs in these records (`make bench` runs misleading metadata and "
            "a concept shift, `fedprompt bench --scenarios` adds many small clinics, the GPU "
            "plan runs every strategy on each)."
        ]
    lines = [
        f"Each hard scenario of `fedprompt-make-silos --scenario`, every strategy on the same "
        f"silos per seed; {METHOD} against each baseline, paired as in the headline's "
        "comparisons (same intervals, test and verdict rule).",
        "",
    ]
    for task, scenario in sorted({(r.task, r.scenario) for r in results}):
        rows = [r for r in results if (r.task, r.scenario) == (task, scenario)]
        where = f"{task}, {scenario}"
        lines += [
            f"### {where}",
            "",
            f"{SCENARIO_TEXT.get(scenario, scenario)}.",
            "",
            "| strategy | seeds | silos | mean acc % | worst acc % | clusters found | "
            "per true group % |",
            "|" + "---|" * 7,
        ]
        for r in rows:
            groups = ", ".join(f"{g} {v.fmt(100)}" for g, v in r.per_group().items())
            lines.append(
                f"| {r.variant} | {', '.join(str(s) for s in r.seeds)} | "
                f"{len(r.client_names())} | {r.stat('accuracy_mean').fmt(100)} | "
                f"{r.stat('accuracy_worst').fmt(100)} | {r.stat('num_clusters').fmt(1, 1)} | "
                f"{groups} |"
            )
        mine = [c for c in comparisons if c.task == where]
        if mine:
            lines += [
                "",
                f"| task, scenario | {METHOD} vs | metric | difference (points) | 95 % CI | "
                "Wilcoxon p | pairs | detectable (points) | verdict |",
                "|" + "---|" * 9,
                *_comparison_rows(mine, reading=False),
                "",
                *[f"- {c.sentence()}" for c in mine],
            ]
        else:
            lines += ["", f"No {METHOD} run next to a baseline here: nothing to compare."]
        lines.append("")
    return lines[:-1]


def _ablation_section(comparisons: Sequence[PairedComparison]) -> list[str]:
    """Full fpl against fpl without each part, paired: which part is responsible."""
    if not comparisons:
        return [
            f"No ablation of {METHOD} next to full {METHOD} on the same seeds in these records "
            "(`make bench` runs them on the clinics, the GPU plan on every scenario)."
        ]
    removes = "; ".join(f"`{a.name}`: without {a.removes}" for a in ABLATIONS.values())
    return [
        f"Full {METHOD} minus {METHOD} with one part taken away ({removes}), paired: the same "
        "seed and silos, the same intervals, test and verdict rule as the headline's "
        f'comparisons. A positive difference means the part helps: "{METHOD} beats {METHOD} '
        'no-global" reads "the global segment earns its place". A segment taken away '
        "shortens the prompt by its size (text 8/4/4 virtual tokens global/cluster/local, "
        "images 2/1/1 ring pixels).",
        "",
        f"| task, scenario | full {METHOD} vs | metric | difference (points) | 95 % CI | "
        "Wilcoxon p | pairs | detectable (points) | verdict | reading |",
        "|" + "---|" * 10,
        *_comparison_rows(comparisons, reading=True),
        "",
        *[f"- {c.sentence()}" for c in comparisons],
    ]


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
        "| task | variant | client-level ε (DP-FedAvg) | ε per level | record-level ε (DP-SGD) "
        "| mean acc % | worst acc % | macro-F1 % |",
        "|" + "---|" * 8,
    ]
    tasks = {r.task for r in private}
    rows = [r for r in base if r.strategy == METHOD and r.task in tasks] + list(private)
    for r in sorted(rows, key=lambda r: (r.task, r.variant)):
        eps = r.stat("epsilon")
        sgd = r.stat("dp_sgd_epsilon")
        per_level = ", ".join(f"{lv} {e.fmt(1, 2)}" for lv, e in r.epsilon_by_level().items())
        lines.append(
            f"| {r.task} | {r.variant} | {eps.fmt(1, 2) if eps.mean > 0 else '∞'} | "
            f"{per_level or '-'} | {sgd.fmt(1, 2) if sgd.mean > 0 else '∞'} | {r.stat('accuracy_mean').fmt(100)} | "
            f"{r.stat('accuracy_worst').fmt(100)} | {r.stat('macro_f1').fmt(100)} |"
        )
    return lines


def _compression_section(comparisons: Sequence[CompressionComparison]) -> list[str]:
    """Per task: exact uploads (the plain runs of the same seeds), then each compression."""
    if not comparisons:
        return ["No upload-compression runs in these records."]
    lines = [
        f"{METHOD} with lossy uploads (client agents' `--upload-compression`; the initial model "
        f"and every download stay exact) against the plain {METHOD} runs of the same seeds; "
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
        if is_private(spec):
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
                scenario_of(spec),
                variant_of(spec),
                spec["seed"],
                spec["learning_rate"],
            ]
            + [getattr(m, f) for f in fields]
            + [m.cumulative_bytes_by_round[-1]]
        )
    _csv(
        out / "runs.csv",
        [
            "run",
            "stage",
            "task",
            "scenario",
            "variant",
            "seed",
            "learning_rate",
            *fields,
            "total_bytes",
        ],
        rows,
    )
    summary_rows = []
    for r in results:
        row: list[Any] = [r.task, r.scenario, r.variant, r.learning_rate, len(r.runs)]
        for f in fields:
            s = r.stat(f)
            row += [s.mean, s.std]
        summary_rows.append(row)
    _csv(
        out / "summary.csv",
        ["task", "scenario", "variant", "learning_rate", "seeds"]
        + [f"{f}_{k}" for f in fields for k in ("mean", "std")],
        summary_rows,
    )


def _size_sentence(records: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        f"{task}: {lo}-{hi} test examples per client (one example = up to {100 / lo:.0f} points "
        "of that client's accuracy)"
        for task, (lo, hi) in sorted(held_out_sizes(records).items())
        if lo > 0
    ]
    return "- Small held-out splits: " + "; ".join(parts) + "." if parts else ""


def _first_seed_only(plan: BenchPlan) -> str:
    """Which strategies the plan runs on its first seed only (none: an empty string)."""
    if len(plan.seeds) < 2:
        return ""
    every_seed = plan.every_seed_strategies()
    alone = [s for s in plan.strategies if s not in every_seed]
    if not alone:
        return ""
    return (
        f" {', '.join(alone)} ran on seed {plan.seeds[0]} only (the plan's time limit): their "
        "rows are one seed, and their comparisons pair that seed's clients."
    )


def _factors(factors: tuple[float, ...]) -> str:
    """Learning-rate factors as the report prints them: ``0.333, 1, 3``."""
    return ", ".join(f"{f:.3g}" for f in factors)


def _tuning_sentence(plan: BenchPlan) -> str:
    if len(plan.lr_factors) > 1:
        return (
            "The learning rate was chosen per (task, strategy) on the *validation* splits of "
            f"seed {plan.seeds[0]} (factors {_factors(plan.lr_factors)} of the default); test "
            "splits were not used for any choice."
        )
    chosen = {
        (t, s): r
        for (t, s), r in plan.base_rates.items()
        if t in plan.tasks and s in plan.strategies
    }
    if chosen:
        listed = ", ".join(f"{t} {s} {r:g}" for (t, s), r in sorted(chosen.items()))
        return (
            "Learning rates were chosen on the *validation* splits by `make bench-lr` "
            "([reports/lr-grid](../lr-grid/report.md): each prompt strategy's default × "
            f"{_factors(LR_GRID_FACTORS)} on seed 0 at this budget): {listed}; every other "
            "strategy at the "
            "default of `fedprompt up` (the grid's choice for the prompt strategies not "
            "listed; LoRA and full-model fedavg were not in the grid). No choice looked at "
            "the test splits."
        )
    return (
        "**Learning rates were not tuned in this plan**: every strategy ran at the default of "
        "`fedprompt up` (set before these runs); validation accuracy is reported below, and no "
        "choice looked at the test splits."
    )


def _data_sentence(plan: BenchPlan) -> str:
    """Where the silos came from: the bundled tasks, or the user's own folders."""
    if plan.data_root is not None:
        return (
            f"- data: the silo folders in `{plan.data_root}` ({', '.join(plan.tasks)}; "
            f"{plan.clients} silos, checked before the runs); every seed and strategy ran on "
            "these same silos (a seed changes the model's initialisation and the data order, "
            "not the partition)."
        )
    return (
        "- text: drug reviews (condition prediction, 8 classes), silos = clinics skewed to a "
        "specialty; vision: MNIST digits through a frozen EfficientNet-Lite0, silos with label "
        "skew and a scanner rotation per group. The silos of a seed are made once and every "
        "strategy of that seed runs on them."
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


def _paired_json(c: PairedComparison) -> dict[str, Any]:
    return {
        "where": c.task,
        "method": c.method,
        "baseline": c.baseline,
        "metric": c.metric,
        "seeds": list(c.seeds),
        "client_pairs": c.clients,
        "difference": c.difference,
        "ci95": [c.ci_low, c.ci_high],
        "wilcoxon_p": c.p_value,
        "detectable": c.detectable,
        "verdict": c.verdict,
        "sentence": c.sentence(),
    }


def write_report(
    out: Path, plan: BenchPlan, records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json``, ``runs.csv``, ``summary.csv`` and the plots.

    Private and upload-compressed runs stay out of the headline, its verdicts and the
    learning-rate choice; each has its own section.
    """
    tune = [
        r
        for r in records
        if r["spec"]["stage"] == "tune" and int(r["spec"]["seed"]) == plan.seeds[0]
    ]
    chosen = choose_learning_rates(tune)
    base = headline(records, chosen)
    private = privacy_results(records)
    compressed = compression_comparisons(records)
    paired = paired_comparisons(base)
    scenarios = scenario_results(records, chosen)
    scenario_paired = scenario_comparisons(scenarios)
    ablated = ablation_results(records, chosen)
    ablation_paired = ablation_comparisons([*base, *scenarios], ablated)
    ratios = communication_ratios(base)
    target = targets(base, plan.target_fraction)
    _write_raw(
        out,
        records,
        [*base, *private, *(c.compressed for c in compressed), *scenarios, *ablated],
    )
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
        f"- {plan.clients} silos per task, seeds {list(plan.seeds)}, {settings}."
        + _first_seed_only(plan),
        _data_sentence(plan),
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
            [f"- {line}" for line in [*identical_groups(base), *(c.sentence() for c in paired)]]
            or ["- One strategy per task in this plan: there is nothing to compare it with."]
        ),
        "",
        "## Paired comparisons",
        "",
        *_paired_section(paired),
        "",
        "## Scenarios",
        "",
        *_scenario_section(scenarios, scenario_paired),
        "",
        "## Ablations of fpl",
        "",
        *_ablation_section(ablation_paired),
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
                "verdicts": [c.sentence() for c in paired],
                "paired": [
                    {
                        "task": c.task,
                        "method": c.method,
                        "baseline": c.baseline,
                        "metric": c.metric,
                        "seeds": list(c.seeds),
                        "client_pairs": c.clients,
                        "difference": c.difference,
                        "ci95": [c.ci_low, c.ci_high],
                        "wilcoxon_p": c.p_value,
                        "detectable": c.detectable,
                        "margin": c.margin,
                        "verdict": c.verdict,
                    }
                    for c in paired
                ],
                "scenarios": [_paired_json(c) for c in scenario_paired],
                "ablations": [_paired_json(c) for c in ablation_paired],
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

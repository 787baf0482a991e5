"""The benchmark report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from fedprompt_cli.bench_analysis import VariantResult
from fedprompt_cli.bench_plan import METHOD

__all__ = ["write_plots"]

_DPI = 110


def _tasks(results: Sequence[VariantResult]) -> list[str]:
    return sorted({r.task for r in results})


def _accuracy_per_round(out: Path, results: Sequence[VariantResult]) -> Path:
    tasks = _tasks(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in results if r.task == task):
            points = r.per_round()
            xs = list(range(1, len(points) + 1))
            means = [100 * p.mean for p in points]
            stds = [100 * p.std for p in points]
            ax.plot(xs, means, marker="o", label=r.variant)
            ax.fill_between(
                xs, [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)], alpha=0.15,
            )  # fmt: skip
        ax.set_title(f"{task}: mean client test accuracy per round (± std over seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "accuracy_per_round.png"
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _accuracy_vs_bytes(out: Path, results: Sequence[VariantResult]) -> Path:
    tasks = _tasks(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in results if r.task == task):
            sent = r.cumulative_bytes()
            acc = [100 * p.mean for p in r.per_round()]
            n = min(len(sent), len(acc))
            ax.plot([max(b, 1.0) for b in sent[:n]], acc[:n], marker="o", label=r.variant)
        ax.set_xscale("log")
        ax.set_title(f"{task}: accuracy against bytes sent (all clients, up + down)")
        ax.set_xlabel("bytes on the wire (cumulative, log scale)")
        ax.set_ylabel("mean accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "accuracy_vs_bytes.png"
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _epsilon_of(variant: str) -> float | None:
    found = re.search(r"ε=([0-9.]+)", variant)
    return float(found.group(1)) if found else None


def _privacy_utility(
    out: Path, base: Sequence[VariantResult], private: Sequence[VariantResult]
) -> Path:
    tasks = _tasks([*base, *private])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [e for r in private if (e := _epsilon_of(r.variant)) is not None]
    inf_x = 2 * max(finite) if finite else 16.0
    for task in tasks:
        points: list[tuple[float, float, float]] = []
        for r in private:
            if r.task == task and "dp-fedavg" in r.variant:
                eps = _epsilon_of(r.variant)
                if eps is not None:
                    s = r.stat("accuracy_mean")
                    points.append((eps, 100 * s.mean, 100 * s.std))
        for r in base:
            if r.task == task and r.strategy == METHOD:
                s = r.stat("accuracy_mean")
                points.append((inf_x, 100 * s.mean, 100 * s.std))
        points.sort()
        if points:
            ax.errorbar(
                [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                marker="o", capsize=3, label=f"{task}: {METHOD} + DP-FedAvg (client-level)",
            )  # fmt: skip
        for r in private:
            if r.task == task and "dp-sgd" in r.variant:
                eps = _epsilon_of(r.variant)
                s = r.stat("accuracy_mean")
                ax.errorbar(
                    [eps if eps is not None else inf_x], [100 * s.mean], yerr=[100 * s.std],
                    marker="s", capsize=3, linestyle="none",
                    label=f"{task}: {METHOD} + DP-SGD (record-level) ε={eps:g}",
                )  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ticks = sorted({*finite, inf_x})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" if not math.isclose(t, inf_x) else "∞" for t in ticks])
    ax.set_xlabel("ε (δ = 1e-5)")
    ax.set_ylabel("mean accuracy %")
    ax.set_title(f"privacy-utility: {METHOD} accuracy against ε (± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "privacy_utility.png"
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _per_client_bars(out: Path, results: Sequence[VariantResult]) -> Path:
    tasks = _tasks(results)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 3.8 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        rows = [r for r in results if r.task == task]
        names = rows[0].client_names() if rows else []
        width = 0.8 / max(1, len(rows))
        for k, r in enumerate(rows):
            points = r.per_client_position()
            xs = [i + k * width - 0.4 + width / 2 for i in range(len(points))]
            ax.bar(
                xs, [100 * p.mean for p in points], width=width,
                yerr=[100 * p.std for p in points], capsize=2, label=r.variant,
            )  # fmt: skip
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=15)
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{task}: per-client accuracy (fairness), mean ± std over seeds")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    path = out / "per_client_accuracy.png"
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def write_plots(
    out: Path, base: Sequence[VariantResult], private: Sequence[VariantResult]
) -> list[Path]:
    """Write the plots (four, three without private runs) into ``out``; return their paths."""
    if not base:
        return []
    plots = [_accuracy_per_round(out, base), _accuracy_vs_bytes(out, base)]
    if private:  # a plan without a privacy stage has no privacy-utility curve
        plots.append(_privacy_utility(out, base, private))
    plots.append(_per_client_bars(out, base))
    return plots

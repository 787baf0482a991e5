"""``fedprompt bench``'s stage selection, on finished runs only (``--report-only``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from fedprompt_cli.bench import RUNS_FILE, run_bench, untuned_learning_rates
from fedprompt_cli.bench_plan import tiny_plan


def _finished(tmp_path: Path, make_record: Callable[..., dict[str, Any]]) -> Path:
    """A report folder whose runs.jsonl holds every privacy and compression run of the plan."""
    plan = replace(tiny_plan(), upload_compressions=("int8",))
    chosen = untuned_learning_rates(plan)
    lines = []
    for spec in plan.privacy_runs(chosen) + plan.compression_runs(chosen):
        record = make_record(seed=spec.seed, accs=[[0.5, 0.5]], stage=spec.stage)
        record["spec"] = {**asdict(spec), "name": spec.name}
        lines.append(json.dumps(record))
    out = tmp_path / "report"
    out.mkdir()
    (out / RUNS_FILE).write_text("\n".join(lines) + "\n")
    return out


def _reported(out: Path) -> list[str]:
    return sorted(r["spec"]["name"] for r in json.loads((out / "results.json").read_text()))


def test_compression_only_runs_the_compression_stage_alone(
    tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    out = _finished(tmp_path, make_record)
    plan = replace(tiny_plan(), upload_compressions=("int8",))
    with (tmp_path / "console.txt").open("w") as log:
        console = Console(file=log)
        assert run_bench(plan, out, console, report_only=True, compression_only=True) == 0
        assert _reported(out) == ["text-fpl-lr0.03-s0-up-int8", "text-fpl-lr0.03-s1-up-int8"]
        assert (
            run_bench(
                plan, out, console, report_only=True, privacy_only=True, compression_only=True
            )
            == 0
        )
        assert _reported(out) == [
            "text-fpl-lr0.03-s0-dpfedavg4",
            "text-fpl-lr0.03-s0-up-int8",
            "text-fpl-lr0.03-s1-up-int8",
        ]
        grid = replace(plan, lr_factors=(1.0, 3.0))
        assert run_bench(grid, out, console, report_only=True, compression_only=True) == 2


def test_finished_runs_of_another_budget_are_not_taken_as_this_plans(
    tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    """Run names do not say the budget: a stale ``runs.jsonl`` of another plan size (say the
    old two-round plan in the same report folder) must not pass for this plan's runs."""
    from fedprompt_cli.bench import run_settings

    out = _finished(tmp_path, make_record)
    plan = replace(tiny_plan(), upload_compressions=("int8",))
    chosen = untuned_learning_rates(plan)
    int8 = plan.compression_runs(chosen)
    records = [json.loads(line) for line in (out / RUNS_FILE).read_text().splitlines()]
    for record in records:
        if record["spec"]["name"] == int8[0].name:  # this plan's settings
            record["settings"] = run_settings(int8[0], plan)
        elif record["spec"]["name"] == int8[1].name:  # one more local step than this plan
            settings = run_settings(int8[1], plan)
            record["settings"] = {**settings, "local_steps": settings["local_steps"] + 1}
        # the privacy run keeps no settings: a record of before they were recorded
    (out / RUNS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with (tmp_path / "console.txt").open("w") as log:
        console = Console(file=log, width=400)
        code = run_bench(
            plan, out, console, report_only=True, privacy_only=True, compression_only=True
        )
    assert code == 0
    assert _reported(out) == ["text-fpl-lr0.03-s0-dpfedavg4", "text-fpl-lr0.03-s0-up-int8"]
    said = (tmp_path / "console.txt").read_text()
    assert "1 finished run(s) had other settings than this plan" in said
    assert int8[1].name in said
    # another silo count is another run too
    fewer = replace(plan, clients=plan.clients - 1)
    assert run_settings(int8[0], fewer) != run_settings(int8[0], plan)

"""Scenarios and ablations in the bench: silos per scenario, truth, report sections."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedprompt_cli.bench import make_silos_argv, silos_folder, true_groups
from fedprompt_cli.bench_analysis import ablation_results, headline, scenario_results
from fedprompt_cli.bench_metrics import run_metrics
from fedprompt_cli.bench_plan import RunSpec, gpu_plan, tiny_plan
from fedprompt_cli.bench_report import write_report
from fedprompt_cli.bench_stats import ablation_comparisons, scenario_comparisons

MakeRecord = Callable[..., dict[str, Any]]
CLIENTS = 8


@pytest.fixture
def rec(make_record: MakeRecord) -> Callable[..., dict[str, Any]]:
    def build(
        strategy: str,
        seed: int,
        base: float,
        *,
        scenario: str | None = None,
        ablation: str | None = None,
        stage: str = "eval",
    ) -> dict[str, Any]:
        accs = [min(1.0, base + 0.01 * c + 0.005 * seed) for c in range(CLIENTS)]
        record = make_record(
            strategy=strategy, seed=seed, lr=0.03, accs=[accs], stage="tune" if seed == 0 else stage
        )
        spec = record["spec"]
        if scenario is not None:
            spec["scenario"], spec["stage"] = scenario, "scenario"
        if ablation is not None:
            spec["ablation"], spec["stage"] = ablation, "ablation"
        spec["name"] += f"-{scenario}-{ablation}"
        return record

    return build


@pytest.fixture
def records(rec: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for seed in range(3):
        out += [rec("fpl", seed, 0.70), rec("local", seed, 0.50)]
        # concept shift: fpl well ahead; misleading metadata: the two make the same predictions
        out += [rec("fpl", seed, 0.80, scenario="concept-shift")]
        out += [rec("local", seed, 0.40, scenario="concept-shift")]
        out += [rec("fpl", seed, 0.60, scenario="misleading-metadata")]
        out += [rec("local", seed, 0.60, scenario="misleading-metadata")]
        # ablations on the clinics: the global segment helps, InfoNCE changes nothing, and
        # fpl does better without its local segment
        out += [rec("fpl", seed, 0.50, ablation="no-global")]
        out += [rec("fpl", seed, 0.70, ablation="no-infonce")]
        out += [rec("fpl", seed, 0.90, ablation="no-local")]
    for r in out:
        if r["spec"].get("scenario") == "misleading-metadata":
            r["true_groups"] = {f"client-{c}": "truth-a" for c in range(CLIENTS)}
    return out


CHOSEN = {("text", "fpl"): 0.03, ("text", "local"): 0.03}


def test_scenario_and_ablation_runs_stay_out_of_the_headline(records: list[dict[str, Any]]) -> None:
    base = headline(records, CHOSEN)
    assert {(r.variant, r.scenario) for r in base} == {("fpl", "clinics"), ("local", "clinics")}
    assert all(len(r.seeds) == 3 for r in base)
    assert base[0].stat("accuracy_mean").mean == pytest.approx(
        {"fpl": 0.74, "local": 0.54}[base[0].strategy]
    )
    scenarios = scenario_results(records, CHOSEN)
    assert {(r.scenario, r.variant) for r in scenarios} == {
        (s, v) for s in ("concept-shift", "misleading-metadata") for v in ("fpl", "local")
    }
    ablated = ablation_results(records, CHOSEN)
    assert {(r.scenario, r.variant) for r in ablated} == {
        ("clinics", f"fpl {a}") for a in ("no-global", "no-infonce", "no-local")
    }


def test_scenario_comparisons_pair_fpl_with_each_baseline_per_scenario(
    records: list[dict[str, Any]],
) -> None:
    found = scenario_comparisons(scenario_results(records, CHOSEN), resamples=500)
    verdicts = {(c.task, c.baseline, c.metric): c.verdict for c in found}
    assert verdicts == {
        ("text, concept-shift", "local", "accuracy_mean"): "beats",
        ("text, concept-shift", "local", "accuracy_worst"): "beats",
        ("text, misleading-metadata", "local", "accuracy_mean"): "ties",
        ("text, misleading-metadata", "local", "accuracy_worst"): "ties",
    }
    shift = next(c for c in found if c.task == "text, concept-shift")
    assert shift.difference == pytest.approx(0.40) and shift.clients == 3 * CLIENTS
    assert shift.sentence().startswith("**text, concept-shift: fpl beats local** on mean accuracy")


def test_ablations_are_compared_with_full_fpl_of_the_same_seeds(
    records: list[dict[str, Any]],
) -> None:
    base = headline(records, CHOSEN)
    found = ablation_comparisons(base, ablation_results(records, CHOSEN), resamples=500)
    mean = {c.baseline: c for c in found if c.metric == "accuracy_mean"}
    assert {b: c.verdict for b, c in mean.items()} == {
        "fpl no-global": "beats",
        "fpl no-infonce": "ties",
        "fpl no-local": "loses",
    }
    assert mean["fpl no-global"].difference == pytest.approx(0.20)  # full minus ablated
    assert mean["fpl no-global"].seeds == (0, 1, 2) and mean["fpl no-global"].method == "fpl"
    assert all(c.task == "text, clinics" for c in found)
    # without a full fpl run there is nothing to pair with
    assert ablation_comparisons([], ablation_results(records, CHOSEN), resamples=10) == []


def test_report_has_a_section_per_scenario_and_an_ablation_table(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    text = write_report(tmp_path, tiny_plan(), records, {"elapsed_seconds": 1}).read_text()
    scenarios = text[text.index("## Scenarios") : text.index("## Ablations of fpl")]
    ablations = text[text.index("## Ablations of fpl") : text.index("## Per-cluster accuracy")]
    assert "### text, concept-shift" in scenarios and "### text, misleading-metadata" in scenarios
    assert "In one group, the two labels its silos see most often swap meaning" in scenarios
    assert "**text, concept-shift: fpl beats local** on mean accuracy" in scenarios
    assert "text, misleading-metadata: fpl ties with local on mean accuracy" in scenarios
    assert "truth-a 64.0 ± 0.5" in scenarios  # per *true* group, from the sidecar's truth
    assert "| text, clinics | fpl no-global | mean accuracy | +20.0 |" in ablations
    assert "| beats | the part helps |" in ablations
    assert "| ties | no practical difference |" in ablations
    assert "| loses | fpl is better without it |" in ablations
    assert "**text, clinics: fpl beats fpl no-global** on mean accuracy" in ablations
    assert "**text, clinics: fpl loses to fpl no-local** on mean accuracy" in ablations
    head = json.loads((tmp_path / "headline.json").read_text())
    assert {a["baseline"] for a in head["ablations"]} == {
        "fpl no-global", "fpl no-infonce", "fpl no-local"
    }  # fmt: skip
    assert {s["where"] for s in head["scenarios"]} == {
        "text, concept-shift", "text, misleading-metadata"
    }  # fmt: skip
    # the headline is the clinics' alone
    headline_part = text[text.index("## Headline") : text.index("## What the numbers say")]
    assert "no-global" not in headline_part and "| text | fpl | 0.03 | 74.0" in headline_part
    assert "text,concept-shift,fpl,0.03,3," in (tmp_path / "summary.csv").read_text()


def test_a_report_without_scenarios_or_ablations_says_so(
    tmp_path: Path, rec: Callable[..., dict[str, Any]]
) -> None:
    records = [rec("fpl", s, 0.7) for s in range(2)] + [rec("local", s, 0.5) for s in range(2)]
    text = write_report(tmp_path, tiny_plan(), records, {"elapsed_seconds": 1}).read_text()
    assert "No hard-scenario runs in these records" in text
    assert "No ablation of fpl next to full fpl" in text


def test_silos_of_a_scenario_are_made_once_per_task_scenario_and_seed(tmp_path: Path) -> None:
    plan = gpu_plan()
    full = RunSpec("eval", "text", "fpl", 1, 0.03)
    small = RunSpec("scenario", "vision", "local", 1, 0.1, scenario="many-small")
    ablated = RunSpec(
        "ablation", "vision", "fpl", 1, 0.1, scenario="many-small", ablation="no-local"
    )
    assert silos_folder(tmp_path, full) == tmp_path / "silos" / "text-s1"  # as before
    assert silos_folder(tmp_path, small) == silos_folder(tmp_path, ablated)
    argv = make_silos_argv(small, plan, tmp_path / "x")
    assert argv[argv.index("--scenario") + 1] == "many-small"
    assert argv[argv.index("--num-silos") + 1] == "30" and "--max-images" not in argv
    argv = make_silos_argv(full, plan, tmp_path / "x")
    assert "--scenario" not in argv and argv[argv.index("--num-silos") + 1] == "6"


def test_the_truth_is_read_beside_the_silos_into_per_group_accuracy(
    tmp_path: Path, rec: Callable[..., dict[str, Any]]
) -> None:
    assert true_groups(tmp_path) is None
    (tmp_path / "scenario.json").write_text(
        json.dumps({"silos": {"client-0": {"true_group": "psychiatry", "misleading": True}}})
    )
    assert true_groups(tmp_path) == {"client-0": "psychiatry"}
    record = rec("fpl", 0, 0.5)
    record["true_groups"] = {"client-0": "psychiatry"}
    groups = run_metrics(record).per_group
    assert groups["psychiatry"] == pytest.approx(0.5)  # client-0's metadata says group "a"

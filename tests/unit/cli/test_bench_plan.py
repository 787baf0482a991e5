"""The benchmark plan: stages, learning-rate grid, sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from fedprompt_cli.bench_plan import (
    ABLATIONS,
    DEFAULT_SCENARIO,
    PROMPT_STRATEGIES,
    SCENARIO_SILOS,
    SCENARIOS,
    STRATEGIES,
    VALIDATED_RATES,
    BenchPlan,
    RunSpec,
    compression_plan,
    full_plan,
    gpu_plan,
    lr_grid,
    lr_grid_plan,
    quick_plan,
    scenario_plan,
    tiny_plan,
)


def test_full_plan_meets_the_issue() -> None:
    plan = full_plan()
    assert plan.clients >= 6 and len(plan.seeds) >= 3
    assert set(plan.tasks) == {"text", "vision"}
    assert plan.strategies == STRATEGIES
    assert set(plan.dp_epsilons) == {8.0}  # with ε = ∞ from the plain fpl runs
    assert plan.dp_sgd_epsilons
    # a budget that moves text prompts off the prior: more than the old 2 rounds x 3 steps
    assert all(t.rounds * t.local_steps >= 4 * 8 for t in plan.tasks.values())
    # the evidence stages: both 6-silo hard scenarios and every ablation, on both tasks
    assert set(plan.scenarios) == {"misleading-metadata", "concept-shift"}
    assert plan.ablations == tuple(ABLATIONS)
    chosen = _chosen(plan)
    assert {(r.task, r.scenario) for r in plan.scenario_runs(chosen)} == {
        (t, sc) for t in ("text", "vision") for sc in plan.scenarios
    }
    assert {(r.task, r.seed) for r in plan.ablation_runs(chosen)} == {
        (t, s) for t in ("text", "vision") for s in plan.seeds[:2]
    }
    # the prompt strategies on every seed, the LoRA and full-model references on the first
    evals = plan.eval_runs(chosen)
    assert {r.strategy for r in evals} == set(PROMPT_STRATEGIES)
    assert {(r.task, r.strategy) for r in plan.tune_runs()} == {
        (t, s) for t in ("text", "vision") for s in STRATEGIES
    }
    assert plan.describe()["eval_strategies"] == list(PROMPT_STRATEGIES)
    assert plan.total_runs() == 66  # sized for an hour on 2 cores (about 50 s per run)


def test_stages_cover_every_strategy_seed_and_privacy_level() -> None:
    plan = gpu_plan()
    tune = plan.tune_runs()
    assert {r.seed for r in tune} == {plan.seeds[0]}
    assert len(tune) == 2 * sum(len(plan.factors_of(s)) for s in STRATEGIES)
    assert {r.dp_sgd_epsilon for r in plan.privacy_runs(_chosen(plan))} >= {8.0}
    assert len({r.learning_rate for r in tune if r.strategy == "fpl"}) == len(plan.lr_factors)
    chosen = {(t, s): 0.5 for t in plan.tasks for s in plan.strategies}
    evals = plan.eval_runs(chosen)
    assert {r.seed for r in evals} == set(plan.seeds[1:])
    assert all(r.learning_rate == 0.5 for r in evals)
    privacy = plan.privacy_runs(chosen)
    assert {r.dp_epsilon for r in privacy if r.dp_epsilon and not r.secure_aggregation} == set(
        plan.dp_epsilons
    )
    secure = [r for r in privacy if r.secure_aggregation]
    assert {r.dp_epsilon for r in secure} == set(plan.secure_aggregation_epsilons) == {None, 8.0}
    assert all(r.strategy == "fpl" and r.dp_sgd_epsilon is None for r in secure)
    assert {r.task for r in privacy if r.dp_sgd_epsilon} == {"text"}  # DP-SGD: text silos only
    compression = plan.compression_runs(chosen)
    assert {r.upload_compression for r in compression} == set(plan.upload_compressions)
    names = [r.name for r in tune + evals + privacy + compression]
    names += [r.name for r in plan.scenario_runs(chosen) + plan.ablation_runs(chosen)]
    assert len(names) == len(set(names)) == plan.total_runs()


def test_quick_plan_has_the_same_structure_smaller() -> None:
    quick, full = quick_plan(), full_plan()
    assert quick.strategies == full.strategies and quick.clients == full.clients
    assert quick.total_runs() < full.total_runs()
    for task in full.tasks:
        assert quick.tasks[task].rounds * quick.tasks[task].local_steps < (
            full.tasks[task].rounds * full.tasks[task].local_steps
        )


def test_lr_grid_multiplies_the_default_or_a_given_base() -> None:
    assert lr_grid("text", "fpl", (1.0, 3.0)) == [0.03, 0.09]
    assert lr_grid("text", "full-fedavg", (1.0,)) == [5e-5]
    assert lr_grid("text", "local", (1 / 3, 1.0), base=0.01) == [0.00333, 0.01]


def test_a_plan_runs_its_base_rates_and_refuses_rates_that_cannot_train() -> None:
    plan = replace(tiny_plan(), base_rates={("text", "local"): 0.01})
    assert plan.rates_of("text", "local") == [0.01]
    assert plan.rates_of("text", "fpl") == [0.03]
    assert plan.describe()["base_rates"] == {"text/local": 0.01}
    for bad in (0.0, -0.01, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="base learning rates"):
            replace(tiny_plan(), base_rates={("text", "local"): bad})


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown eval strategies"):
        replace(tiny_plan(), eval_strategies=("fpl", "nope"))
    with pytest.raises(ValueError, match="at least 2 clients"):
        replace(tiny_plan(), clients=1)
    with pytest.raises(ValueError, match="unknown strategies"):
        replace(tiny_plan(), strategies=("nope",))
    with pytest.raises(ValueError, match="seed"):
        replace(tiny_plan(), seeds=())


def test_plan_overrides_pick_tasks_seeds_and_silos() -> None:
    from fedprompt_cli.bench import plan_with_overrides

    plan = plan_with_overrides(full_plan(), seeds=(5, 6, 7), clients=8, tasks=("vision",))
    assert plan.seeds == (5, 6, 7) and plan.clients == 8 and set(plan.tasks) == {"vision"}
    assert plan.clients_per_process >= 8
    assert plan.privacy_runs({("vision", s): 0.1 for s in STRATEGIES}) == []  # text only
    with pytest.raises(ValueError, match="unknown tasks"):
        plan_with_overrides(full_plan(), seeds=None, clients=None, tasks=("audio",))


def test_a_bench_can_be_split_by_strategy_and_without_privacy() -> None:
    from fedprompt_cli.bench import plan_with_overrides, untuned_learning_rates

    plan = plan_with_overrides(
        full_plan(), seeds=(2,), clients=None, strategies=("fpl",), skip_privacy=True
    )
    chosen = untuned_learning_rates(plan)
    assert chosen == {("text", "fpl"): 0.03, ("vision", "fpl"): 0.03}
    assert [r.name for r in plan.tune_runs()] == ["text-fpl-lr0.03-s2", "vision-fpl-lr0.03-s2"]
    assert plan.privacy_runs(chosen) == [] and plan.eval_runs(chosen) == []


def test_compression_stage_runs_fpl_at_the_chosen_rate_per_method_and_seed() -> None:
    plan = replace(full_plan(), upload_compressions=("fp16", "int8"), compression_tasks=("text",))
    chosen = {(t, s): 0.5 for t in plan.tasks for s in plan.strategies}
    chosen[("text", "fpl")] = 0.07
    runs = plan.compression_runs(chosen)
    assert [r.name for r in runs] == [
        f"text-fpl-lr0.07-s{s}-up-{m}" for s in plan.seeds for m in ("fp16", "int8")
    ]
    assert {(r.stage, r.strategy, r.learning_rate) for r in runs} == {("compression", "fpl", 0.07)}
    assert runs[1].variant == "fpl upload int8"
    assert all(r.dp_epsilon is None and r.dp_sgd_epsilon is None for r in runs)
    described = plan.describe()
    assert described["upload_compressions"] == ["fp16", "int8"]
    assert described["compression_seeds"] == [0, 1, 2]
    assert described["compression_tasks"] == ["text"]
    no_stage = replace(plan, upload_compressions=())
    assert no_stage.compression_runs(chosen) == []
    assert plan.total_runs() == no_stage.total_runs() + len(runs)


def test_compression_stage_size_of_each_plan() -> None:
    def runs(plan_runs: list[RunSpec]) -> set[tuple[str, int, str | None]]:
        return {(r.task, r.seed, r.upload_compression) for r in plan_runs}

    quick, gpu = quick_plan(), gpu_plan()
    assert runs(quick.compression_runs({("text", "fpl"): 0.03})) == {("text", 0, "int8")}
    gpu_runs = gpu.compression_runs({("text", "fpl"): 0.03, ("vision", "fpl"): 0.03})
    assert len(gpu_runs) == 2 * len(gpu.seeds) * 2  # tasks x seeds x methods
    assert tiny_plan().compression_runs({("text", "fpl"): 0.03}) == []  # integration test
    assert full_plan().compression_runs(_chosen(full_plan())) == []  # its own plan
    alone = replace(gpu_plan(), strategies=("local",), ablations=())
    assert alone.compression_runs({}) == []


def test_compression_plan_compares_exact_fp16_and_int8_fpl_uploads_on_every_seed() -> None:
    plan = compression_plan()
    chosen = {("text", "fpl"): 0.03, ("vision", "fpl"): 0.03}
    exact = plan.tune_runs() + plan.eval_runs(chosen)
    assert {(r.task, r.strategy, r.seed, r.upload_compression) for r in exact} == {
        (t, "fpl", s, None) for t in ("text", "vision") for s in (0, 1, 2)
    }
    lossy = {(r.task, r.seed, r.upload_compression) for r in plan.compression_runs(chosen)}
    assert lossy == {
        (t, s, m) for t in ("text", "vision") for s in (0, 1, 2) for m in ("fp16", "int8")
    }
    assert plan.privacy_runs(chosen) == []
    assert plan.total_runs() == 18
    assert all(t.rounds * t.local_steps > 6 * 3 for t in plan.tasks.values())  # > full plan


def test_run_variants_name_the_privacy_and_compression_settings() -> None:
    spec = RunSpec("privacy", "text", "fpl", 1, 0.03, dp_epsilon=4.0)
    assert (spec.variant, spec.name) == ("fpl dp-fedavg ε=4", "text-fpl-lr0.03-s1-dpfedavg4")
    spec = RunSpec("compression", "vision", "fpl", 2, 0.03, upload_compression="fp16")
    assert (spec.variant, spec.name) == ("fpl upload fp16", "vision-fpl-lr0.03-s2-up-fp16")
    assert RunSpec("eval", "text", "local", 0, 0.03).variant == "local"
    spec = RunSpec("privacy", "text", "fpl", 0, 0.03, dp_epsilon=8.0, secure_aggregation=True)
    assert (spec.variant, spec.name) == (
        "fpl secagg dp-fedavg ε=8",
        "text-fpl-lr0.03-s0-secagg-dpfedavg8",
    )


def test_secure_aggregation_runs_are_private_and_never_in_the_headline() -> None:
    from dataclasses import asdict

    from fedprompt_cli.bench_analysis import is_private, variant_of

    spec = asdict(RunSpec("privacy", "text", "fpl", 0, 0.03, secure_aggregation=True))
    assert is_private(spec) and variant_of(spec) == "fpl secagg"
    assert not is_private(asdict(RunSpec("eval", "text", "fpl", 0, 0.03)))
    assert tiny_plan().secure_aggregation_epsilons == ()  # the integration test stays short


def test_unknown_or_exact_upload_compressions_are_refused() -> None:
    for bad in (("none",), ("zip",)):
        with pytest.raises(ValueError, match="upload compressions"):
            replace(tiny_plan(), upload_compressions=bad)


def test_skip_privacy_keeps_the_compression_stage_and_skip_compression_drops_it() -> None:
    from fedprompt_cli.bench import plan_with_overrides, untuned_learning_rates

    plan = plan_with_overrides(gpu_plan(), seeds=None, clients=None, skip_privacy=True)
    chosen = untuned_learning_rates(plan)
    assert plan.privacy_runs(chosen) == [] and len(plan.compression_runs(chosen)) == 20
    plan = plan_with_overrides(gpu_plan(), seeds=None, clients=None, skip_compression=True)
    assert plan.compression_runs(chosen) == [] and plan.privacy_runs(chosen)


# ----------------------------------------------------------------- scenarios and ablations


def _chosen(plan: BenchPlan) -> dict[tuple[str, str], float]:
    """The largest candidate rate of each (task, strategy): a choice the tune stage ran."""
    return {(t, s): plan.rates_of(t, s)[-1] for t in plan.tasks for s in plan.strategies}


def _all_runs(plan: BenchPlan) -> list[RunSpec]:
    chosen = _chosen(plan)
    return (
        plan.tune_runs()
        + plan.eval_runs(chosen)
        + plan.privacy_runs(chosen)
        + plan.compression_runs(chosen)
        + plan.scenario_runs(chosen)
        + plan.ablation_runs(chosen)
    )


def test_scenario_plan_extends_the_full_plan_under_the_same_run_names() -> None:
    """``--scenarios --merge reports/full`` runs only what make bench did not: every run of
    the full plan is a run of the scenario plan under the same name, budget and silos."""
    from fedprompt_cli.bench import run_settings

    full, scenarios = full_plan(), scenario_plan()
    assert full.tasks == scenarios.tasks and full.clients == scenarios.clients
    full_runs = {r.name: r for r in _all_runs(full)}
    scenario_runs = {r.name: r for r in _all_runs(scenarios)}
    assert set(full_runs) < set(scenario_runs)
    for name, spec in full_runs.items():
        assert scenario_runs[name] == spec
        assert run_settings(spec, full) == run_settings(spec, scenarios)
    extra = [scenario_runs[n] for n in set(scenario_runs) - set(full_runs)]
    assert {r.stage for r in extra} == {"scenario", "ablation"}
    assert {(r.scenario, r.seed) for r in extra if r.stage == "scenario"} == {
        ("many-small", 0),
        ("many-small", 1),
        ("misleading-metadata", 1),
        ("concept-shift", 1),
    }
    assert len([r for r in extra if r.stage == "scenario"]) == 2 * 4 * 4  # tasks x 4 x strategies
    # every ablation on the two 6-silo hard scenarios, first seed, both tasks
    ablations = {(r.task, r.scenario, r.seed, r.ablation) for r in extra if r.stage == "ablation"}
    assert ablations == {
        (t, sc, 0, a)
        for t in ("text", "vision")
        for sc in ("misleading-metadata", "concept-shift")
        for a in ABLATIONS
    }


def test_lr_grid_plan_tries_a_third_once_and_three_times_each_default() -> None:
    grid = lr_grid_plan()
    assert grid.strategies == PROMPT_STRATEGIES and grid.base_rates == {}
    tune = grid.tune_runs()
    rates: dict[tuple[str, str], list[float]] = {}
    for r in tune:
        rates.setdefault((r.task, r.strategy), []).append(r.learning_rate)
    assert rates == {(t, s): [0.01, 0.03, 0.09] for t in grid.tasks for s in PROMPT_STRATEGIES}
    assert {r.seed for r in tune} == {grid.seeds[0]}
    chosen = {(t, s): 0.09 for t in grid.tasks for s in PROMPT_STRATEGIES}
    assert {(r.seed, r.learning_rate) for r in grid.eval_runs(chosen)} == {(1, 0.09), (2, 0.09)}
    others = grid.privacy_runs(chosen) + grid.compression_runs(chosen)
    assert others + grid.scenario_runs(chosen) + grid.ablation_runs(chosen) == []
    assert grid.total_runs() == 24 + 16


def test_the_full_plan_runs_the_grid_winners_under_the_grid_runs_names() -> None:
    """make bench's prompt-strategy runs of the clinics are the grid's runs at the rates it
    chose (same name, budget and silos), so either reuses the other's with --merge."""
    from fedprompt_cli.bench import run_settings, untuned_learning_rates

    grid, full = lr_grid_plan(), full_plan()
    assert grid.tasks == full.tasks and grid.seeds == full.seeds
    chosen = untuned_learning_rates(full)
    grid_runs = {r.name: r for r in grid.tune_runs() + grid.eval_runs(chosen)}
    for spec in full.tune_runs() + full.eval_runs(chosen):
        if spec.strategy in PROMPT_STRATEGIES:
            assert grid_runs[spec.name] == spec
            assert run_settings(spec, grid) == run_settings(spec, full)


def test_validated_rates_are_the_committed_grid_report_choices() -> None:
    """VALIDATED_RATES holds what reports/lr-grid chose where that is not the default."""
    import json
    from pathlib import Path

    from fedprompt.strategies import strategy_spec

    headline = Path(__file__).parents[3] / "reports" / "lr-grid" / "headline.json"
    chosen = json.loads(headline.read_text())["chosen_learning_rates"]
    not_default = {
        tuple(key.split("/")): rate
        for key, rate in chosen.items()
        if rate != strategy_spec(key.split("/")[1]).learning_rate(key.split("/")[0])
    }
    assert not_default == VALIDATED_RATES
    assert full_plan().base_rates == VALIDATED_RATES
    assert gpu_plan().base_rates == {}  # another budget: not chosen there


def test_scenario_names_match_make_silos() -> None:
    from fedprompt_client_agent.tools.scenarios import MANY_SMALL_SILOS, SCENARIO_NAMES

    assert SCENARIOS == SCENARIO_NAMES and DEFAULT_SCENARIO == "clinics"
    assert SCENARIO_SILOS["many-small"] == dict(MANY_SMALL_SILOS)


def test_gpu_plan_holds_the_whole_scenario_ablation_matrix_on_five_seeds() -> None:
    plan = gpu_plan()
    chosen = _chosen(plan)
    assert plan.seeds == (0, 1, 2, 3, 4)
    scenario = plan.scenario_runs(chosen)
    assert {(r.task, r.scenario, r.strategy, r.seed) for r in scenario} == {
        (t, sc, s, seed)
        for t in ("text", "vision")
        for sc in SCENARIOS[1:]
        for s in STRATEGIES
        for seed in plan.seeds
    }
    ablation = plan.ablation_runs(chosen)
    assert len(ablation) == len(ABLATIONS) * len(SCENARIOS) * 2 * 5
    assert {(r.scenario, r.ablation) for r in ablation} == {
        (sc, a) for sc in SCENARIOS for a in ABLATIONS
    }
    assert all(r.strategy == "fpl" and r.learning_rate == chosen[(r.task, "fpl")] for r in ablation)
    names = [r.name for r in _all_runs(plan)]
    assert len(names) == len(set(names)) == plan.total_runs()


@pytest.mark.parametrize("make", [full_plan, gpu_plan, scenario_plan])
def test_every_ablation_is_paired_with_a_full_fpl_run_of_the_plan(
    make: Callable[[], BenchPlan],
) -> None:
    plan = make()
    runs = {r.name: r for r in _all_runs(plan)}
    ablations = [r for r in runs.values() if r.ablation is not None]
    assert ablations
    for spec in ablations:
        reference = plan.reference_of(spec)
        assert reference.name in runs, spec.name
        full = runs[reference.name]
        # paired: the same seed, the same silos (task, scenario, seed), the same rate
        assert full.ablation is None and full.strategy == "fpl"
        assert full.seed == spec.seed and full.silos_key == spec.silos_key
        assert full.learning_rate == spec.learning_rate
        assert full.dp_epsilon is None and full.upload_compression is None


def test_scenario_runs_share_silos_per_seed_and_baselines_pair_with_fpl() -> None:
    plan = scenario_plan()
    runs = plan.scenario_runs(_chosen(plan))
    assert len(runs) == 2 * 3 * 4 * 2  # tasks x scenarios x strategies x first two seeds
    by_silos: dict[tuple[str, str, int], set[str]] = {}
    for r in runs:
        by_silos.setdefault(r.silos_key, set()).add(r.strategy)
    assert all(strategies == set(PROMPT_STRATEGIES) for strategies in by_silos.values())
    assert plan.total_runs() == 98 + 2 * 2 * len(ABLATIONS)  # and the hard ablations


def test_scenario_and_ablation_runs_are_named_and_grouped() -> None:
    run = RunSpec("ablation", "text", "fpl", 1, 0.03, scenario="many-small", ablation="no-global")
    assert run.name == "text-fpl-lr0.03-s1-many-small-no-global"
    assert run.variant == "fpl no-global"  # the scenario is a grouping key, not a variant
    assert RunSpec("eval", "text", "fpl", 1, 0.03).name == "text-fpl-lr0.03-s1"  # unchanged
    plan = gpu_plan()
    assert plan.clients_of(run) == 24
    assert plan.clients_of(replace(run, task="vision")) == 30
    assert plan.clients_of(replace(run, scenario="concept-shift")) == plan.clients


def test_bad_scenario_and_ablation_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="scenarios must be among"):
        replace(tiny_plan(), scenarios=("clinics",))
    with pytest.raises(ValueError, match="ablations must be among"):
        replace(tiny_plan(), ablations=("no-head",))
    with pytest.raises(ValueError, match="need it among the scenarios"):
        replace(tiny_plan(), ablations=("no-global",), ablation_scenarios=("many-small",))
    with pytest.raises(ValueError, match="need fpl"):
        replace(tiny_plan(), strategies=("local",), ablations=("no-global",))


def test_strategy_overrides_without_fpl_drop_the_ablations() -> None:
    from fedprompt_cli.bench import plan_with_overrides

    plan = plan_with_overrides(gpu_plan(), seeds=None, clients=None, strategies=("local",))
    assert plan.ablations == () and plan.ablation_runs({}) == []


def test_the_report_names_the_strategies_of_the_first_seed_only() -> None:
    from fedprompt_cli.bench_report import _first_seed_only

    assert "lora-fedavg, full-fedavg ran on seed 0 only" in _first_seed_only(full_plan())
    assert _first_seed_only(gpu_plan()) == ""  # every strategy on every seed
    assert _first_seed_only(replace(full_plan(), seeds=(0,))) == ""

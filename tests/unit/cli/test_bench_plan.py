"""The benchmark plan: stages, learning-rate grid, sizes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt_cli.bench_plan import (
    STRATEGIES,
    RunSpec,
    compression_plan,
    full_plan,
    gpu_plan,
    lr_grid,
    quick_plan,
    tiny_plan,
)


def test_full_plan_meets_the_issue() -> None:
    plan = full_plan()
    assert plan.clients >= 6 and len(plan.seeds) >= 3
    assert set(plan.tasks) == {"text", "vision"}
    assert plan.strategies == STRATEGIES
    assert set(plan.dp_epsilons) == {1.0, 4.0, 8.0}  # with ε = ∞ from the plain fpl runs
    assert plan.dp_sgd_epsilons


def test_stages_cover_every_strategy_seed_and_privacy_level() -> None:
    plan = full_plan()
    tune = plan.tune_runs()
    assert {r.seed for r in tune} == {plan.seeds[0]}
    assert len(tune) == 2 * sum(len(plan.factors_of(s)) for s in STRATEGIES)
    assert len({r.learning_rate for r in tune if r.strategy == "fpl"}) == len(plan.lr_factors)
    chosen = {(t, s): 0.5 for t in plan.tasks for s in plan.strategies}
    evals = plan.eval_runs(chosen)
    assert {r.seed for r in evals} == set(plan.seeds[1:])
    assert all(r.learning_rate == 0.5 for r in evals)
    privacy = plan.privacy_runs(chosen)
    assert {r.dp_epsilon for r in privacy if r.dp_epsilon} == set(plan.dp_epsilons)
    assert {r.task for r in privacy if r.dp_sgd_epsilon} == {"text"}  # DP-SGD: text silos only
    compression = plan.compression_runs(chosen)
    assert {r.upload_compression for r in compression} == set(plan.upload_compressions)
    names = [r.name for r in tune + evals + privacy + compression]
    assert len(names) == len(set(names)) == plan.total_runs()


def test_quick_plan_has_the_same_structure_smaller() -> None:
    quick, full = quick_plan(), full_plan()
    assert quick.strategies == full.strategies and quick.clients == full.clients
    assert quick.total_runs() < full.total_runs()
    for task in full.tasks:
        assert quick.tasks[task].rounds * quick.tasks[task].local_steps < (
            full.tasks[task].rounds * full.tasks[task].local_steps
        )


def test_lr_grid_multiplies_the_default() -> None:
    assert lr_grid("text", "fpl", (1.0, 3.0)) == [0.03, 0.09]
    assert lr_grid("text", "full-fedavg", (1.0,)) == [5e-5]


def test_bad_plans_are_refused() -> None:
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
    plan = full_plan()
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
    assert replace(full_plan(), strategies=("local",)).compression_runs({}) == []


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


def test_unknown_or_exact_upload_compressions_are_refused() -> None:
    for bad in (("none",), ("zip",)):
        with pytest.raises(ValueError, match="upload compressions"):
            replace(tiny_plan(), upload_compressions=bad)


def test_skip_privacy_keeps_the_compression_stage_and_skip_compression_drops_it() -> None:
    from fedprompt_cli.bench import plan_with_overrides, untuned_learning_rates

    plan = plan_with_overrides(full_plan(), seeds=None, clients=None, skip_privacy=True)
    chosen = untuned_learning_rates(plan)
    assert plan.privacy_runs(chosen) == [] and len(plan.compression_runs(chosen)) == 6
    plan = plan_with_overrides(full_plan(), seeds=None, clients=None, skip_compression=True)
    assert plan.compression_runs(chosen) == [] and plan.privacy_runs(chosen)

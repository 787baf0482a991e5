"""The benchmark plan: stages, learning-rate grid, sizes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt_cli.bench_plan import STRATEGIES, full_plan, lr_grid, quick_plan, tiny_plan


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
    names = [r.name for r in tune + evals + privacy]
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

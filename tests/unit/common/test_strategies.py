"""The one strategy registry: every name described once, lookups fail clearly."""

from __future__ import annotations

import pytest

from fedprompt.strategies import (
    PROMPT_STRATEGIES,
    STRATEGIES,
    STRATEGY_NAMES,
    TASKS,
    ModelFamily,
    StrategyName,
    strategies_help,
    strategy_spec,
)


def test_every_name_has_exactly_one_spec_in_registry_order() -> None:
    assert set(STRATEGIES) == set(StrategyName)
    assert STRATEGY_NAMES == ("local", "fedavg", "clustered", "fpl", "lora-fedavg", "full-fedavg")
    assert all(spec.name is name for name, spec in STRATEGIES.items())


def test_the_families_and_levels_say_what_travels() -> None:
    assert {"local", "fedavg", "clustered", "fpl"} == PROMPT_STRATEGIES
    assert strategy_spec("lora-fedavg").family is ModelFamily.LORA
    assert strategy_spec("full-fedavg").family is ModelFamily.FULL
    assert [s.name for s in STRATEGIES.values() if not s.shares_tensors] == ["local"]
    assert [s.name for s in STRATEGIES.values() if s.clustered] == ["clustered", "fpl"]


def test_every_strategy_has_a_learning_rate_per_task() -> None:
    for spec in STRATEGIES.values():
        assert all(spec.learning_rate(task) > 0 for task in TASKS)
    assert strategy_spec("fpl").learning_rate("text") == 3e-2
    assert strategy_spec("full-fedavg").learning_rate("vision") == 3e-4
    with pytest.raises(ValueError, match="unknown task 'audio'"):
        strategy_spec("fpl").learning_rate("audio")


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; known: local, fedavg"):
        strategy_spec("fedsgd")


def test_the_help_text_names_every_strategy() -> None:
    text = strategies_help()
    assert all(f"{name}:" in text for name in STRATEGY_NAMES)

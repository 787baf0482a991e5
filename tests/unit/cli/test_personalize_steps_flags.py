"""``fedprompt up`` and the bench's ablation knobs pass the personalization pass's steps on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt.config import ConfigError
from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.bench import with_ablation
from fedprompt_cli.bench_plan import ABLATIONS, Ablation
from fedprompt_coordinator.strategies import build_strategy
from tests.unit.cli.test_ablations import BASE, _coordinator, _differences


def test_up_options_pass_the_steps_and_only_them_into_every_evaluate_task() -> None:
    personal = replace(BASE, personalize_steps=25)
    assert personal.coordinator_flags()[-2:] == ["--personalize-steps", "25"]
    config = _coordinator(personal)
    assert _differences(_coordinator(BASE), config) == {"evaluation.personalize_steps"}
    strategy = build_strategy(config)
    assert strategy.configure_evaluate().personalize_steps == 25
    assert strategy.configure_evaluate().training == strategy.configure_train()
    assert "--personalize-steps" not in BASE.coordinator_flags()  # the coordinator's default
    assert build_strategy(_coordinator(BASE)).configure_evaluate().personalize_steps == 0


@pytest.mark.parametrize("steps", [-1, 10_001, 2**40])
def test_hostile_steps_from_up_are_refused_by_the_coordinator(steps: int) -> None:
    with pytest.raises(ConfigError, match="personalize_steps"):
        _coordinator(replace(BASE, personalize_steps=steps))


def test_fedprompt_up_takes_the_personalize_steps_flag() -> None:
    assert build_parser().parse_args(["up", "--personalize-steps", "40"]).personalize_steps == 40
    assert build_parser().parse_args(["up"]).personalize_steps is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--personalize-steps", "4.5"])


def test_an_ablation_can_ask_for_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = Ablation("personal", "nothing (a final pass of 30 steps)", personalize_steps=30)
    monkeypatch.setitem(ABLATIONS, knobs.name, knobs)
    config = _coordinator(with_ablation(BASE, "personal"))
    assert config.evaluation.personalize_steps == 30
    assert all(a.personalize_steps is None for a in ABLATIONS.values() if a is not knobs)
    assert with_ablation(BASE, "no-infonce").personalize_steps is None  # today's plan: unchanged

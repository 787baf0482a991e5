"""``fedprompt up`` and the bench's ablation knobs pass FedProx's μ to the coordinator."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt.config import ConfigError
from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.bench import with_ablation
from fedprompt_cli.bench_plan import ABLATIONS, Ablation
from fedprompt_coordinator.strategies import build_strategy
from tests.unit.cli.test_ablations import BASE, _coordinator, _differences


def test_up_options_pass_mu_and_only_it_into_every_train_task() -> None:
    fedprox = replace(BASE, proximal_mu=0.01)
    assert fedprox.coordinator_flags()[-2:] == ["--proximal-mu", "0.01"]
    config = _coordinator(fedprox)
    assert _differences(_coordinator(BASE), config) == {"training.proximal_mu"}
    assert build_strategy(config).configure_train().proximal_mu == 0.01
    assert "--proximal-mu" not in BASE.coordinator_flags()  # the coordinator's default: off
    assert build_strategy(_coordinator(BASE)).configure_train().proximal_mu == 0.0


@pytest.mark.parametrize("mu", [float("nan"), float("inf"), -1.0, 1e9])
def test_a_hostile_mu_from_up_is_refused_by_the_coordinator(mu: float) -> None:
    with pytest.raises(ConfigError, match="proximal_mu"):
        _coordinator(replace(BASE, proximal_mu=mu))


def test_fedprompt_up_takes_the_proximal_mu_flag() -> None:
    assert build_parser().parse_args(["up", "--proximal-mu", "0.1"]).proximal_mu == 0.1
    assert build_parser().parse_args(["up"]).proximal_mu is None


def test_an_ablation_can_set_mu(monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = Ablation("fedprox", "plain local steps (FedProx's μ = 0.1)", proximal_mu=0.1)
    monkeypatch.setitem(ABLATIONS, knobs.name, knobs)
    config = _coordinator(with_ablation(BASE, "fedprox"))
    assert config.training.proximal_mu == 0.1
    assert with_ablation(BASE, "no-infonce").proximal_mu is None  # today's plan: unchanged

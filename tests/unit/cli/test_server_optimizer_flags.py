"""``fedprompt up`` and the bench's ablation knobs pass the server optimizer to the coordinator."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt.config import ConfigError
from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.bench import with_ablation
from fedprompt_cli.bench_plan import ABLATIONS, Ablation
from fedprompt_coordinator.aggregation.server_optimizer import FedAdam, FedYogi
from tests.unit.cli.test_ablations import BASE, _coordinator, _differences


def test_up_options_pass_the_server_optimizer_and_only_it() -> None:
    yogi = replace(BASE, server_optimizer="yogi", server_lr=0.01)
    assert yogi.coordinator_flags()[-4:] == ["--server-optimizer", "yogi", "--server-lr", "0.01"]
    config = _coordinator(yogi)
    assert isinstance(config.aggregation.server_optimizer.build(), FedYogi)
    assert _differences(_coordinator(BASE), config) == {
        "aggregation.server_optimizer.name",
        "aggregation.server_optimizer.lr",
    }
    assert "--server-optimizer" not in BASE.coordinator_flags()  # the coordinator's default


def test_an_adaptive_optimizer_without_its_rate_is_refused_by_the_coordinator() -> None:
    with pytest.raises(ConfigError, match="needs a learning rate"):
        _coordinator(replace(BASE, server_optimizer="adam"))


def test_fedprompt_up_takes_the_server_optimizer_flags() -> None:
    args = build_parser().parse_args(["up", "--server-optimizer", "adam", "--server-lr", "0.03"])
    assert (args.server_optimizer, args.server_lr) == ("adam", 0.03)
    plain = build_parser().parse_args(["up"])
    assert (plain.server_optimizer, plain.server_lr) == (None, None)


def test_an_ablation_can_name_a_server_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = Ablation("fedadam", "FedAvg's server update (FedAdam)", server_optimizer="adam")
    monkeypatch.setitem(ABLATIONS, knobs.name, replace(knobs, server_lr=0.01))
    config = _coordinator(with_ablation(BASE, "fedadam"))
    chosen = config.aggregation.server_optimizer.build()
    assert isinstance(chosen, FedAdam) and chosen.lr == 0.01

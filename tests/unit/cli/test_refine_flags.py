"""``fedprompt up`` and the bench's ablation knobs pass cluster refinement on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedprompt.config import ConfigError
from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.bench import with_ablation
from fedprompt_cli.bench_plan import ABLATIONS, Ablation
from tests.unit.cli.test_ablations import BASE, _coordinator, _differences


def test_up_options_pass_r_and_the_margin_and_only_them() -> None:
    refining = replace(BASE, refine_after_rounds=2, refine_margin=0.3)
    flags = refining.coordinator_flags()
    assert flags[flags.index("--refine-after-rounds") + 1] == "2"
    assert flags[flags.index("--refine-margin") + 1] == "0.3"
    config = _coordinator(refining)
    assert _differences(_coordinator(BASE), config) == {
        "clustering.refine_after_rounds",
        "clustering.refine_margin",
    }
    assert config.clustering.refine_after_rounds == 2
    assert config.clustering.refine_margin == 0.3
    assert "--refine-after-rounds" not in BASE.coordinator_flags()  # the coordinator's default
    assert _coordinator(BASE).clustering.refine_after_rounds == 0


def test_refinement_without_the_clusterer_is_refused_with_the_reason() -> None:
    no_clusterer = replace(BASE, refine_after_rounds=1, clustering=False)
    with pytest.raises(ConfigError, match="needs a clusterer"):
        _coordinator(no_clusterer)


@pytest.mark.parametrize(
    ("knobs", "fragment"),
    [({"refine_after_rounds": -1}, "refine_after_rounds"), ({"refine_margin": 3.0}, "margin")],
)
def test_hostile_values_from_up_are_refused_by_the_coordinator(
    knobs: dict[str, float], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _coordinator(replace(BASE, **{"refine_after_rounds": 1, **knobs}))  # type: ignore[arg-type]


def test_fedprompt_up_takes_the_refinement_flags() -> None:
    args = build_parser().parse_args(["up", "--refine-after-rounds", "2", "--refine-margin", "0.2"])
    assert (args.refine_after_rounds, args.refine_margin) == (2, 0.2)
    args = build_parser().parse_args(["up"])
    assert (args.refine_after_rounds, args.refine_margin) == (None, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--refine-after-rounds", "1.5"])


def test_an_ablation_can_turn_refinement_on(monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = Ablation("refined", "nothing (refinement after 1 round)", refine_after_rounds=1)
    monkeypatch.setitem(ABLATIONS, knobs.name, knobs)
    assert _coordinator(with_ablation(BASE, "refined")).clustering.refine_after_rounds == 1
    assert with_ablation(BASE, "no-infonce").refine_after_rounds is None  # today's plans

"""The coordinator's strategy objects: one per registered name, each owning its behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt.strategies import STRATEGIES, StrategyName
from fedprompt_coordinator.aggregation.base import ClusterAggregator, LevelWrapper
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import EvaluateSettings, FederationModel
from fedprompt_coordinator.strategies import build_strategy, registered_strategies

TENSORS = {
    "prompt.global": np.ones((2, 3), np.float32),
    "prompt.cluster": np.zeros((1, 3), np.float32),
    "head.weight": np.zeros((2, 3), np.float32),
}


def _config(tmp_path: Path, strategy: str, **overrides: object) -> CoordinatorConfig:
    return CoordinatorConfig(state_dir=tmp_path, strategy=strategy, **overrides)  # type: ignore[arg-type]


def test_every_registered_name_has_a_strategy_object(tmp_path: Path) -> None:
    assert registered_strategies() == set(StrategyName)
    for name, spec in STRATEGIES.items():
        strategy = build_strategy(_config(tmp_path, name.value))
        assert strategy.name is name and strategy.spec is spec


@pytest.mark.parametrize(
    ("name", "global_names"),
    [
        ("fedavg", ["head.weight", "prompt.cluster", "prompt.global"]),
        ("lora-fedavg", ["head.weight", "prompt.cluster", "prompt.global"]),
        ("full-fedavg", ["head.weight", "prompt.cluster", "prompt.global"]),
        ("local", ["head.weight", "prompt.cluster", "prompt.global"]),
        ("clustered", ["prompt.global"]),
        ("fpl", ["prompt.global"]),
    ],
)
def test_levels_are_the_strategys(tmp_path: Path, name: str, global_names: list[str]) -> None:
    glob, clus = build_strategy(_config(tmp_path, name)).split_levels(TENSORS)
    assert sorted(glob) == global_names
    assert sorted(clus) == sorted(set(TENSORS) - set(global_names))


def test_only_local_accepts_an_empty_initial_model(tmp_path: Path) -> None:
    build_strategy(_config(tmp_path, "local")).check_initial({})
    for name in ("fedavg", "clustered", "fpl", "lora-fedavg", "full-fedavg"):
        with pytest.raises(InvalidArgumentError, match="holds no tensors"):
            build_strategy(_config(tmp_path, name)).check_initial({})
        build_strategy(_config(tmp_path, name)).check_initial(TENSORS)


def test_only_fpl_asks_clients_for_the_infonce_term(tmp_path: Path) -> None:
    contrastive = {"weight": 0.25, "temperature": 0.7}
    training = {"local_steps": 3, "batch_size": 4, "learning_rate": 0.1}
    for name in STRATEGIES:
        settings = build_strategy(
            _config(tmp_path, name.value, contrastive=contrastive, training=training)
        ).configure_train()
        assert (settings.local_steps, settings.batch_size, settings.learning_rate) == (3, 4, 0.1)
        assert settings.contrastive_temperature == 0.7
        assert settings.contrastive_weight == (0.25 if name is StrategyName.FPL else 0.0)
        assert settings.proximal_mu == 0.0  # FedProx off unless configured


def test_every_strategy_sends_the_configured_proximal_mu(tmp_path: Path) -> None:
    training = {"proximal_mu": 0.03}
    for name in STRATEGIES:
        strategy = build_strategy(_config(tmp_path, name.value, training=training))
        assert strategy.configure_train().proximal_mu == 0.03, name


def test_every_strategy_asks_for_the_configured_personalization_pass(tmp_path: Path) -> None:
    training = {"local_steps": 3, "batch_size": 4, "learning_rate": 0.1, "proximal_mu": 0.5}
    for name in STRATEGIES:
        off = build_strategy(_config(tmp_path, name.value, training=training))
        assert off.configure_evaluate() == EvaluateSettings(), name  # no pass, no settings
        on = build_strategy(
            _config(tmp_path, name.value, training=training, evaluation={"personalize_steps": 12})
        )
        evaluate = on.configure_evaluate()
        assert evaluate.personalize_steps == 12, name
        assert evaluate.training == on.configure_train(), name  # the TRAIN tasks' settings


def test_only_fpl_round_start_models_carry_centroids(tmp_path: Path) -> None:
    model = FederationModel(
        global_tensors={"prompt.global": np.zeros((2, 3), np.float32)},
        cluster_tensors={0: {"prompt.cluster": np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])}},
        cluster_template={"prompt.cluster": np.full((2, 3), 9.0, np.float32)},
    )
    extras = build_strategy(_config(tmp_path, "fpl")).round_start_tensors(model, [0, 4])
    assert sorted(extras) == ["centroid.0", "centroid.4"]
    np.testing.assert_array_equal(extras["centroid.0"], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(extras["centroid.4"], [9.0, 9.0, 9.0])  # a new cluster
    assert all(v.dtype == np.float32 for v in extras.values())
    for name in ("fedavg", "clustered", "local"):
        assert build_strategy(_config(tmp_path, name)).round_start_tensors(model, [0]) == {}


def test_fpl_aggregates_with_alignment_weights_unless_the_ablation_says_mean(
    tmp_path: Path,
) -> None:
    fpl = build_strategy(_config(tmp_path, "fpl", contrastive={"temperature": 0.3}))
    aggregator = fpl.base_aggregator()
    assert isinstance(aggregator, ContrastiveFedAvg) and aggregator.temperature == 0.3
    mean = build_strategy(_config(tmp_path, "fpl", contrastive={"server_weighting": "mean"}))
    assert type(mean.base_aggregator()) is WeightedFedAvg
    for name in ("fedavg", "clustered", "lora-fedavg"):
        assert type(build_strategy(_config(tmp_path, name)).base_aggregator()) is WeightedFedAvg


def _chain(aggregator: ClusterAggregator) -> list[tuple[str, str]]:
    """(class name, level) of each wrapper from the outside in, then the aggregator itself."""
    out = []
    while isinstance(aggregator, LevelWrapper):
        out.append((type(aggregator).__name__, aggregator.level.value))
        aggregator = aggregator.inner
    out.append((type(aggregator).__name__, ""))
    return out


def test_by_default_weights_are_capped_and_every_level_is_clipped(tmp_path: Path) -> None:
    aggregator = build_strategy(_config(tmp_path, "fpl")).make_aggregator()
    assert _chain(aggregator) == [
        ("NormClipping", "cluster"),
        ("NormClipping", "global"),
        ("ContrastiveFedAvg", ""),
    ]
    base = build_strategy(_config(tmp_path, "fpl")).base_aggregator()
    assert isinstance(base, WeightedFedAvg)
    assert (base.weighting.max_share, base.weighting.max_multiple) == (0.5, 2.0)
    assert not base.weighting.uniform


def test_rules_sit_inside_clipping_so_they_only_see_clipped_updates(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "clustered",
        aggregation={
            "global_rule": "median",
            "cluster_rule": "multi-krum",
            "weighting": "uniform",
            "clipping": {"mode": "fixed", "bound": 2.0},
        },
    )
    strategy = build_strategy(config)
    assert _chain(strategy.make_aggregator()) == [
        ("NormClipping", "cluster"),
        ("NormClipping", "global"),
        ("MultiKrum", "cluster"),
        ("CoordinateMedian", "global"),
        ("WeightedFedAvg", ""),
    ]
    # under DP-FedAvg the global level is not clipped here (DP-FedAvg clips it itself)
    assert _chain(strategy.make_aggregator(clip_global=False))[0] == ("NormClipping", "cluster")
    assert len(_chain(strategy.make_aggregator(clip_global=False))) == 4
    off = _config(tmp_path, "fedavg", aggregation={"clipping": {"mode": "off"}})
    assert _chain(build_strategy(off).make_aggregator()) == [("WeightedFedAvg", "")]


def test_the_levels_follow_the_registry(tmp_path: Path) -> None:
    for name, spec in STRATEGIES.items():
        _, cluster = build_strategy(_config(tmp_path, name.value)).split_levels(TENSORS)
        assert bool(cluster) is spec.clustered

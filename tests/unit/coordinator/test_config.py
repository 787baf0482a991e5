"""Tests of the coordinator configuration's aggregation rules: defaults and refusals at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fedprompt.config import load_config
from fedprompt_coordinator.config import (
    DEFAULT_MAX_UPDATE_L2_NORM,
    AggregationRule,
    ClipMode,
    CoordinatorConfig,
    Weighting,
)


def test_defaults_bound_every_members_influence() -> None:
    config = CoordinatorConfig()
    agg = config.aggregation
    assert (agg.global_rule, agg.cluster_rule) == (AggregationRule.MEAN, AggregationRule.MEAN)
    assert agg.weighting is Weighting.EXAMPLES
    assert (agg.max_weight_share, agg.max_weight_multiple) == (0.5, 2.0)
    assert agg.clipping.mode is ClipMode.ADAPTIVE and agg.clipping.target_quantile == 0.5
    assert config.max_update_l2_norm == DEFAULT_MAX_UPDATE_L2_NORM < 1e4


DP = {"enabled": True, "noise_multiplier": 1.0}
#: DP of the global level only: the cluster level keeps issue 12's defences (robust rules).
DP_GLOBAL = {**DP, "levels": ["global"]}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"privacy": DP, "aggregation": {"global_rule": "median"}}, "cannot be combined"),
        ({"privacy": DP, "aggregation": {"global_rule": "multi-krum"}}, "privacy.enabled"),
        ({"privacy": DP, "aggregation": {"cluster_rule": "multi-krum"}}, "cluster and head"),
        ({"strategy": "fedavg", "aggregation": {"cluster_rule": "median"}}, "no cluster level"),
        ({"strategy": "local", "aggregation": {"global_rule": "median"}}, "aggregates nothing"),
        ({"aggregation": {"cluster_rule": "median"}}, "contrastive alignment weights"),
        ({"aggregation": {"cluster_rule": "trimmed-mean"}}, "server_weighting: mean"),
        ({"aggregation": {"global_rule": "mode"}}, "global_rule"),
        ({"aggregation": {"trim_fraction": 0.5}}, "trim_fraction"),
        ({"aggregation": {"clipping": {"mode": "fixed"}}}, "needs `bound`"),
        ({"aggregation": {"clipping": {"part_bounds": {"prompt": 1.0}}}}, "part_bounds"),
        ({"aggregation": {"clipping": {"part_bounds": {"head": 0.0}}}}, "positive"),
        ({"aggregation": {"max_weight_share": 0}}, "max_weight_share"),
        ({"aggregation": {"max_weight_multiple": 0.5}}, "max_weight_multiple"),
        ({"aggregation": {"weighting": "declared"}}, "weighting"),
    ],
)
def test_invalid_combinations_are_refused_at_load_with_the_reason(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        CoordinatorConfig(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {
            "privacy": DP_GLOBAL,
            "aggregation": {"cluster_rule": "median"},
            "strategy": "clustered",
        },
        {"privacy": DP_GLOBAL, "aggregation": {"cluster_rule": "multi-krum"}},
        {"aggregation": {"cluster_rule": "multi-krum"}},  # fpl: keeps the alignment weights
        {
            "aggregation": {"cluster_rule": "median"},
            "contrastive": {"server_weighting": "mean"},
        },
        {"strategy": "fedavg", "aggregation": {"global_rule": "trimmed-mean"}},
        {
            "aggregation": {
                "clipping": {
                    "mode": "fixed",
                    "part_bounds": dict.fromkeys(
                        ["global_prompt", "cluster_prompt", "head", "lora", "backbone", "other"],
                        1.0,
                    ),
                }
            }
        },
    ],
)
def test_valid_combinations_load(settings: dict[str, Any]) -> None:
    CoordinatorConfig(**settings)


def test_clipping_off_in_yaml_or_the_environment_means_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "coordinator.yaml"
    path.write_text("aggregation:\n  clipping:\n    mode: off\n")  # YAML reads `off` as false
    config = load_config(CoordinatorConfig, yaml_path=str(path), env_prefix="FEDPROMPT_X_")
    assert config.aggregation.clipping.mode is ClipMode.OFF
    monkeypatch.setenv("FEDPROMPT_X_AGGREGATION__CLIPPING__MODE", "off")
    monkeypatch.setenv("FEDPROMPT_X_AGGREGATION__GLOBAL_RULE", "median")
    config = load_config(CoordinatorConfig, yaml_path=None, env_prefix="FEDPROMPT_X_")
    assert config.aggregation.clipping.mode is ClipMode.OFF
    assert config.aggregation.global_rule is AggregationRule.MEDIAN

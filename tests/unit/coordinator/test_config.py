"""Tests of the coordinator configuration's aggregation rules: defaults and refusals at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fedprompt.config import ConfigError, load_config
from fedprompt_coordinator.__main__ import config_from_args, parse_args
from fedprompt_coordinator.aggregation.server_optimizer import FedYogi, ServerSGD
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


def _optimizer(**settings: Any) -> dict[str, Any]:
    """Settings with ``aggregation.server_optimizer`` set to ``settings``."""
    return {"aggregation": {"server_optimizer": settings}}


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
        # the server optimizer: names, η, hyperparameters it does not read, ranges
        (_optimizer(name="adam"), "needs a learning rate"),
        (_optimizer(name="yogi"), "needs a learning rate"),
        (_optimizer(name="adagrad"), "needs a learning rate"),
        (_optimizer(name="FedAdam", lr=0.1), "known: sgd, adam, yogi, adagrad"),
        (_optimizer(name="", lr=0.1), "unknown server optimizer"),
        (_optimizer(name="sgd", beta1=0.9), "'sgd' does not use beta1"),
        (_optimizer(name="sgd", tau=0.1), "'sgd' does not use tau"),
        (_optimizer(name="adagrad", lr=0.1, beta2=0.9), "'adagrad' does not use beta2"),
        (_optimizer(name="adam", lr=0), "greater than 0"),
        (_optimizer(name="adam", lr=-0.1), "greater than 0"),
        (_optimizer(name="adam", lr=float("inf")), "finite number"),
        (_optimizer(name="adam", lr=float("nan")), "finite number"),
        (_optimizer(name="adam", lr=0.1, beta1=1.0), "less than 1"),
        (_optimizer(name="adam", lr=0.1, beta2=-0.01), "greater than or equal to 0"),
        (_optimizer(name="yogi", lr=0.1, tau=0), "greater than 0"),
        (_optimizer(name="yogi", lr=0.1, tau=float("inf")), "finite number"),
        (_optimizer(name="adam", lr=0.1, momentum=0.9), "Extra inputs"),
        (_optimizer(name="adam", lr="fast"), "valid number"),
        (
            {"strategy": "local", **_optimizer(name="adam", lr=0.1)},
            "strategy 'local' aggregates nothing",
        ),
        (
            {"privacy": {**DP, "server_learning_rate": 0.5}, **_optimizer(name="adam", lr=0.1)},
            "leave privacy.server_learning_rate at 1",
        ),
        (
            {"privacy": {**DP, "server_learning_rate": 2.0}, **_optimizer(name="sgd", lr=0.5)},
            "would both scale the update",
        ),
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
        # DP's own η with today's update, and adaptive optimizers over DP with η_DP = 1
        {"privacy": {**DP, "server_learning_rate": 0.5}},
        {"privacy": DP, **_optimizer(name="yogi", lr=0.01)},
        {"secure_aggregation": {"enabled": True}, **_optimizer(name="adam", lr=0.01)},
        {"strategy": "fedavg", **_optimizer(name="adagrad", lr=0.1, beta1=0.0, tau=1e-6)},
        {"strategy": "local"},  # plain sgd: nothing to step, nothing refused
        _optimizer(name="sgd", lr=1.0),
        _optimizer(name="adam", lr=0.1, beta1=0.0, beta2=0.0),
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


def test_the_server_optimizer_is_todays_update_unless_set_with_reddi_et_als_defaults() -> None:
    chosen = CoordinatorConfig().aggregation.server_optimizer
    built = chosen.build()
    assert isinstance(built, ServerSGD) and built.identity and built.lr == 1.0
    assert (chosen.beta1, chosen.beta2, chosen.tau) == (0.9, 0.99, 1e-3)
    adam = CoordinatorConfig(**_optimizer(name="adam", lr=0.03)).aggregation.server_optimizer
    assert (adam.build().lr, adam.build().beta2, adam.build().tau) == (0.03, 0.99, 1e-3)


def test_the_coordinator_flags_and_environment_set_the_server_optimizer() -> None:
    args = parse_args(["--server-optimizer", "yogi", "--server-lr", "0.01"])
    chosen = config_from_args(args, environ={}).aggregation.server_optimizer
    assert isinstance(chosen.build(), FedYogi) and chosen.lr == 0.01
    environ = {
        "FEDPROMPT_COORDINATOR_AGGREGATION__SERVER_OPTIMIZER__NAME": "adam",
        "FEDPROMPT_COORDINATOR_AGGREGATION__SERVER_OPTIMIZER__LR": "0.05",
    }
    from_env = config_from_args(parse_args([]), environ=environ).aggregation.server_optimizer
    assert (from_env.name, from_env.lr) == ("adam", 0.05)
    with pytest.raises(ConfigError, match="needs a learning rate"):
        config_from_args(parse_args(["--server-optimizer", "adam"]), environ={})
    with pytest.raises(SystemExit):
        parse_args(["--server-optimizer", "lamb"])


@pytest.mark.parametrize(
    "mu", [float("nan"), float("inf"), float("-inf"), -1.0, -1e-12, 100.000001, 1e9, True]
)
def test_a_hostile_proximal_mu_is_refused_at_load(mu: float) -> None:
    expected = "must be a number" if isinstance(mu, bool) else r"finite number in \[0, 100\]"
    with pytest.raises(ValidationError, match=expected):
        CoordinatorConfig(training={"proximal_mu": mu})  # type: ignore[arg-type]


def test_proximal_mu_is_off_by_default_and_set_by_flag_yaml_or_environment(
    tmp_path: Path,
) -> None:
    assert CoordinatorConfig().training.proximal_mu == 0.0
    for mu in (0.0, 0.01, 100.0):
        assert CoordinatorConfig(training={"proximal_mu": mu}).training.proximal_mu == mu  # type: ignore[arg-type]
    from_flag = config_from_args(parse_args(["--proximal-mu", "0.1"]), environ={})
    assert from_flag.training.proximal_mu == 0.1
    environ = {"FEDPROMPT_COORDINATOR_TRAINING__PROXIMAL_MU": "0.01"}
    assert config_from_args(parse_args([]), environ=environ).training.proximal_mu == 0.01
    path = tmp_path / "coordinator.yaml"
    path.write_text("training:\n  proximal_mu: .inf\n")  # YAML's infinity
    with pytest.raises(ConfigError, match="proximal_mu"):
        config_from_args(parse_args(["--config", str(path)]), environ={})
    for hostile in ("nan", "-1", "1e9"):
        with pytest.raises(ConfigError, match="proximal_mu"):
            config_from_args(parse_args(["--proximal-mu", hostile]), environ={})


@pytest.mark.parametrize(
    ("contrastive", "fragment"),
    [
        ({"weight": float("inf")}, "finite"),
        ({"weight": float("nan")}, "finite"),
        ({"weight": -0.1}, "contrastive_weight"),
        ({"weight": 1e3}, "contrastive_weight"),
        ({"weight": True}, "must be a number"),
        ({"temperature": 0.0}, "contrastive_temperature"),
        ({"temperature": 1e-30}, "contrastive_temperature"),
        ({"temperature": float("inf")}, "finite"),
        ({"temperature": 1e4}, "contrastive_temperature"),
    ],
)
def test_a_hostile_lambda_or_tau_is_refused_at_load(
    contrastive: dict[str, object], fragment: str
) -> None:
    """The clients refuse these too (an infinite or NaN InfoNCE loss): the coordinator must
    not start a federation every client would then refuse to train in."""
    with pytest.raises(ValidationError, match=fragment):
        CoordinatorConfig(contrastive=contrastive)  # type: ignore[arg-type]
    environ = {"FEDPROMPT_COORDINATOR_CONTRASTIVE__WEIGHT": "0.25"}
    assert config_from_args(parse_args([]), environ=environ).contrastive.weight == 0.25


@pytest.mark.parametrize("steps", [-1, 10_001, 2**32, True, False, 2.5, 5.0, "5", None])
def test_a_hostile_personalize_steps_is_refused_at_load(steps: object) -> None:
    expected = (
        "must be an integer"
        if isinstance(steps, bool) or not isinstance(steps, int)
        else r"in \[0, 10000\]"
    )
    with pytest.raises(ValidationError, match=expected):
        CoordinatorConfig(evaluation={"personalize_steps": steps})  # type: ignore[arg-type]


def test_personalize_steps_is_off_by_default_and_set_by_flag_yaml_or_environment(
    tmp_path: Path,
) -> None:
    assert CoordinatorConfig().evaluation.personalize_steps == 0
    for steps in (0, 1, 10_000):
        config = CoordinatorConfig(evaluation={"personalize_steps": steps})  # type: ignore[arg-type]
        assert config.evaluation.personalize_steps == steps
    from_flag = config_from_args(parse_args(["--personalize-steps", "20"]), environ={})
    assert from_flag.evaluation.personalize_steps == 20
    environ = {"FEDPROMPT_COORDINATOR_EVALUATION__PERSONALIZE_STEPS": "7"}
    assert config_from_args(parse_args([]), environ=environ).evaluation.personalize_steps == 7
    path = tmp_path / "coordinator.yaml"
    path.write_text("evaluation:\n  personalize_steps: 30\n")
    loaded = config_from_args(parse_args(["--config", str(path)]), environ={})
    assert loaded.evaluation.personalize_steps == 30
    for hostile in ("true", "1.5", "-3", "10001"):
        path.write_text(f"evaluation:\n  personalize_steps: {hostile}\n")
        with pytest.raises(ConfigError, match="personalize_steps"):
            config_from_args(parse_args(["--config", str(path)]), environ={})
    for hostile in ("-1", "10001", "99999999999"):
        with pytest.raises(ConfigError, match="personalize_steps"):
            config_from_args(parse_args(["--personalize-steps", hostile]), environ={})
    with pytest.raises(SystemExit):  # argparse: not an integer
        parse_args(["--personalize-steps", "2.5"])

"""Each ablation of fpl changes the configuration it should, and only that (no federation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt_cli.bench import with_ablation
from fedprompt_cli.bench_plan import ABLATIONS
from fedprompt_cli.up import UpOptions
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.host import configs_of
from fedprompt_client_agent.host import parse_args as host_args
from fedprompt_coordinator.__main__ import config_from_args
from fedprompt_coordinator.__main__ import parse_args as coordinator_args
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.strategies import build_strategy

BASE = UpOptions(
    clients=2, rounds=3, local_steps=4, batch_size=8, max_length=32, seed=0, device="cpu",
    run_dir=Path("run"), model_dir=None, data_root=None, timeout_s=60.0, torch_threads=1,
)  # fmt: skip


def _coordinator(options: UpOptions) -> CoordinatorConfig:
    """The coordinator's configuration from the flags ``fedprompt up`` would start it with."""
    argv = [*options.coordinator_flags(), *options.clusterer_flags(50052), "--insecure"]
    return config_from_args(coordinator_args(argv), environ={})


def _client(options: UpOptions, tmp_path: Path) -> ClientAgentConfig:
    """A hosted agent's configuration from the flags ``fedprompt up`` would start it with."""
    argv = ["--coordinator", "127.0.0.1:1", "--silo-dir", str(tmp_path / "silo-a")]
    argv += ["--state-root", str(tmp_path / "state"), "--insecure", *options.client_flags()]
    return configs_of(host_args(argv))[0]


def _differences(a: object, b: object, prefix: str = "") -> set[str]:
    """Dotted names of the fields two (nested) pydantic configs disagree on."""
    out: set[str] = set()
    for name in type(a).model_fields:  # type: ignore[attr-defined]
        x, y = getattr(a, name), getattr(b, name)
        if hasattr(type(x), "model_fields") and type(x) is type(y):
            out |= _differences(x, y, f"{prefix}{name}.")
        elif x != y:
            out.add(prefix + name)
    return out


#: What each ablation must change: (coordinator fields, client fields, clusterer started).
EXPECTED = {
    "no-infonce": ({"contrastive.weight"}, set(), True),
    "mean-weights": ({"contrastive.server_weighting"}, set(), True),
    "no-global": (set(), {"n_global"}, True),
    "no-local": (set(), {"n_local"}, True),
    "no-clustering": ({"clustering.address"}, set(), False),
}


def test_every_ablation_is_tested() -> None:
    assert set(EXPECTED) == set(ABLATIONS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_ablation_changes_only_its_knob(name: str, tmp_path: Path) -> None:
    full, ablated = BASE, with_ablation(BASE, name)
    coordinator, client, clusterer = EXPECTED[name]
    assert _differences(_coordinator(full), _coordinator(ablated)) == coordinator
    assert _differences(_client(full, tmp_path), _client(ablated, tmp_path)) == client
    assert ablated.clustering is clusterer
    assert with_ablation(BASE, None) == BASE


def test_no_infonce_sets_lambda_zero_in_every_train_task() -> None:
    full = build_strategy(_coordinator(BASE)).configure_train()
    ablated = build_strategy(_coordinator(with_ablation(BASE, "no-infonce"))).configure_train()
    assert full.contrastive_weight > 0 and ablated.contrastive_weight == 0.0
    assert full.learning_rate == ablated.learning_rate


def test_mean_weights_replace_the_contrastive_aggregator() -> None:
    full = build_strategy(_coordinator(BASE)).base_aggregator()
    mean = build_strategy(_coordinator(with_ablation(BASE, "mean-weights"))).base_aggregator()
    assert isinstance(full, ContrastiveFedAvg) and not isinstance(mean, ContrastiveFedAvg)


def test_no_clustering_leaves_the_coordinator_without_a_clusterer() -> None:
    ablated = with_ablation(BASE, "no-clustering")
    assert ablated.clusterer_flags(50052) == []
    assert _coordinator(ablated).clustering.address is None  # every client in cluster 0
    assert _coordinator(BASE).clustering.address == "127.0.0.1:50052"


@pytest.mark.parametrize(("name", "field"), [("no-global", "n_global"), ("no-local", "n_local")])
def test_segment_ablations_drop_that_segment_only(name: str, field: str, tmp_path: Path) -> None:
    config = _client(with_ablation(BASE, name), tmp_path)
    assert getattr(config, field) == 0
    others = {"n_global", "n_cluster", "n_local"} - {field}
    assert all(getattr(config, f) is None for f in others)  # the model's default sizes


def test_fedprompt_up_takes_every_ablation_knob() -> None:
    from fedprompt_cli.__main__ import build_parser

    args = build_parser().parse_args(
        ["up", "--server-weighting", "mean", "--n-global", "0", "--n-local", "0", "--no-clustering"]
    )
    assert (args.server_weighting, args.n_global, args.n_local, args.no_clustering) == (
        "mean", 0, 0, True
    )  # fmt: skip
    assert build_parser().parse_args(["up"]).no_clustering is False

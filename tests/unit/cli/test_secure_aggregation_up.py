"""``fedprompt up --secure-aggregation`` starts the coordinator with ``--secure-aggregation``,
which the coordinator reads into its config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedprompt.config import load_config
from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.up import UpOptions
from fedprompt_coordinator.__main__ import parse_args
from fedprompt_coordinator.config import CoordinatorConfig

BASE = UpOptions(
    clients=2, rounds=3, local_steps=4, batch_size=8, max_length=32, seed=0, device="cpu",
    run_dir=Path("run"), model_dir=None, data_root=None, timeout_s=60.0, torch_threads=1,
)  # fmt: skip


def test_fedprompt_up_passes_secure_aggregation_to_the_coordinator() -> None:
    parser = build_parser()
    assert parser.parse_args(["up", "--secure-aggregation"]).secure_aggregation is True
    assert parser.parse_args(["up"]).secure_aggregation is False
    assert "--secure-aggregation" in replace(BASE, secure_aggregation=True).coordinator_flags()
    assert "--secure-aggregation" not in BASE.coordinator_flags()


def test_coordinator_flag_enables_secure_aggregation() -> None:
    args = parse_args(["--secure-aggregation"])
    config = load_config(
        CoordinatorConfig,
        overrides={"secure_aggregation.enabled": True if args.secure_aggregation else None},
        environ={},
    )
    assert config.secure_aggregation.enabled
    assert not parse_args([]).secure_aggregation

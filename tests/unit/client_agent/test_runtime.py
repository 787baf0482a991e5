"""The silo runtime: what travels, what stays, and what survives a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.data.text_silos import SiloData, TextExample, write_silo_dir
from fedprompt_client_agent.runtime import SiloRuntime

TEXTS = {
    "pos": ["great relief, works well", "wonderful, no side effects", "excellent results"],
    "neg": ["terrible nausea all week", "awful headaches, stopped", "worst drug ever"],
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def silo_dir(tmp_path: Path) -> Path:
    examples = tuple(
        TextExample(text=t, label=i) for i, key in enumerate(TEXTS) for t in TEXTS[key]
    )
    silo = SiloData(
        name="clinic-x",
        labels=("pos", "neg"),
        train=examples,
        val=examples[:2],
        test=examples[2:4],
        metadata={"specialty": "psychiatry", "num_records": 6},
    )
    return write_silo_dir(silo, tmp_path / "silo")


def _config(silo_dir: Path, state: Path, **extra: object) -> ClientAgentConfig:
    return ClientAgentConfig.model_validate(
        {
            "client_id": "clinic-x",
            "data_dir": silo_dir,
            "state_dir": state,
            "device": "cpu",
            "max_length": 16,
            **extra,
        }
    )


def _settings() -> TrainSettings:
    return TrainSettings(local_steps=2, batch_size=4, learning_rate=0.05, head_learning_rate=0.01)


def test_the_local_segment_never_travels_and_survives_a_restart(
    silo_dir: Path, tmp_path: Path
) -> None:
    rt = SiloRuntime(_config(silo_dir, tmp_path / "state"))
    shared = rt.shared_state()
    assert sorted(shared) == ["head.bias", "head.weight", "prompt.cluster", "prompt.global"]
    assert "prompt.local" not in rt.capabilities.trainable_tensors
    rt.train(_settings())
    local_after_training = rt.model.local_state()["prompt.local"].copy()  # type: ignore[attr-defined]

    # whatever the server sends, the local segment stays as trained
    server = {k: np.full_like(v, 0.5) for k, v in shared.items()}
    rt.load_shared_state(server)
    np.testing.assert_array_equal(
        rt.model.local_state()["prompt.local"],  # type: ignore[attr-defined]
        local_after_training,
    )
    np.testing.assert_array_equal(rt.shared_state()["prompt.global"], server["prompt.global"])
    rt.save_personal()

    restarted = SiloRuntime(_config(silo_dir, tmp_path / "state"))
    np.testing.assert_array_equal(
        restarted.model.local_state()["prompt.local"],  # type: ignore[attr-defined]
        local_after_training,
    )
    assert restarted.capabilities.model_fingerprint == rt.capabilities.model_fingerprint


def test_local_strategy_shares_nothing_and_fingerprints_differ(
    silo_dir: Path, tmp_path: Path
) -> None:
    local = SiloRuntime(_config(silo_dir, tmp_path / "a", strategy="local"))
    assert local.shared_state() == {}
    assert local.capabilities.strategy == "local"
    fpl = SiloRuntime(_config(silo_dir, tmp_path / "b", strategy="fpl"))
    assert fpl.capabilities.model_fingerprint != local.capabilities.model_fingerprint
    metrics = local.train(_settings())
    assert metrics["steps"] == 2 and np.isfinite(metrics["loss"])
    evaluation = local.evaluate()
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and "val_accuracy" in evaluation


def test_dp_sgd_reports_the_silo_epsilon_and_resumes_it(silo_dir: Path, tmp_path: Path) -> None:
    cfg = _config(silo_dir, tmp_path / "dp", dp_sgd_noise_multiplier=1.0)
    rt = SiloRuntime(cfg)
    first = rt.train(_settings())
    assert first["dp_sgd_epsilon"] > 0
    second = rt.train(_settings())
    assert second["dp_sgd_epsilon"] > first["dp_sgd_epsilon"]
    restarted = SiloRuntime(cfg)
    assert restarted.train(_settings())["dp_sgd_epsilon"] > second["dp_sgd_epsilon"]

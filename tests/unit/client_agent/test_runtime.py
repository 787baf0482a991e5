"""The silo runtime: what travels, what stays, what survives a restart, what FedProx pulls."""

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
from fedprompt_client_agent.training.contrastive_loss import make_info_nce_loss

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


def test_proximal_mu_zero_trains_bit_for_bit_as_without_the_term(
    silo_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    centroids = {k: rng.normal(size=384).astype(np.float32) for k in range(2)}
    with_term = SiloRuntime(_config(silo_dir, tmp_path / "a"))
    without = SiloRuntime(_config(silo_dir, tmp_path / "b"))
    settings = TrainSettings(
        local_steps=3, batch_size=4, learning_rate=0.05, head_learning_rate=0.01,
        contrastive_weight=0.5, contrastive_temperature=0.3, centroids=centroids,
        proximal_mu=0.0, uploaded_tensors=tuple(with_term.shared_state()),
    )  # fmt: skip
    with_term.train(settings)
    # the code path of a task without μ: the trainer with the InfoNCE term alone
    without.trainer.update_config(steps=3, batch_size=4, lr=0.05, head_lr=0.01)
    info_nce = make_info_nce_loss(weight=0.5, temperature=0.3, own=0, centroids=centroids)
    without.trainer.train(extra_loss=info_nce)
    got, expected = with_term.model.personal_state(), without.model.personal_state()  # type: ignore[attr-defined]
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_task_with_mu_pulls_only_what_it_uploads_and_never_the_local_segment(
    silo_dir: Path, tmp_path: Path
) -> None:
    rt = SiloRuntime(_config(silo_dir, tmp_path / "state"))
    before = rt.model.personal_state()  # type: ignore[attr-defined]
    for names in (("prompt.local",), ("prompt.global", "prompt.local"), ("backbone.weight",)):
        hostile = TrainSettings(
            local_steps=2, batch_size=4, learning_rate=0.05, head_learning_rate=0.01,
            proximal_mu=0.1, uploaded_tensors=names,
        )  # fmt: skip
        with pytest.raises(ValueError, match="does not share"):
            rt.train(hostile)
    after = rt.model.personal_state()  # type: ignore[attr-defined]
    for key, value in before.items():  # refused before a single step
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    pulled = TrainSettings(
        local_steps=8, batch_size=4, learning_rate=0.05, head_learning_rate=0.05,
        proximal_mu=100.0, uploaded_tensors=("prompt.global", "prompt.cluster"),
    )  # fmt: skip
    rt.train(pulled)
    after = rt.model.personal_state()  # type: ignore[attr-defined]
    moved = {key: float(np.abs(after[key] - before[key]).max()) for key in before}
    assert moved["prompt.global"] < 0.05 and moved["prompt.cluster"] < 0.05, moved
    assert moved["prompt.local"] > 0.1 and moved["head.weight"] > 0.1, moved  # not pulled


def test_local_silos_have_nothing_to_pull(silo_dir: Path, tmp_path: Path) -> None:
    local = SiloRuntime(_config(silo_dir, tmp_path / "local", strategy="local"))
    settings = TrainSettings(
        local_steps=2, batch_size=4, learning_rate=0.05, head_learning_rate=0.01, proximal_mu=1.0
    )
    assert local.configure_training(settings) is None  # nothing travels: no term
    assert local.train(settings)["steps"] == 2

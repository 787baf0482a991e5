"""The agent's reading of a TRAIN task: settings off the wire, hostile values refused there."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.v1 import coordinator_pb2
from fedprompt_client_agent.agent import TrainSettings, train_settings

CENTROIDS = {0: np.zeros(3, np.float32), 1: np.ones(3, np.float32)}


def _task(**training: float) -> coordinator_pb2.Task:
    """A TRAIN task as the coordinator's bytes, parsed back as the agent receives it."""
    values: dict[str, float] = {
        "local_steps": 3, "batch_size": 4, "learning_rate": 0.03, "head_learning_rate": 0.003,
        "contrastive_weight": 0.1, "contrastive_temperature": 0.7,
    }  # fmt: skip
    values.update(training)
    sent = coordinator_pb2.Task(
        kind=coordinator_pb2.TASK_KIND_TRAIN,
        round=2,
        cluster_id=1,
        training=coordinator_pb2.TrainingSettings(**values),  # type: ignore[arg-type]
    )
    return coordinator_pb2.Task.FromString(sent.SerializeToString())


@pytest.mark.parametrize("mu", [0.0, 1e-3, 1 / 3, 100.0])
def test_the_tasks_settings_and_mu_arrive_exactly(mu: float) -> None:
    settings = train_settings(
        _task(proximal_mu=mu), centroids=CENTROIDS, uploaded=("prompt.global", "head.bias")
    )
    assert settings.proximal_mu == mu
    assert settings.uploaded_tensors == ("prompt.global", "head.bias")
    assert (settings.local_steps, settings.batch_size, settings.cluster_id) == (3, 4, 1)
    assert (settings.learning_rate, settings.head_learning_rate) == (0.03, 0.003)
    assert (settings.contrastive_weight, settings.contrastive_temperature) == (0.1, 0.7)
    assert settings.centroids is CENTROIDS


def test_a_task_without_mu_means_fedprox_off() -> None:
    assert train_settings(_task(), centroids={}, uploaded=()).proximal_mu == 0.0


@pytest.mark.parametrize(
    "mu", [float("nan"), float("inf"), float("-inf"), -1.0, 100.00001, 1e9, 1.7976931348623157e308]
)
def test_a_hostile_mu_fails_the_task_at_the_edge(mu: float) -> None:
    with pytest.raises(ValueError, match=r"proximal_mu .* finite number in \[0, 100\]"):
        train_settings(_task(proximal_mu=mu), centroids=CENTROIDS, uploaded=("prompt.global",))
    with pytest.raises(ValueError, match="proximal_mu"):
        TrainSettings(
            local_steps=1, batch_size=1, learning_rate=0.1, head_learning_rate=0.1, proximal_mu=mu
        )


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("contrastive_weight", float("nan"), "finite"),
        ("contrastive_weight", float("inf"), "finite"),
        ("contrastive_weight", -0.5, r"λ\) must be in \[0, 100\]"),
        ("contrastive_weight", 1e6, r"λ\) must be in \[0, 100\]"),
        ("contrastive_temperature", float("nan"), "finite"),
        ("contrastive_temperature", 1e-30, r"τ\) must be in \[0.01, 100\]"),
        ("contrastive_temperature", -1.0, r"τ\) must be in \[0.01, 100\]"),
        ("contrastive_temperature", 1e9, r"τ\) must be in \[0.01, 100\]"),
    ],
)
def test_a_hostile_infonce_setting_fails_the_task_at_the_edge(
    field: str, value: float, fragment: str
) -> None:
    """λ = inf or τ = 1e-30 would make every InfoNCE loss infinite or NaN: refused before
    anything trains, as the coordinator's configuration refuses them."""
    with pytest.raises(ValueError, match=fragment):
        train_settings(_task(**{field: value}), centroids=CENTROIDS, uploaded=("prompt.global",))


def test_a_task_without_a_temperature_takes_the_default() -> None:
    """τ = 0 on the wire is proto3's 'unset': the default 0.5, not a division by zero."""
    got = train_settings(_task(contrastive_temperature=0.0), centroids=CENTROIDS, uploaded=())
    assert got.contrastive_temperature == 0.5

"""Typed configuration of the coordinator."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedprompt.config import LogLevel


class NoisePolicy(enum.StrEnum):
    """What the clusterer does with HDBSCAN's noise points."""

    NEAREST = "nearest"
    SINGLETON = "singleton"


class TrainingConfig(BaseModel):
    """Local training settings sent to clients with every TRAIN task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: int = Field(default=20, ge=1, description="Optimizer steps per client per round.")
    batch_size: int = Field(default=16, ge=1, description="Local mini-batch size.")
    learning_rate: float = Field(
        default=3e-2, gt=0, description="Learning rate of the soft prompt."
    )
    head_learning_rate: float = Field(
        default=3e-3, gt=0, description="Learning rate of the task head."
    )


class ClusteringConfig(BaseModel):
    """How the coordinator asks the clusterer to group clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(
        default=None, description="host:port of the clusterer; None puts every client in cluster 0."
    )
    min_cluster_size: int = Field(default=2, ge=2, description="HDBSCAN min_cluster_size.")
    min_samples: int = Field(default=1, ge=1, description="HDBSCAN min_samples.")
    noise_policy: NoisePolicy = Field(
        default=NoisePolicy.NEAREST, description="Where noise points go."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline of one Cluster call.")
    retries: int = Field(
        default=3, ge=0, description="Retries (exponential backoff) on UNAVAILABLE."
    )


class CoordinatorConfig(BaseModel):
    """Everything the coordinator process needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="host:port to serve on (port 0: any).")
    state_dir: Path = Field(Path("coordinator-state"), description="SQLite DB and tensor files.")
    rounds: int = Field(5, ge=1, description="Number of federated rounds to run.")
    min_clients: int = Field(
        2, ge=1, description="Quorum: connected clients needed to open a round."
    )
    quorum_wait_s: float = Field(
        2.0, ge=0, description="After quorum, wait this long for more clients before round 1."
    )
    expected_clients: int | None = Field(
        None, ge=1, description="Open round 1 at once when this many clients are connected."
    )
    round_deadline_s: float = Field(600.0, gt=0, description="Training deadline of a round.")
    eval_deadline_s: float = Field(120.0, gt=0, description="Evaluation deadline of a round.")
    max_update_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest update payload a client may upload."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    log_level: LogLevel = Field(LogLevel.INFO, description="Python logging level.")

    @model_validator(mode="after")
    def _expected_at_least_quorum(self) -> CoordinatorConfig:
        if self.expected_clients is not None and self.expected_clients < self.min_clients:
            raise ValueError("expected_clients must be >= min_clients")
        return self

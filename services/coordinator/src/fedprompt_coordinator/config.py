"""Typed configuration of the coordinator."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedprompt.client_input import DEFAULT_MAX_EXAMPLES
from fedprompt.config import LogLevel
from fedprompt.strategies import StrategyName, strategy_spec
from fedprompt.tls import TlsConfig


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
        default=3,
        ge=0,
        description="Retries within a round (exponential backoff) on UNAVAILABLE, "
        "DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or ABORTED; after the last one (or any other "
        "failure) the round keeps the last assignment and the next round asks again.",
    )


class ContrastiveConfig(BaseModel):
    """Contrastive alignment of cluster prompts (strategy ``fpl``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(
        default=0.1, ge=0, description="λ of the client-side InfoNCE term (0: off)."
    )
    temperature: float = Field(
        default=0.5, gt=0, description="τ of the client InfoNCE and the server alignment scores."
    )
    server_weighting: str = Field(
        default="contrastive",
        pattern="^(contrastive|mean)$",
        description="Cluster aggregation weights: contrastive alignment, or `mean` (ablation).",
    )


class AccountantName(enum.StrEnum):
    """Privacy accountants the coordinator can use."""

    RDP = "rdp"
    PLD = "pld"


class PrivacyConfig(BaseModel):
    """Client-level DP-FedAvg of the global level, with an accountant and a budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Apply DP-FedAvg to the global level.")
    clip_norm: float = Field(default=1.0, gt=0, description="S: per-client L2 clip bound.")
    noise_multiplier: float | None = Field(
        default=None, gt=0, description="z: noise std is z·S; give this or target_epsilon."
    )
    target_epsilon: float | None = Field(
        default=None, gt=0, description="Calibrate z so that all rounds spend at most this ε."
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="δ of the reported (ε, δ).")
    accountant: AccountantName = Field(default=AccountantName.RDP, description="rdp or pld.")
    epsilon_budget: float | None = Field(
        default=None,
        gt=0,
        description="Refuse to open a round that would exceed this ε (default: target_epsilon).",
    )
    server_learning_rate: float = Field(default=1.0, gt=0, description="η of DP-FedAvg.")
    client_sampling_rate: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="q: each connected client is drawn into a round with this probability "
        "(Poisson sampling; privacy amplification is only claimed for q < 1 drawn this way).",
    )
    seed: int | None = Field(
        default=None, description="Seed of noise and sampling (tests only; None = OS entropy)."
    )

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "privacy.enabled needs exactly one of noise_multiplier, target_epsilon"
            )
        return self


GIB = 1024**3
MIB = 1024**2


class ResourceLimits(BaseModel):
    """What one client, and all clients together, may hold on the coordinator.

    Every limit answers a client with a status code before it costs anything: an upload
    over a limit is refused at its header, before any chunk is read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    upload_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="An upload (or any client stream) that sends no message for this long is "
        "cancelled with DEADLINE_EXCEEDED and its buffers and spool file are freed. An honest "
        "client sends a chunk of at most 1 MiB at a time: 60 s allows a link of ~140 kbit/s.",
    )
    keepalive_time_s: float = Field(
        default=30.0,
        gt=0,
        description="The coordinator pings every client connection (HTTP/2 keepalive) this "
        "often; see keepalive_timeout_s.",
    )
    keepalive_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A keepalive ping unanswered this long closes the connection: its calls "
        "are cancelled, so a task stream whose peer is gone ends and its client counts as "
        "disconnected after at most keepalive_time_s + keepalive_timeout_s.",
    )
    max_initial_model_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest initial model a client may upload (RESOURCE_EXHAUSTED at the "
        "header). None: max_update_bytes, since the initial model is the uncompressed shared "
        "state, the largest payload an honest client sends (its deltas hold the same tensors). "
        "Once the model exists, a late initial upload is bounded by the model's own size.",
    )
    max_spool_bytes: int = Field(
        default=16 * GIB,
        ge=1,
        description="Disk that open uploads may reserve together: an upload spooled to a file "
        "(over 8 MiB, or when upload memory is full) reserves its announced size when it "
        "begins; one that does not fit is refused with RESOURCE_EXHAUSTED before any chunk. "
        "Must hold one largest upload (max_update_bytes, max_initial_model_bytes). Accepted "
        "updates keep their file until their round ends (one per participant).",
    )
    max_buffered_upload_bytes: int = Field(
        default=256 * MIB,
        ge=0,
        description="Memory that open uploads assembled in memory (8 MiB or less) may reserve "
        "together (announced sizes). An upload that does not fit spools to a file instead "
        "(see max_spool_bytes), so the coordinator's memory stays bounded under a flood.",
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
    round_failure_exit_delay_s: float = Field(
        10.0,
        ge=0,
        description="After a round fails with an unexpected error (a full disk, a bug), keep "
        "answering GetStatus (with the failure) and grpc.health.v1 (NOT_SERVING) this long, "
        "then exit with status 3 so that compose or Kubernetes restarts the coordinator from "
        "its last completed round. SIGTERM ends the wait early (still status 3).",
    )
    max_update_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest update payload a client may upload."
    )
    inline_model_max_bytes: int = Field(
        1024 * 1024,
        ge=0,
        le=1024 * 1024,
        description="Models (prompts, heads) whose payload is at most this size travel inside "
        "their TRAIN/EVALUATE task, sparing each client two FetchModel calls per round; larger "
        "ones are fetched. 0: always fetch. At most 1 MiB, like a chunk, so that a task stays "
        "under the 2 MiB message limit of every channel.",
    )
    max_update_l2_norm: float | None = Field(
        1e4,
        gt=0,
        description="Refuse an update (INVALID_ARGUMENT) if any of its tensors has a larger "
        "L2 norm; None: no bound. DP-FedAvg clips the global segment separately.",
    )
    strategy: StrategyName = Field(
        default=StrategyName.FPL, description="Federated strategy; clients must use the same."
    )
    max_client_examples: int = Field(
        DEFAULT_MAX_EXAMPLES,
        ge=1,
        le=2**53,
        description="Largest number of training examples a client may declare (Join's "
        "num_train_examples, an upload's num_examples); any count above it, or below 1, is "
        "refused with INVALID_ARGUMENT.",
    )
    status_page_clients: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most clients one GetStatus answer carries (with their per-round records); "
        "callers page through the rest (GetStatusRequest.clients_after).",
    )
    status_page_rounds: int = Field(
        20,
        ge=1,
        le=1000,
        description="Most round records one GetStatus answer carries (the latest by default); "
        "callers page through the rest (GetStatusRequest.first_round_record). An answer is "
        "also cut, oldest rounds first, to stay under the 2 MiB message limit.",
    )
    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="Certificate, key and CA (mutual TLS), or insecure: true for plaintext. "
        "The same certificate is presented to the clusterer.",
    )
    limits: ResourceLimits = Field(
        default_factory=ResourceLimits,
        description="Per-client and total bounds on streams, uploads, spool disk and memory.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    log_level: LogLevel = Field(LogLevel.INFO, description="Python logging level.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: none)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the /metrics endpoint binds (0.0.0.0 in containers)."
    )

    @model_validator(mode="after")
    def _expected_at_least_quorum(self) -> CoordinatorConfig:
        if self.expected_clients is not None and self.expected_clients < self.min_clients:
            raise ValueError("expected_clients must be >= min_clients")
        if self.privacy.enabled and not strategy_spec(self.strategy).shares_tensors:
            raise ValueError("privacy.enabled needs a strategy that shares tensors, not `local`")
        largest = max(self.max_update_bytes, self.max_initial_model_bytes)
        if self.limits.max_spool_bytes < largest:
            raise ValueError(
                f"limits.max_spool_bytes ({self.limits.max_spool_bytes}) must hold one largest "
                f"upload ({largest} bytes): raise it or lower max_update_bytes"
            )
        return self

    @property
    def max_initial_model_bytes(self) -> int:
        """Largest initial model a client may upload (``limits``, else ``max_update_bytes``)."""
        configured = self.limits.max_initial_model_bytes
        return self.max_update_bytes if configured is None else configured

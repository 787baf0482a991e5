"""Typed configuration of the coordinator."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedprompt.client_input import DEFAULT_MAX_EXAMPLES
from fedprompt.config import LogLevel
from fedprompt.contrastive_settings import (
    MAX_CONTRASTIVE_TEMPERATURE,
    MAX_CONTRASTIVE_WEIGHT,
    MIN_CONTRASTIVE_TEMPERATURE,
    check_contrastive_temperature,
    check_contrastive_weight,
)
from fedprompt.personalization import MAX_PERSONALIZE_STEPS, check_personalize_steps
from fedprompt.proximal import MAX_PROXIMAL_MU, check_proximal_mu
from fedprompt.strategies import StrategyName, strategy_spec
from fedprompt.tls import TlsConfig
from fedprompt_coordinator.aggregation.parts import Part
from fedprompt_coordinator.aggregation.server_optimizer import (
    DEFAULT_SERVER_OPTIMIZER,
    HYPERPARAMETERS,
    SERVER_OPTIMIZERS,
    ServerOptimizer,
    make_server_optimizer,
)

#: Default hard per-tensor L2 bound of an update: 121 times the largest tensor norm of any
#: honest update measured on the bundled tasks (8.25, the text global prompt after 15 AdamW
#: steps at lr 0.03; bench/honest_update_norms.py; README, "Aggregation"). AdamW moves a
#: coordinate by at most ~lr per step, so an 8 x 384 prompt reaches it only with
#: lr * steps >= 18.
DEFAULT_MAX_UPDATE_L2_NORM = 1000.0


class NoisePolicy(enum.StrEnum):
    """What the clusterer does with HDBSCAN's noise points."""

    NEAREST = "nearest"
    SINGLETON = "singleton"


class TrainingConfig(BaseModel):
    """Local training settings sent to clients with every TRAIN task (and with the EVALUATE
    tasks of a personalization pass, `evaluation.personalize_steps`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: int = Field(default=20, ge=1, description="Optimizer steps per client per round.")
    batch_size: int = Field(default=16, ge=1, description="Local mini-batch size.")
    learning_rate: float = Field(
        default=3e-2, gt=0, description="Learning rate of the soft prompt."
    )
    head_learning_rate: float = Field(
        default=3e-3, gt=0, description="Learning rate of the task head."
    )
    proximal_mu: float = Field(
        default=0.0,
        description="μ of FedProx's proximal term μ/2·‖θ - θ_round_start‖² over the tensors a "
        f"client uploads (0: off; at most {MAX_PROXIMAL_MU:g}). Choose it on validation "
        "splits, e.g. over 0.001, 0.01, 0.1, 1.",
    )

    @field_validator("proximal_mu", mode="before")
    @classmethod
    def _proximal_mu(cls, value: float) -> float:
        """Refuse what every client would refuse (before pydantic turns ``true`` into 1.0)."""
        return check_proximal_mu(value)


class EvaluationConfig(BaseModel):
    """What every EVALUATE task asks of the clients beyond evaluating the round's aggregate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    personalize_steps: int = Field(
        default=0,
        description="Optimizer steps of a final personalization pass at every evaluation (0: "
        f"none; at most {MAX_PERSONALIZE_STEPS}): each client fine-tunes, on a copy of the "
        "round's aggregate, only its local prompt segment and the task head on its own "
        "training split (the `training` batch size and learning rates; shared segments "
        "frozen), and reports that copy's metrics as accuracy, val_accuracy, ... and the "
        "aggregate's as unpersonalized_accuracy, ... Nothing of the pass is uploaded or kept; "
        "it runs inside eval_deadline_s.",
    )

    @field_validator("personalize_steps", mode="before")
    @classmethod
    def _personalize_steps(cls, value: int) -> int:
        """Refuse what every client would refuse (before pydantic turns ``true`` into 1)."""
        return check_personalize_steps(value)


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
    refine_after_rounds: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Cluster refinement: rounds in which a member's cluster-level updates must "
        "align best with another cluster's members' updates before it moves there (and as many "
        "contrary rounds to move again); the metadata clustering is the cold start. 0: off, "
        "metadata alone decides. Needs a clusterer and a clustered strategy; refused with "
        "secure aggregation and DP-FedAvg, since it reads every member's update.",
    )
    refine_margin: float = Field(
        default=0.25,
        ge=0.0,
        le=2.0,
        allow_inf_nan=False,
        description="Cluster refinement: how much higher (cosine) another cluster's alignment "
        "must be than the member's own cluster's for a round to count as evidence for it.",
    )
    server_name: str = Field(
        default="clusterer",
        max_length=253,
        description="With mutual TLS: the name the clusterer's certificate must carry, whatever "
        "address `address` names (`fedprompt certs` always puts `clusterer` in it; set it "
        "when your certificates come from another PKI). Empty: verify the dialled host name.",
    )

    @field_validator("refine_after_rounds", "refine_margin", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        """Refuse ``true``/``false`` (which pydantic would take as 1 and 0)."""
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


class ContrastiveConfig(BaseModel):
    """Contrastive alignment of cluster prompts (strategy ``fpl``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(
        default=0.1,
        description="λ of the client-side InfoNCE term (0: off; at most "
        f"{MAX_CONTRASTIVE_WEIGHT:g}).",
    )
    temperature: float = Field(
        default=0.5,
        description="τ of the client InfoNCE and the server alignment scores (in "
        f"[{MIN_CONTRASTIVE_TEMPERATURE:g}, {MAX_CONTRASTIVE_TEMPERATURE:g}]).",
    )
    server_weighting: str = Field(
        default="contrastive",
        pattern="^(contrastive|mean)$",
        description="Cluster aggregation weights: contrastive alignment, or `mean` (ablation).",
    )

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, value: float) -> float:
        """Refuse what every client would refuse (before pydantic turns ``true`` into 1.0)."""
        return check_contrastive_weight(value)

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, value: float) -> float:
        """Refuse what every client would refuse (an infinite or NaN InfoNCE loss)."""
        return check_contrastive_temperature(value)


class AccountantName(enum.StrEnum):
    """Privacy accountants the coordinator can use."""

    RDP = "rdp"
    PLD = "pld"


class DPLevel(enum.StrEnum):
    """A shared level that DP-FedAvg can release with its own clip bound and noise.

    ``global``: the tensors of the global level (for a strategy without a cluster level,
    every shared tensor). ``cluster``: each cluster's tensors except its head (the cluster
    prompt; LoRA, backbone or other cluster-level parts). ``head``: each cluster's head.
    """

    GLOBAL = "global"
    CLUSTER = "cluster"
    HEAD = "head"


def default_dp_levels(*, clustered: bool) -> tuple[DPLevel, ...]:
    """Every level that travels: all three for clustered strategies, else only ``global``."""
    return tuple(DPLevel) if clustered else (DPLevel.GLOBAL,)


class PrivacyConfig(BaseModel):
    """Client-level DP-FedAvg of every shared level, with per-level accountants and a budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Apply DP-FedAvg to the shared levels.")
    clip_norm: float = Field(
        default=1.0, gt=0, description="S: per-client L2 clip bound of each DP level."
    )
    clip_norms: dict[DPLevel, float] = Field(
        default_factory=dict,
        description="S_l by level (global, cluster, head), overriding clip_norm for that level.",
    )
    levels: tuple[DPLevel, ...] | None = Field(
        default=None,
        description="DP levels (global, cluster, head); None: every level that travels for "
        "the strategy (global, cluster and head for clustered and fpl; global otherwise).",
    )
    min_cluster_members: float = Field(
        default=2,
        ge=1,
        description="A cluster whose expected participants m_k = q·|members| is below this is "
        "not released that round (its cluster and head tensors keep their value): the noise "
        "of a smaller cluster is relative to fewer updates than the guarantee presumes useful.",
    )
    noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        description="z_l of every DP level: noise std z_l·S_l; give this or target_epsilon.",
    )
    target_epsilon: float | None = Field(
        default=None,
        gt=0,
        description="Calibrate the noise so that all rounds spend at most this ε per client, "
        "all levels composed (z_l = z_eq·√L over L levels).",
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
        if self.levels is not None:
            if not self.levels:
                raise ValueError(
                    "privacy.levels is empty: name at least one of global, cluster, head "
                    "(or set privacy.enabled: false)"
                )
            if len(set(self.levels)) != len(self.levels):
                raise ValueError(f"privacy.levels lists a level twice: {list(self.levels)}")
        if any(not (s > 0 and s < float("inf")) for s in self.clip_norms.values()):
            raise ValueError("privacy.clip_norms must be positive and finite")
        return self

    def dp_levels(self, *, clustered: bool) -> tuple[DPLevel, ...]:
        """The DP levels of a strategy with (or without) a cluster level, in DPLevel order
        (empty when DP is off)."""
        if not self.enabled:
            return ()
        chosen = set(self.levels) if self.levels is not None else set(DPLevel)
        return tuple(level for level in default_dp_levels(clustered=clustered) if level in chosen)

    def clip_norm_of(self, level: DPLevel) -> float:
        """S_l: the level's entry in clip_norms, else clip_norm."""
        return self.clip_norms.get(level, self.clip_norm)


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


class AggregationRule(enum.StrEnum):
    """How one level combines its members' (clipped) deltas."""

    #: The weighted mean (weights from ``weighting``, or contrastive alignment for ``fpl``).
    MEAN = "mean"
    #: Coordinate-wise mean after trimming ``⌈trim_fraction·n⌉`` values at each end.
    TRIMMED_MEAN = "trimmed-mean"
    #: Coordinate-wise median.
    MEDIAN = "median"
    #: Multi-Krum: the ``krum_m`` most central updates, then the level's weighted mean of them.
    MULTI_KRUM = "multi-krum"


class Weighting(enum.StrEnum):
    """What a member's weight in a mean is proportional to (before the share cap)."""

    #: Its sample count: the smaller of its Join and upload counts.
    EXAMPLES = "examples"
    #: One for every member.
    UNIFORM = "uniform"


class ClipMode(enum.StrEnum):
    """Per-client L2 clipping of each shared part before aggregation."""

    #: The bound follows a quantile of the round's update norms (Andrew et al. 2021).
    ADAPTIVE = "adaptive"
    #: A fixed bound per part.
    FIXED = "fixed"
    #: No clipping (only ``max_update_l2_norm`` refuses updates).
    OFF = "off"


class ClippingConfig(BaseModel):
    """Per-client L2 clipping of every shared part (global prompt, cluster prompt, head, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ClipMode = Field(
        default=ClipMode.ADAPTIVE,
        description="adaptive (default): the bound of each part follows the target quantile "
        "of the round's update norms by a geometric update; fixed: `bound`/`part_bounds`; "
        "off: no clipping.",
    )
    bound: float | None = Field(
        default=None,
        gt=0,
        description="fixed: the bound of every part without an entry in `part_bounds` "
        "(required unless every part has one); adaptive: the initial bound (None: the target "
        "quantile of the first round's norms of that part).",
    )
    part_bounds: dict[Part, float] = Field(
        default_factory=dict,
        description="Bounds by part (global_prompt, cluster_prompt, head, lora, backbone, "
        "other), overriding `bound`.",
    )
    target_quantile: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="adaptive: gamma, the fraction of updates the bound should leave unclipped.",
    )
    learning_rate: float = Field(
        default=0.2,
        gt=0,
        description="adaptive: η of the geometric update C ← C·exp(-η·(b - gamma)), b the "
        "round's unclipped fraction.",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML (and so the environment) reads a bare ``off`` as false: that means off."""
        return ClipMode.OFF if value is False else value

    @model_validator(mode="after")
    def _bounds_known(self) -> ClippingConfig:
        if any(not v > 0 for v in self.part_bounds.values()):
            raise ValueError("clipping.part_bounds must be positive")
        if (
            self.mode is ClipMode.FIXED
            and self.bound is None
            and set(self.part_bounds) != set(Part)
        ):
            raise ValueError(
                "clipping.mode fixed needs `bound` (or a part_bounds entry for every part: "
                f"{', '.join(Part)})"
            )
        return self


class ServerOptimizerConfig(BaseModel):
    """How each level's aggregated delta becomes its next tensors (Reddi et al. 2021).

    ``sgd`` adds η times the aggregated delta (η = 1, the default: the aggregate itself);
    ``adam``, ``yogi`` and ``adagrad`` are FedAdam, FedYogi and FedAdagrad, with moments per
    level and per cluster (:mod:`~fedprompt_coordinator.aggregation.server_optimizer`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        default=DEFAULT_SERVER_OPTIMIZER,
        description=f"One of {', '.join(SERVER_OPTIMIZERS)}; sgd with lr 1 is plain FedAvg's "
        "update.",
    )
    lr: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="η, the server learning rate. sgd: 1 when unset. adam, yogi, adagrad: "
        "required (no default fits every task: their step moves each coordinate by the order "
        "of η per round whatever the deltas' scale; choose it on validation data, e.g. over "
        "0.003, 0.01, 0.03, 0.1).",
    )
    beta1: float = Field(
        default=0.9, ge=0, lt=1, description="β1, decay of the first moment (adam, yogi, adagrad)."
    )
    beta2: float = Field(
        default=0.99, ge=0, lt=1, description="β2, decay of the second moment (adam, yogi)."
    )
    tau: float = Field(
        default=1e-3,
        gt=0,
        allow_inf_nan=False,
        description="τ, the adaptivity floor added to √v (adam, yogi, adagrad); also v's "
        "initial value is τ².",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"unknown server optimizer {value!r}; known: {', '.join(SERVER_OPTIMIZERS)}"
            )
        return value

    @model_validator(mode="after")
    def _only_what_it_reads(self) -> ServerOptimizerConfig:
        reads = SERVER_OPTIMIZERS[self.name].hyperparameters
        unused = [h for h in HYPERPARAMETERS if h in self.model_fields_set and h not in reads]
        if unused:
            used = ", ".join(["lr", *sorted(reads)])
            raise ValueError(
                f"aggregation.server_optimizer {self.name!r} does not use "
                f"{', '.join(unused)} (it reads {used}); remove it"
            )
        self.build()  # a missing η, in words
        return self

    def build(self) -> ServerOptimizer:
        """The configured optimizer."""
        return make_server_optimizer(
            self.name, lr=self.lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau
        )


class AggregationConfig(BaseModel):
    """How updates are weighted, clipped and combined: the bound on any one member's influence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    global_rule: AggregationRule = Field(
        default=AggregationRule.MEAN,
        description="Rule of the global level: mean, trimmed-mean, median or multi-krum "
        "(with privacy.enabled on the global level only mean).",
    )
    cluster_rule: AggregationRule = Field(
        default=AggregationRule.MEAN,
        description="Rule of each cluster (clustered and fpl only; with fpl's contrastive "
        "weights not trimmed-mean or median; with privacy.enabled on the cluster or head "
        "level only mean).",
    )
    trim_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=0.5,
        description="trimmed-mean: ⌈β·n⌉ values are dropped at each end of every coordinate "
        "(at most (n-1)/2; 0: the plain mean).",
    )
    krum_f: int = Field(
        default=1, ge=0, description="multi-krum: f, the members assumed Byzantine."
    )
    krum_m: int | None = Field(
        default=None,
        ge=1,
        description="multi-krum: updates kept (None: n - f); Krum's guarantee needs n ≥ 2f + 3.",
    )
    weighting: Weighting = Field(
        default=Weighting.EXAMPLES,
        description="Weights of the mean: examples (the smaller of a member's Join and upload "
        "counts) or uniform; then capped by max_weight_share / max_weight_multiple.",
    )
    max_weight_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="No member's share of a level's mean exceeds this (unless 1/n is larger: "
        "then all members weigh the same). 1: no absolute cap.",
    )
    max_weight_multiple: float | None = Field(
        default=2.0,
        ge=1,
        description="Nor this multiple of the fair share 1/n (None: no relative cap).",
    )
    clipping: ClippingConfig = Field(
        default_factory=ClippingConfig,
        description="Per-client L2 clipping of every shared part (with privacy.enabled, "
        "DP-FedAvg's clip_norm / clip_norms clip each DP level instead).",
    )
    server_optimizer: ServerOptimizerConfig = Field(
        default_factory=ServerOptimizerConfig,
        description="How each level's aggregated delta is applied: sgd (default: the "
        "aggregate itself), or adam, yogi, adagrad (FedAdam, FedYogi, FedAdagrad; Reddi et "
        "al. 2021) with moments per level and cluster, durable with the model.",
    )


#: Largest per-coordinate magnitude of an encoded secure-aggregation input (weight times clip
#: bound) for which groups of up to 1000 members keep 16 fraction bits: 2^62 / (1000 · 2^16).
SECAGG_MAX_ABS = 2.0**62 / (1000 * 2.0**16)


class SecureAggregationConfig(BaseModel):
    """Secure aggregation inside each cluster (SecAgg+): the coordinator learns each cluster's
    weighted sum, never an individual update.

    Members clip each part of their delta to a fixed bound, weigh it, (under DP) add their
    share of the noise, encode it in fixed point modulo 2^64 and mask it with pairwise and
    self masks; dropouts are recovered from Shamir shares. Robust rules and adaptive clipping
    need single updates and are refused with it; the weight caps of ``aggregation``
    (``max_weight_share``, ``max_weight_multiple``) cannot be applied to a masked sum and
    ``max_weight`` bounds a member's weight instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Aggregate each cluster securely.")
    min_group_size: int = Field(
        default=2,
        ge=2,
        description="Clusters with fewer participants in a round are not aggregated that "
        "round (their members train, upload nothing and evaluate; the summary says so).",
    )
    max_dropout: float = Field(
        default=0.3,
        ge=0,
        lt=1,
        description="Fraction of a group's members that may drop out before its sum is "
        "withheld (the release needs max(t, ⌈(1-max_dropout)·n⌉) masked uploads).",
    )
    clip_bound: float = Field(
        default=10.0,
        gt=0,
        description="Without DP: the per-client L2 bound of every part without an entry in "
        "`clip_bounds`, applied by each member to its own delta (the coordinator cannot clip a "
        "masked update). 10 is above every honest part norm measured on the bundled tasks "
        "(largest 8.25, bench.honest_update_norms), so honest updates pass unchanged. Under DP "
        "each level's privacy clip norm applies instead.",
    )
    clip_bounds: dict[Part, float] = Field(
        default_factory=dict, description="Bounds by part, overriding `clip_bound`."
    )
    max_weight: float = Field(
        default=10_000.0,
        gt=0,
        description="Largest weight of one member (w = min(n, max_weight)); bounds its "
        "influence and, with the clip bounds, the fixed-point range.",
    )
    key_deadline_s: float = Field(
        default=30.0, gt=0, description="Deadline of each of the key and share stages."
    )
    unmask_deadline_s: float = Field(
        default=30.0, gt=0, description="Deadline of the unmasking stage."
    )

    @model_validator(mode="after")
    def _positive_bounds(self) -> SecureAggregationConfig:
        if any(not v > 0 for v in self.clip_bounds.values()):
            raise ValueError("secure_aggregation.clip_bounds must be positive")
        return self

    def bound_of(self, part: Part) -> float:
        """The clip bound of ``part`` without DP."""
        return self.clip_bounds.get(part, self.clip_bound)


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
        DEFAULT_MAX_UPDATE_L2_NORM,
        gt=0,
        description="Refuse an update (INVALID_ARGUMENT) if any of its tensors has a larger "
        "L2 norm; None: no bound. A hard limit far above any honest update; the influence "
        "bound comes from `aggregation` (clipping, the weight cap, robust rules).",
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
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="The clients' final personalization pass at every evaluation (off by default).",
    )
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    aggregation: AggregationConfig = Field(
        default_factory=AggregationConfig,
        description="Weights, per-client clipping and rules of each level: what bounds the "
        "influence of any one member.",
    )
    secure_aggregation: SecureAggregationConfig = Field(
        default_factory=SecureAggregationConfig,
        description="Secure aggregation inside each cluster (SecAgg+; off by default).",
    )
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
        check_aggregation(self)
        check_secure_aggregation(self)
        check_server_optimizer(self)
        check_refinement(self)
        return self

    @property
    def max_initial_model_bytes(self) -> int:
        """Largest initial model a client may upload (``limits``, else ``max_update_bytes``)."""
        configured = self.limits.max_initial_model_bytes
        return self.max_update_bytes if configured is None else configured


def check_aggregation(config: CoordinatorConfig) -> None:
    """Refuse the combinations of aggregation rules that cannot do what they say.

    Raises
    ------
    ValueError
        With the reason and what to set instead.
    """
    agg = config.aggregation
    spec = strategy_spec(config.strategy)
    mean = AggregationRule.MEAN
    check_privacy(config)
    dp = config.privacy.dp_levels(clustered=spec.clustered)
    if agg.global_rule is not mean and DPLevel.GLOBAL in dp:
        raise ValueError(
            f"aggregation.global_rule {agg.global_rule.value!r} cannot be combined with "
            "privacy.enabled on the global level: DP-FedAvg calibrates its noise to the "
            "unweighted sum of clipped updates (sensitivity clip_norm), which a robust rule no "
            "longer is; keep global_rule: mean (DP-FedAvg clips the global level) or leave "
            "global out of privacy.levels"
        )
    on_cluster = [level.value for level in dp if level is not DPLevel.GLOBAL]
    if agg.cluster_rule is not mean and on_cluster:
        raise ValueError(
            f"aggregation.cluster_rule {agg.cluster_rule.value!r} cannot be combined with "
            f"privacy.enabled on the {' and '.join(on_cluster)} level: DP-FedAvg calibrates its "
            "noise to the unweighted sum of clipped updates (sensitivity clip_norm), which a "
            "robust rule no longer is; keep cluster_rule: mean or set privacy.levels: [global]"
        )
    if agg.global_rule is not mean and not spec.shares_tensors:
        raise ValueError(
            f"aggregation.global_rule {agg.global_rule.value!r}: strategy "
            f"{spec.name.value!r} aggregates nothing"
        )
    if agg.cluster_rule is not mean and not spec.clustered:
        raise ValueError(
            f"aggregation.cluster_rule {agg.cluster_rule.value!r}: strategy "
            f"{spec.name.value!r} has no cluster level (every shared tensor is global; "
            "set global_rule instead)"
        )
    contrastive = (
        spec.name is StrategyName.FPL and config.contrastive.server_weighting == "contrastive"
    )
    if contrastive and agg.cluster_rule in (AggregationRule.MEDIAN, AggregationRule.TRIMMED_MEAN):
        raise ValueError(
            f"aggregation.cluster_rule {agg.cluster_rule.value!r} weighs every member once and "
            "would drop fpl's contrastive alignment weights; set contrastive.server_weighting: "
            "mean to use it, or cluster_rule: multi-krum (which keeps the weights of the "
            "members it selects)"
        )


def check_refinement(config: CoordinatorConfig) -> None:
    """Refuse cluster refinement where it has nothing to refine or must not read updates.

    Raises
    ------
    ValueError
        With the reason and what to set instead.
    """
    if config.clustering.refine_after_rounds == 0:
        return
    if not config.clustering.address:
        raise ValueError(
            "clustering.refine_after_rounds needs a clusterer (clustering.address): without "
            "one every client is in cluster 0 and there is nothing to refine"
        )
    spec = strategy_spec(config.strategy)
    if not spec.clustered:
        raise ValueError(
            f"clustering.refine_after_rounds: strategy {spec.name.value!r} has no cluster "
            "level; use fpl or clustered, or set refine_after_rounds: 0"
        )
    if config.secure_aggregation.enabled:
        raise ValueError(
            "clustering.refine_after_rounds reads every member's update, which secure "
            "aggregation hides from the coordinator; set refine_after_rounds: 0"
        )
    if config.privacy.enabled:
        raise ValueError(
            "clustering.refine_after_rounds cannot be combined with privacy.enabled: the "
            "assignment would depend on every member's update, outside what the privacy "
            "accountant counts; set refine_after_rounds: 0"
        )


def check_privacy(config: CoordinatorConfig) -> None:
    """Refuse privacy settings that name levels the strategy does not have.

    Raises
    ------
    ValueError
        With the reason and what to set instead.
    """
    privacy = config.privacy
    spec = strategy_spec(config.strategy)
    has = default_dp_levels(clustered=spec.clustered)
    named = {*(privacy.levels or ()), *privacy.clip_norms}
    missing = sorted(level.value for level in named if level not in has)
    if missing:
        raise ValueError(
            f"privacy names level(s) {', '.join(missing)} that strategy {spec.name.value!r} "
            f"does not have (its levels: {', '.join(level.value for level in has)}; an "
            "unclustered strategy shares every tensor, its head included, at the global level)"
        )
    if privacy.levels is not None:
        unused = sorted(level.value for level in privacy.clip_norms if level not in privacy.levels)
        if unused:
            raise ValueError(
                f"privacy.clip_norms sets a bound for {', '.join(unused)}, which is not in "
                "privacy.levels (no DP there: the bound would be ignored)"
            )


def check_secure_aggregation(config: CoordinatorConfig) -> None:
    """Refuse what secure aggregation cannot do: the coordinator never sees a single update.

    Raises
    ------
    ValueError
        With the reason and what to set instead.
    """
    secure = config.secure_aggregation
    if not secure.enabled:
        return
    spec = strategy_spec(config.strategy)
    if not spec.shares_tensors:
        raise ValueError(f"secure_aggregation: strategy {spec.name.value!r} aggregates nothing")
    if spec.name is StrategyName.FULL_FEDAVG:
        raise ValueError(
            "secure_aggregation: strategy 'full_fedavg' shares the whole model, too large to "
            "mask (one keystream per neighbour per member per round); use a prompt or LoRA "
            "strategy"
        )
    agg = config.aggregation
    for level, rule in (("global_rule", agg.global_rule), ("cluster_rule", agg.cluster_rule)):
        if rule is not AggregationRule.MEAN:
            raise ValueError(
                f"aggregation.{level} {rule.value!r} cannot be combined with "
                "secure_aggregation: a robust rule needs every single update, and the "
                "coordinator only learns each cluster's sum; keep the rule `mean` "
                "(members clip to secure_aggregation.clip_bound(s) themselves)"
            )
    clipping_set = "mode" in agg.clipping.model_fields_set
    if clipping_set and agg.clipping.mode is ClipMode.ADAPTIVE:
        raise ValueError(
            "aggregation.clipping.mode adaptive cannot be combined with secure_aggregation: "
            "the bound follows the norms of single updates, which the coordinator does not "
            "see; members clip to the fixed secure_aggregation.clip_bound(s)"
        )
    if agg.weighting is Weighting.UNIFORM and not config.privacy.enabled:
        raise ValueError(
            "aggregation.weighting uniform is not supported with secure_aggregation "
            "(weights are the members' example counts, capped by max_weight)"
        )
    privacy = config.privacy
    if privacy.enabled:
        levels = privacy.dp_levels(clustered=spec.clustered)
        every = default_dp_levels(clustered=spec.clustered)
        if set(levels) != set(every):
            raise ValueError(
                "secure_aggregation with privacy.enabled needs DP on every level the strategy "
                f"shares ({', '.join(level.value for level in every)}): members add the noise "
                "and the unit weights of DP to the whole vector; unset privacy.levels"
            )
        largest = max(privacy.clip_norm_of(level) for level in levels)
    else:
        largest = max([secure.bound_of(p) for p in Part] + list(secure.clip_bounds.values()))
    weight = 1.0 if config.privacy.enabled else secure.max_weight
    if weight * largest > SECAGG_MAX_ABS:
        raise ValueError(
            f"secure_aggregation: max_weight x clip bound ({weight} x {largest}) exceeds the "
            f"fixed-point range ({SECAGG_MAX_ABS:.3g} for 16 fraction bits in groups of up to "
            "1000 members); lower secure_aggregation.max_weight or the clip bounds"
        )


def check_server_optimizer(config: CoordinatorConfig) -> None:
    """Refuse a server optimizer that would have nothing to step, or a second η.

    Raises
    ------
    ValueError
        With the reason and what to set instead.
    """
    chosen = config.aggregation.server_optimizer
    if chosen.build().identity:
        return
    spec = strategy_spec(config.strategy)
    if not spec.shares_tensors:
        raise ValueError(
            f"aggregation.server_optimizer {chosen.name!r}: strategy {spec.name.value!r} "
            "aggregates nothing"
        )
    privacy = config.privacy
    if privacy.enabled and privacy.server_learning_rate != 1.0:
        raise ValueError(
            f"aggregation.server_optimizer {chosen.name!r} and privacy.server_learning_rate "
            f"{privacy.server_learning_rate} would both scale the update: leave "
            "privacy.server_learning_rate at 1 and set aggregation.server_optimizer.lr"
        )

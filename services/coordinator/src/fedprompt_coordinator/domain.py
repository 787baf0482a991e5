"""Domain types of the coordinator: plain frozen dataclasses, no protobuf."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedprompt.secagg import GroupSetup, PublicKeys, UnmaskReply, UnmaskRequest
from fedprompt.tensor_names import CLUSTER_PROMPT, centroid


class Phase(enum.Enum):
    """Phases of a round, in order."""

    WAITING_FOR_QUORUM = 1
    CLUSTERING = 2
    BROADCAST = 3
    TRAINING = 4
    AGGREGATION = 5
    EVALUATION = 6
    CHECKPOINT = 7
    DONE = 8
    #: Secure aggregation: key and share exchange of each cluster's group (before TRAINING).
    KEY_EXCHANGE = 9
    #: Secure aggregation: survivors send the shares that remove the masks (before
    #: AGGREGATION).
    UNMASKING = 10


class TaskKind(enum.Enum):
    """What a task asks a client to do."""

    TRAIN = 1
    EVALUATE = 2
    FINISHED = 3
    SECAGG_KEYS = 4
    SECAGG_SHARES = 5
    SECAGG_UNMASK = 6


class ModelStage(enum.Enum):
    """Which model of a round a client downloads."""

    ROUND_START = 1
    AGGREGATED = 2


class UpdateKind(enum.Enum):
    """Initial shared tensors, or trained deltas."""

    INITIAL = 1
    DELTA = 2
    #: A masked secure-aggregation input (uint64 tensors of the group's layout).
    MASKED = 3


class MetricsPhase(enum.Enum):
    """When client metrics were measured."""

    TRAIN = 1
    EVALUATE = 2


@dataclass(frozen=True)
class TensorSpec:
    """Name, safetensors dtype and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Capabilities:
    """What a client declared at join time."""

    device: str
    model_name: str
    model_fingerprint: str
    trainable_tensors: tuple[str, ...]
    strategy: str = ""


@dataclass(frozen=True)
class JoinRequest:
    """A client's request to join the federation."""

    client_id: str
    metadata_json: str
    capabilities: Capabilities
    num_train_examples: int


@dataclass(frozen=True)
class JoinResult:
    """The coordinator's answer to a join."""

    initial_model_requested: bool
    current_round: int
    total_rounds: int
    phase: Phase
    strategy: str = ""


@dataclass(frozen=True)
class TrainingSettings:
    """Local training settings of a TRAIN task."""

    local_steps: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.0
    #: μ of FedProx's proximal term over the tensors the client uploads (0: off).
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class EvaluateSettings:
    """What an EVALUATE task asks beyond evaluating the round's aggregate.

    Attributes
    ----------
    personalize_steps
        Optimizer steps of the client's final personalization pass (0: none).
    training
        The settings the pass trains with (batch size, learning rates); None without a pass.
    """

    personalize_steps: int = 0
    training: TrainingSettings | None = None


@dataclass(frozen=True)
class InlineModel:
    """A small model payload (safetensors bytes) and its SHA-256, sent inside a task."""

    data: bytes
    sha256: bytes


@dataclass(frozen=True)
class SecAggEncoding:
    """How a secure-aggregation member encodes its delta (see ``SecAggEncoding`` in the proto).

    Attributes
    ----------
    clip_bounds
        L2 bound by part name, or by level name (``global``, ``cluster``) under DP.
    clip_keys
        Tensor name -> its key in ``clip_bounds`` (tensors of one key are clipped together).
    weighting
        ``examples``, ``contrastive`` or ``unit``.
    weight_cap
        The largest weight of one member.
    noise_std
        Per-coordinate noise each member adds, by clip key (under DP the keys are the DP
        levels; empty: none).
    max_abs
        The largest |value| of an encoded coordinate.
    temperature
        τ of the InfoNCE probability (contrastive weighting).
    global_tensors
        Names of the global level's tensors.
    """

    clip_bounds: Mapping[str, float]
    clip_keys: Mapping[str, str]
    weighting: str
    weight_cap: float
    noise_std: Mapping[str, float]
    max_abs: float
    temperature: float
    global_tensors: tuple[str, ...]


@dataclass(frozen=True)
class SecAggTask:
    """The secure-aggregation part of a task; which fields are set depends on its kind.

    A TRAIN task whose ``encoding`` is None belongs to a group that is not aggregated this
    round: the member trains, uploads nothing and evaluates.
    """

    group: str
    #: SECAGG_KEYS: the group's public parameters and this member's neighbours.
    setup: GroupSetup | None = None
    neighbours: tuple[str, ...] = ()
    #: SECAGG_SHARES: public keys of the member's neighbours in U1 (and its own).
    public_keys: Mapping[str, PublicKeys] = field(default_factory=dict)
    #: TRAIN: sender -> ciphertext addressed to this member; U2; the encoding.
    ciphertexts: Mapping[str, bytes] = field(default_factory=dict)
    shared: tuple[str, ...] = ()
    encoding: SecAggEncoding | None = None
    #: SECAGG_UNMASK: dropped and surviving members.
    unmask: UnmaskRequest | None = None


@dataclass(frozen=True)
class SecAggStep:
    """A member's answer to a secure-aggregation task: exactly one of the three is set."""

    client_id: str
    round: int
    group: str
    keys: PublicKeys | None = None
    #: recipient -> ciphertext of shares.
    ciphertexts: Mapping[str, bytes] | None = None
    unmask: UnmaskReply | None = None


@dataclass(frozen=True)
class Task:
    """A unit of work for one client."""

    kind: TaskKind
    round: int
    cluster_id: int = 0
    deadline_unix_ms: int = 0
    training: TrainingSettings | None = None
    expected_update: tuple[TensorSpec, ...] = ()
    message: str = ""
    #: The task's model when it is small enough to travel inline; None: FetchModel it.
    model: InlineModel | None = None
    #: Secure aggregation: what the task's stage needs (None: not a secure round).
    secure_aggregation: SecAggTask | None = None
    #: EVALUATE: optimizer steps of the client's final personalization pass of its local
    #: segment and head (0: none; ``training`` then carries its batch size and learning rates).
    personalize_steps: int = 0


@dataclass(frozen=True)
class ClientUpdate:
    """A validated update of one client in one round."""

    client_id: str
    cluster_id: int
    num_examples: int
    tensors: dict[str, np.ndarray]


@dataclass
class FederationModel:
    """Shared tensors: the global level plus one set per cluster."""

    global_tensors: dict[str, np.ndarray]
    cluster_tensors: dict[int, dict[str, np.ndarray]]
    #: Cluster-level tensors a new cluster starts from (the round-0 values).
    cluster_template: dict[str, np.ndarray] = field(default_factory=dict)

    def centroids(self, segment: str = CLUSTER_PROMPT) -> dict[int, np.ndarray]:
        """Token-mean of every cluster's ``segment`` (the InfoNCE positives and negatives)."""
        return {c: centroid(t[segment]) for c, t in self.cluster_tensors.items() if segment in t}

    def for_cluster(self, cluster_id: int) -> dict[str, np.ndarray]:
        """Return the tensors a member of ``cluster_id`` trains from."""
        cluster = self.cluster_tensors.get(cluster_id, self.cluster_template)
        return {**self.global_tensors, **cluster}


@dataclass(frozen=True)
class TensorMoments:
    """A server optimizer's moments of one tensor (float64, the tensor's shape).

    Attributes
    ----------
    first
        m, the moving average of the tensor's aggregated deltas.
    second
        v, the (FedAdam, FedYogi) moving estimate or (FedAdagrad) sum of their squares;
        never negative.
    """

    first: np.ndarray
    second: np.ndarray


@dataclass(frozen=True)
class ServerMoments:
    """The server optimizer's state, durable with the model: its moments, level by level.

    Attributes
    ----------
    optimizer
        Name of the optimizer that wrote them (empty: none has).
    global_moments
        Tensor name -> moments of the global level's tensors.
    cluster_moments
        Cluster id -> (tensor name -> moments) of that cluster's tensors, each cluster's own.
    """

    optimizer: str = ""
    global_moments: Mapping[str, TensorMoments] = field(default_factory=dict)
    cluster_moments: Mapping[int, Mapping[str, TensorMoments]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when no level holds moments (a fresh federation, or a stateless optimizer)."""
        return not self.global_moments and not any(self.cluster_moments.values())


@dataclass(frozen=True)
class ClientStatus:
    """What the status RPC reports about a client."""

    client_id: str
    metadata_json: str
    cluster_id: int
    connected: bool
    num_train_examples: int
    device: str


@dataclass(frozen=True)
class ClientRoundRecord:
    """One client's part in one round."""

    client_id: str
    cluster_id: int
    num_examples: int
    update_accepted: bool
    bytes_up: int
    bytes_down: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]


@dataclass(frozen=True)
class RoundRecord:
    """A finished (or failed) round as stored durably."""

    round: int
    status: str
    started_unix: float
    finished_unix: float
    num_clusters: int
    clients: tuple[ClientRoundRecord, ...]
    summary: dict[str, float]


class StatusView(enum.Enum):
    """What a GetStatus caller may see."""

    #: Every client's record, metadata and per-round metrics (the operator certificate,
    #: or any caller of a plaintext coordinator: plaintext has no identities).
    FULL = 1
    #: The caller's own record plus federation-level aggregates (a silo certificate).
    SILO = 2


@dataclass(frozen=True)
class StatusQuery:
    """Who asks for the status, and which page of it.

    Clients come sorted by id, one page at a time (a cursor: the ids after
    ``clients_after``); round records come in the order they were recorded, a window at a
    time (from index ``first_round_record``, or the latest ones when it is None). A limit
    of 0 means the coordinator's page size; larger limits are capped to it.
    """

    view: StatusView = StatusView.FULL
    #: The silo a SILO view belongs to (its certificate's identity).
    caller: str = ""
    clients_after: str = ""
    max_clients: int = 0
    first_round_record: int | None = None
    max_round_records: int = 0


@dataclass(frozen=True)
class RoundFailure:
    """A round attempt that ended with an unexpected error (a full disk, a bug).

    Attributes
    ----------
    round
        The round of the failed attempt.
    phase
        The phase the error happened in.
    reason
        ``failed: unexpected error in <PHASE>: <type>: <message>``, as in the round's status.
    failed_unix
        When the attempt failed.
    clients_with_updates
        Clients whose updates had been accepted into the attempt (dropped, never reused).
    """

    round: int
    phase: Phase
    reason: str
    failed_unix: float
    clients_with_updates: tuple[str, ...] = ()


@dataclass(frozen=True)
class FederationStatus:
    """Snapshot for the status RPC: federation-wide fields, one page of clients and rounds."""

    current_round: int
    total_rounds: int
    completed_rounds: int
    phase: Phase
    clients: tuple[ClientStatus, ...]
    rounds: tuple[RoundRecord, ...]
    setup_bytes_up: dict[str, int]
    setup_bytes_down: dict[str, int]
    model_fingerprint: str
    strategy: str = ""
    epsilon: float = 0.0
    delta: float = 0.0
    #: ε of each DP level alone (``epsilon`` is their per-client composition); empty when off.
    epsilon_by_level: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    view: StatusView = StatusView.FULL
    #: Clients that have joined, and those with an open task stream (whatever the page).
    clients_total: int = 0
    clients_connected: int = 0
    #: Cursor of the next page of clients ("" when this page is the last).
    next_clients_after: str = ""
    #: Round records in all, and the index of the first one in ``rounds``.
    round_records_total: int = 0
    first_round_record: int = 0
    #: Whether something the caller may see is not in this page (more clients or rounds).
    truncated: bool = False
    #: The round attempt that failed unexpectedly, while the coordinator is failing.
    round_failure: RoundFailure | None = None

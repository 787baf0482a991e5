"""The client agent's federation loop: join, receive tasks, fetch, train, upload, report.

The silo only dials out. Tasks arrive on a server stream as soon as a round opens; every
tensor transfer is a chunked safetensors payload. Under secure aggregation the round adds
SECAGG_KEYS, SECAGG_SHARES and SECAGG_UNMASK tasks, answered with SecAggStep, and the TRAIN
task's delta travels masked (:mod:`~fedprompt_client_agent.secure_aggregation`). The learning itself is behind
:class:`LearningRuntime`, so this loop carries no torch code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np

from fedprompt.codec import encode_tensors
from fedprompt.compression import Compression, compress_tensors
from fedprompt.contrastive_settings import (
    check_contrastive_temperature,
    check_contrastive_weight,
)
from fedprompt.coordinator_client import CoordinatorClient, UploadStatusLostError
from fedprompt.personalization import UNPERSONALIZED_PREFIX, check_personalize_steps
from fedprompt.proximal import check_proximal_mu
from fedprompt.secagg import SecAggError
from fedprompt.server import create_channel
from fedprompt.tensor_names import split_centroids
from fedprompt.tls import COORDINATOR_IDENTITY
from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_client_agent.metrics import ClientMetrics
from fedprompt_client_agent.secure_aggregation import Encoding, SecureMember

logger = logging.getLogger(__name__)

#: Reconnect (with backoff) on these: the coordinator is unreachable, a call or an idle
#: upload timed out, or an upload of this client is still open there (``ABORTED``: after a
#: cut connection the old one lives until the coordinator's keepalive or idle timeout ends it).
_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
)


#: Secure-aggregation stages answered with SecAggStep.
_SECAGG_KINDS = (
    coordinator_pb2.TASK_KIND_SECAGG_KEYS,
    coordinator_pb2.TASK_KIND_SECAGG_SHARES,
    coordinator_pb2.TASK_KIND_SECAGG_UNMASK,
)


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, dtypes, shapes and bytes of a set of tensors (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.digest()


@dataclass(frozen=True)
class TrainSettings:
    """Local training settings of a TRAIN task.

    Raises
    ------
    ValueError
        If ``proximal_mu`` is not a finite number in ``[0, 100]``
        (:func:`fedprompt.proximal.check_proximal_mu`), or λ and τ of the InfoNCE term are
        out of range (:mod:`fedprompt.contrastive_settings`): the task fails before any
        training.
    """

    local_steps: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    #: λ and τ of the InfoNCE regulariser on the cluster segment (λ = 0: off).
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.5
    #: This client's cluster and every cluster's centroid (token-mean of its prompt).
    cluster_id: int = 0
    centroids: Mapping[int, np.ndarray] = field(default_factory=dict)
    #: μ of FedProx's proximal term over the uploaded tensors (0: off).
    proximal_mu: float = 0.0
    #: The tensors this round uploads (the task's ``expected_update``); None: every
    #: travelling tensor of the model.
    uploaded_tensors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Refuse a μ, λ or τ the coordinator's configuration would refuse too."""
        check_proximal_mu(self.proximal_mu)
        check_contrastive_weight(self.contrastive_weight)
        check_contrastive_temperature(self.contrastive_temperature)


def train_settings(
    task: coordinator_pb2.Task,
    *,
    centroids: Mapping[int, np.ndarray],
    uploaded: tuple[str, ...],
) -> TrainSettings:
    """The settings of a TRAIN task, validated.

    Parameters
    ----------
    task : coordinator_pb2.Task
        The TRAIN task.
    centroids : mapping
        Every cluster's centroid, from the round-start model.
    uploaded : tuple of str
        The tensors the round uploads.

    Returns
    -------
    TrainSettings
        The task's steps, learning rates, InfoNCE and proximal settings.

    Raises
    ------
    ValueError
        For a ``proximal_mu`` that is NaN, infinite, negative or above 100, or a λ or τ of
        the InfoNCE term out of range.
    """
    training = task.training
    return TrainSettings(
        local_steps=training.local_steps,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        head_learning_rate=training.head_learning_rate,
        contrastive_weight=training.contrastive_weight,
        contrastive_temperature=training.contrastive_temperature or 0.5,
        cluster_id=task.cluster_id,
        centroids=centroids,
        proximal_mu=training.proximal_mu,
        uploaded_tensors=uploaded,
    )


@dataclass(frozen=True)
class PersonalizeSettings:
    """The final personalization pass an EVALUATE task asks for.

    Attributes
    ----------
    steps : int
        Optimizer steps of the pass, in ``[1, 10000]``.
    batch_size : int
        Training examples per step (capped at the training-set size).
    learning_rate, head_learning_rate : float
        AdamW learning rates of the local segment and of the head.

    Raises
    ------
    ValueError
        For steps outside ``[1, 10000]`` (:func:`fedprompt.personalization.check_personalize_steps`;
        0 is no pass, not a pass of no steps), a batch size below 1, or a learning rate that
        is not a finite positive number.
    """

    steps: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float

    def __post_init__(self) -> None:
        """Refuse a pass the coordinator's configuration could not have asked for."""
        if check_personalize_steps(self.steps) < 1:
            raise ValueError("a personalization pass needs personalize_steps >= 1 (0: no pass)")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"the pass's batch_size must be >= 1, got {self.batch_size!r}")
        for name in ("learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"the pass's {name} must be finite and > 0, got {value!r}")


def personalize_settings(task: coordinator_pb2.Task) -> PersonalizeSettings | None:
    """The personalization pass of an EVALUATE task, validated; None when it asks for none.

    Parameters
    ----------
    task : coordinator_pb2.Task
        The EVALUATE task.

    Returns
    -------
    PersonalizeSettings or None
        The pass's steps, batch size and learning rates (from ``task.training``); None for
        ``personalize_steps`` = 0 (whatever ``training`` holds: the evaluation of old).

    Raises
    ------
    ValueError
        For more than 10000 steps, a pass without ``training``, or a batch size or learning
        rate a pass cannot train with.
    """
    steps = check_personalize_steps(task.personalize_steps)
    if steps == 0:
        return None
    if not task.HasField("training"):
        raise ValueError(
            f"round {task.round}: an EVALUATE task asks for {steps} personalization steps "
            "without the training settings they need"
        )
    training = task.training
    return PersonalizeSettings(
        steps=steps,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        head_learning_rate=training.head_learning_rate,
    )


#: Reported (1.0) when the pass diverged: the silo then uses the aggregate, so its metrics
#: are reported under the usual keys too (the round's summaries count the model it uses).
PERSONALIZE_FAILED = "personalize_failed"


def personalized_report(
    unpersonalized: Mapping[str, float], personalized: Mapping[str, float]
) -> dict[str, float]:
    """The metrics an evaluation with a personalization pass reports.

    The personalized model's metrics keep the keys every reader knows (``accuracy``,
    ``val_accuracy``, ...: the coordinator's round summaries, the bench, the dashboards then
    read the model the silo would use), with the pass's own (``personalize_steps``,
    ``personalize_loss``, ``personalize_seconds``); the evaluated aggregate's metrics follow
    under :data:`~fedprompt.personalization.UNPERSONALIZED_PREFIX`.

    Parameters
    ----------
    unpersonalized : mapping
        ``evaluate()`` of the round's aggregate with the silo's local segment.
    personalized : mapping
        ``personalized_evaluate()`` of the copy after the pass.

    Returns
    -------
    dict
        Both, the unpersonalized ones prefixed.
    """
    report = dict(personalized)
    report.update({UNPERSONALIZED_PREFIX + key: value for key, value in unpersonalized.items()})
    return report


class LearningRuntime(Protocol):
    """What the agent needs from the local model (implemented with torch + peft)."""

    client_id: str
    num_train_examples: int
    metadata: Mapping[str, object]
    capabilities: common_pb2.ClientCapabilities

    def shared_state(self) -> dict[str, np.ndarray]:
        """The tensors that travel (global and cluster prompt segments, head)."""

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Replace the travelling tensors with the coordinator's."""

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Train locally; returns metrics (loss, seconds, ...)."""

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the held-out split; returns accuracy, macro_f1, loss, ..."""

    def personalized_evaluate(self, settings: PersonalizeSettings) -> dict[str, float]:
        """Evaluate a copy whose local segment and head were fine-tuned first; nothing kept."""

    def save_personal(self) -> None:
        """Persist the personal prompt (all segments and head) on local disk."""


class ClientAgent:
    """Runs one silo's side of the federation until the coordinator says it is finished.

    Parameters
    ----------
    runtime
        The local model and data.
    coordinator
        Coordinator ``host:port``.
    max_reconnect_s
        Give up after the coordinator has been unreachable this long.
    upload_compression
        Lossy compression of uploaded deltas (``none``, ``fp16``, ``int8``); the initial
        model always travels exact.
    credentials
        Mutual TLS credentials of this silo (None: plaintext).
    server_name
        The name the coordinator's certificate must carry, whatever address is dialled
        (TLS only; see :func:`fedprompt.tls.expected_server_name`).
    metrics
        Prometheus metrics of this silo; a private registry by default.
    """

    def __init__(
        self,
        runtime: LearningRuntime,
        *,
        coordinator: str,
        max_reconnect_s: float = 300.0,
        upload_compression: Compression | str = Compression.NONE,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = COORDINATOR_IDENTITY,
        metrics: ClientMetrics | None = None,
    ) -> None:
        self._runtime = runtime
        self._compression = Compression(upload_compression)
        self.metrics = metrics if metrics is not None else ClientMetrics()
        self._target = coordinator
        self._credentials = credentials
        self._server_name = server_name
        self._max_reconnect_s = max_reconnect_s
        self.rounds_trained: list[int] = []
        # (digest of the shared tensors last evaluated, their metrics): the round-start model
        # of round t is the aggregate that was evaluated at the end of round t-1.
        self._last_eval: tuple[bytes, dict[str, float]] | None = None
        #: This silo's secure-aggregation member of the round in progress, if any.
        self._secure: SecureMember | None = None

    def open_channel(self) -> grpc.aio.Channel:
        """A channel to the coordinator: this silo's certificate, the coordinator's name checked."""
        return create_channel(
            self._target, credentials=self._credentials, server_name=self._server_name
        )

    async def run(self) -> str:
        """Join and serve tasks; reconnect with backoff and jitter on a retryable status.

        Returns
        -------
        str
            The coordinator's closing message.
        """
        delay = 0.25
        unreachable_since: float | None = None
        while True:
            try:
                async with self.open_channel() as channel:
                    client = CoordinatorClient(channel, self._runtime.client_id)
                    await self._join(client)
                    unreachable_since = None
                    delay = 0.25
                    return await self._serve_tasks(client)
            except (grpc.aio.AioRpcError, UploadStatusLostError) as exc:
                # an initial model refused mid-stream (status lost) is retried like UNAVAILABLE
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in _RETRYABLE:
                    raise
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self._max_reconnect_s:
                    raise
                sleep = delay * (0.5 + random.random())
                reason = (
                    f"{exc.code().name} ({exc.details()})"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                logger.warning("coordinator %s; retrying in %.2f s", reason, sleep)
                await asyncio.sleep(sleep)
                delay = min(delay * 2, 10.0)

    async def _join(self, client: CoordinatorClient) -> None:
        rt = self._runtime
        response = await client.join(
            metadata_json=json.dumps(dict(rt.metadata), sort_keys=True),
            capabilities=rt.capabilities,
            num_train_examples=rt.num_train_examples,
        )
        logger.info("joined: round %d of %d", response.current_round, response.total_rounds)
        if response.initial_model_requested:
            state = await asyncio.to_thread(rt.shared_state)
            await self._upload(
                client,
                round_id=0,
                kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                tensors=state,
                num_examples=0,
            )
            logger.info("uploaded the initial model (%d tensors)", len(state))

    async def _serve_tasks(self, client: CoordinatorClient) -> str:
        async for task in client.tasks():
            try:
                if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                    await self._train(client, task)
                elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                    await self._evaluate(client, task)
                elif task.kind in _SECAGG_KINDS:
                    await self._secagg_step(client, task)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # a straggler: the round closed (deadline) before this client was done;
                # its late work is discarded and it waits for the next round's task
                logger.warning(
                    "round %d closed before this client finished (%s); waiting for the next task",
                    task.round,
                    exc.details(),
                )
                continue
            except UploadStatusLostError as exc:
                # refused mid-stream, reason lost by the transport: the round goes on without
                # this update, as for a straggler
                logger.warning("%s; waiting for the next task", exc)
                continue
            if task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                logger.info("finished: %s", task.message)
                return task.message
        raise grpc.aio.AioRpcError(  # the stream ended without FINISHED: reconnect
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "task stream closed",
        )

    async def _secagg_step(self, client: CoordinatorClient, task: coordinator_pb2.Task) -> None:
        """Answer a SECAGG_KEYS / SHARES / UNMASK task; refuse (answer nothing) what the
        library refuses."""
        info = task.secure_aggregation
        try:
            if task.kind == coordinator_pb2.TASK_KIND_SECAGG_KEYS:
                self._secure = None
                member = SecureMember(self._runtime.client_id, task.round, info)
                request = member.keys()
                self._secure = member
            else:
                member = self._secure_member(task)
                if task.kind == coordinator_pb2.TASK_KIND_SECAGG_SHARES:
                    request = member.shares(info)
                else:
                    request = member.unmask(info)
                    self._secure = None  # answered once; nothing of this round is kept
        except SecAggError as exc:
            logger.warning(
                "round %d: refused a secure-aggregation task (%s): %s",
                task.round,
                coordinator_pb2.TaskKind.Name(task.kind),
                exc,
            )
            return
        try:
            await client.secagg_step(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRYABLE or exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise  # reconnect, or a stage that closed (the task loop logs it)
            # refused (a repeated or malformed answer): this round goes on without it
            logger.warning(
                "round %d: the coordinator refused a secure-aggregation answer: %s %s",
                task.round,
                exc.code().name,
                exc.details(),
            )

    def _secure_member(self, task: coordinator_pb2.Task) -> SecureMember:
        member = self._secure
        if member is None or member.round != task.round:
            raise SecAggError(f"no secure-aggregation member for round {task.round}")
        return member

    async def _train(self, client: CoordinatorClient, task: coordinator_pb2.Task) -> None:
        rt = self._runtime
        secure: tuple[SecureMember, Encoding] | None = None
        if task.HasField("secure_aggregation"):
            secure = self._secure_train(task)
        payload = await client.task_model(task, coordinator_pb2.MODEL_STAGE_ROUND_START)
        centroids, received = split_centroids(payload)
        names = [s.name for s in task.expected_update] or sorted(received)
        # validated before anything is loaded: a hostile setting fails the task here
        settings = train_settings(task, centroids=centroids, uploaded=tuple(names))
        digest = tensor_digest(received)
        await asyncio.to_thread(rt.load_shared_state, received)
        if self._last_eval is not None and self._last_eval[0] == digest:
            before = self._last_eval[1]
        else:
            before = await asyncio.to_thread(rt.evaluate)
        train_metrics = await asyncio.to_thread(rt.train, settings)
        self.metrics.observe_training(task.round, train_metrics)
        after = await asyncio.to_thread(rt.evaluate)
        trained = await asyncio.to_thread(rt.shared_state)
        delta = {n: (trained[n].astype(np.float32) - received[n].astype(np.float32)) for n in names}
        await asyncio.to_thread(rt.save_personal)
        metrics = {f"pre_{k}": v for k, v in before.items()}
        metrics.update({f"post_{k}": v for k, v in after.items()})
        metrics.update({f"train_{k}": v for k, v in train_metrics.items()})
        kind = coordinator_pb2.UPDATE_KIND_DELTA
        if task.HasField("secure_aggregation"):
            if secure is None:  # a group not aggregated this round, or a refused task
                logger.info("round %d: trained; nothing to upload this round", task.round)
                self.rounds_trained.append(task.round)
                return
            member, encoding = secure
            try:
                delta = await asyncio.to_thread(
                    member.mask,
                    delta,
                    encoding,
                    num_examples=rt.num_train_examples,
                    cluster_id=task.cluster_id,
                    centroids=centroids,
                )
            except SecAggError as exc:
                logger.warning("round %d: refused to mask the update: %s", task.round, exc)
                return
            kind = coordinator_pb2.UPDATE_KIND_MASKED
        await self._upload(  # the training metrics travel in the upload's header
            client,
            round_id=task.round,
            kind=kind,
            tensors=delta,
            num_examples=rt.num_train_examples,
            train_metrics=metrics,
        )
        self.rounds_trained.append(task.round)
        logger.info(
            "round %d: trained %d steps, accuracy %.3f -> %.3f",
            task.round,
            settings.local_steps,
            before.get("accuracy", float("nan")),
            after.get("accuracy", float("nan")),
        )

    def _secure_train(self, task: coordinator_pb2.Task) -> tuple[SecureMember, Encoding] | None:
        """The member and encoding of a secure TRAIN task (None: train, upload nothing)."""
        info = task.secure_aggregation
        if not info.HasField("encoding"):
            return None
        try:
            member = self._secure_member(task)
            return member, member.receive(info)
        except SecAggError as exc:
            logger.warning("round %d: refused the secure TRAIN task: %s", task.round, exc)
            return None

    async def _evaluate(self, client: CoordinatorClient, task: coordinator_pb2.Task) -> None:
        rt = self._runtime
        # validated before anything is loaded: a hostile pass fails the task here
        personalize = personalize_settings(task)
        aggregated = await client.task_model(task, coordinator_pb2.MODEL_STAGE_AGGREGATED)
        digest = tensor_digest(aggregated)
        await asyncio.to_thread(rt.load_shared_state, aggregated)
        plain = metrics = await asyncio.to_thread(rt.evaluate)
        # the next TRAIN task starts from this model: its pre_* metrics are these, unpersonalized
        self._last_eval = (digest, plain)
        if personalize is not None:
            try:
                personalized = await asyncio.to_thread(rt.personalized_evaluate, personalize)
            except FloatingPointError as exc:  # a diverging pass: the silo keeps the aggregate
                logger.warning("round %d: the personalization pass failed: %s", task.round, exc)
                personalized = {**plain, PERSONALIZE_FAILED: 1.0}
            metrics = personalized_report(plain, personalized)
        self.metrics.observe_evaluation(task.round, metrics)
        await asyncio.to_thread(rt.save_personal)
        await client.report_metrics(
            round_id=task.round, phase=coordinator_pb2.METRICS_PHASE_EVALUATE, metrics=metrics
        )
        accuracy = plain.get("accuracy", math.nan)
        if personalize is None:
            logger.info("round %d: aggregated model accuracy %.3f", task.round, accuracy)
        else:
            logger.info(
                "round %d: aggregated model accuracy %.3f, after the personalization pass %.3f",
                task.round,
                accuracy,
                metrics.get("accuracy", math.nan),
            )

    async def _upload(
        self,
        client: CoordinatorClient,
        *,
        round_id: int,
        kind: coordinator_pb2.UpdateKind.ValueType,
        tensors: Mapping[str, np.ndarray],
        num_examples: int,
        train_metrics: Mapping[str, float] | None = None,
    ) -> coordinator_pb2.UploadUpdateResponse:
        method = self._compression if kind == coordinator_pb2.UPDATE_KIND_DELTA else None
        if method is not None and method is not Compression.NONE:
            packed, meta = await asyncio.to_thread(compress_tensors, tensors, method)
            payload = await asyncio.to_thread(encode_tensors, packed, metadata=meta)
        else:
            payload = await asyncio.to_thread(encode_tensors, tensors)
        return await client.upload(
            round_id=round_id,
            kind=kind,
            payload=payload,
            num_examples=num_examples,
            train_metrics=train_metrics,
        )

"""The federation's round state machine, without any gRPC.

:class:`Federation` is what the servicer calls (join, task streams, model download,
metrics, status; uploads go to its :attr:`~Federation.uploads` intake) and
:meth:`Federation.run` drives the rounds:

    waiting for quorum -> clustering -> broadcast -> training (deadline) -> aggregation
    -> evaluation (deadline) -> checkpoint -> next round ... -> done

With secure aggregation (``secure_aggregation.enabled``) training is wrapped in the stages of
:class:`~fedprompt_coordinator.secure_round.SecureRound`: broadcast -> key exchange (keys,
then shares; deadlines) -> training (masked uploads) -> unmasking (deadline) -> aggregation
from each cluster's unmasked sum.

It wires the rooms around it and owns what none of them does: the phases, quorum,
participants, deadlines, the model of each round and its checkpoint.

- :mod:`~fedprompt_coordinator.sessions`: joined clients and their task streams;
- :mod:`~fedprompt_coordinator.upload_intake`: from an upload's header to an accepted update;
- :mod:`~fedprompt_coordinator.round_progress`: the phase, the round in progress and the
  one round-participation check;
- :mod:`~fedprompt_coordinator.round_reports`: round records, status and gauges;
- :mod:`~fedprompt_coordinator.strategies`: what the configured strategy does (levels,
  initial-model check, train settings, round-start extras, its aggregator);
- :func:`~fedprompt_coordinator.privacy.make_budget`: the DP-FedAvg budget (per-level
  accountants and their composition), whose mechanisms wrap the strategy's aggregator
  (:class:`~fedprompt_coordinator.aggregation.dp_levels.DPLevels`).

State is durable at the end of every round (tensor files written and hashed first, then one
SQLite transaction with their SHA-256, then the folder renamed into place), so a restarted
coordinator resumes after the last completed round; at start the state is checked
(:func:`~fedprompt_coordinator.state_check.verify_state`) before anything is loaded.

A round that fails with an unexpected error (a full disk, a bug) is never silent:
:meth:`Federation.run` logs it with its traceback, removes its temporary files, records the
attempt as failed (status, metrics, :attr:`FederationStatus.round_failure`) and raises
:class:`RoundFailedError`; the process then reports NOT_SERVING and exits non-zero so that its
supervisor restarts it from the last completed round (see ``__main__``). Nothing of the failed
attempt (updates, spooled uploads, digests) survives into the retried round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping

import numpy as np

from fedprompt.client_input import check_metrics
from fedprompt.errors import (
    FedPromptError,
    InvalidArgumentError,
    ModelMismatchError,
    WrongRoundError,
)
from fedprompt.strategies import strategy_spec
from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.clipping import bounds_from_summary
from fedprompt_coordinator.aggregation.dp_levels import DPLevels
from fedprompt_coordinator.aggregation.levels import Released
from fedprompt_coordinator.aggregation.server_optimizer import ServerStep
from fedprompt_coordinator.cluster_refinement import AlignmentTracker, Evidence
from fedprompt_coordinator.clustering_backend import ClusteringBackend
from fedprompt_coordinator.config import CoordinatorConfig, DPLevel
from fedprompt_coordinator.domain import (
    ClientUpdate,
    FederationModel,
    FederationStatus,
    JoinRequest,
    JoinResult,
    MetricsPhase,
    ModelStage,
    Phase,
    RoundFailure,
    RoundRecord,
    SecAggStep,
    SecAggTask,
    ServerMoments,
    StatusQuery,
    StatusView,
    Task,
    TaskKind,
    TensorSpec,
)
from fedprompt_coordinator.encoded_model import EncodedModel
from fedprompt_coordinator.metrics import CoordinatorMetrics
from fedprompt_coordinator.model_store import (
    ModelStore,
    PreparedSnapshot,
    SnapshotIntegrityError,
)
from fedprompt_coordinator.privacy import (
    BudgetExhaustedError,
    expected_participants,
    make_budget,
)
from fedprompt_coordinator.round_models import RoundModels
from fedprompt_coordinator.round_progress import (
    FETCH_MODEL,
    REPORT_METRICS,
    RoundInProgress,
    RoundProgress,
)
from fedprompt_coordinator.round_reports import RoundReports
from fedprompt_coordinator.secure_round import SecurePlan, SecureRound
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.state_check import StateIntegrityError, verify_state
from fedprompt_coordinator.state_store import StateStore
from fedprompt_coordinator.strategies import build_strategy
from fedprompt_coordinator.traffic import TrafficMeter
from fedprompt_coordinator.upload_intake import UploadIntake, UploadLimits
from fedprompt_coordinator.validation import spec_of, validate_update

logger = logging.getLogger(__name__)

_SETTING_SPEC = "tensor_spec"
_SETTING_ACCOUNTANT = "privacy_accountant"
_SETTING_STOP_REASON = "stop_reason"
_SETTING_REFINEMENT = "refinement_evidence"
#: Pause before drawing a round again when client sampling fell below the quorum.
SAMPLING_RETRY_PAUSE_S = 0.5
#: Longest exception message kept in a failed round's status.
MAX_REASON_CHARS = 400


def _stage_done(
    complete: Callable[[Collection[str]], bool], alive: Callable[[], Collection[str]]
) -> bool:
    """Whether a secure stage is complete for the members still connected."""
    return complete(alive())


class RoundFailedError(Exception):
    """The round loop stopped: a round failed with an unexpected error (already logged).

    Parameters
    ----------
    failure
        What failed, as reported in the status.
    """

    def __init__(self, failure: RoundFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class Federation:
    """The round state machine over client sessions, upload intake and round reports.

    Parameters
    ----------
    config
        The coordinator's configuration.
    state
        Durable federation state.
    models
        Durable tensor snapshots.
    clustering
        Where cluster assignments come from.
    clock
        Wall-clock source (seconds since the epoch), replaceable in tests.
    metrics
        Prometheus metrics to record rounds and traffic into (a private registry by default).

    Raises
    ------
    StateIntegrityError
        When the state database and the snapshot folders disagree or a snapshot file is
        corrupt (nothing is loaded then; see :mod:`~fedprompt_coordinator.state_check`).
    """

    def __init__(
        self,
        *,
        config: CoordinatorConfig,
        state: StateStore,
        models: ModelStore,
        clustering: ClusteringBackend,
        clock: Callable[[], float] = time.time,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics if metrics is not None else CoordinatorMetrics()
        self._state = state
        self._models = models
        self._clustering = clustering
        self._clock = clock
        self._changed = asyncio.Condition()
        verified = verify_state(state, models)
        self._sessions = ClientSessions(
            state=state,
            strategy=config.strategy.value,
            max_examples=config.max_client_examples,
            notify=self._notify,
        )
        self._progress = RoundProgress(
            phase=Phase.WAITING_FOR_QUORUM, completed=state.last_completed_round()
        )
        self._accounting_round = 0
        self.traffic = TrafficMeter(lambda: self._accounting_round, on_add=self.metrics.count_bytes)
        spec_json = state.get_setting(_SETTING_SPEC)
        self._spec: tuple[TensorSpec, ...] = (
            tuple(
                TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in json.loads(spec_json)
            )
            if spec_json
            else ()
        )
        self._model: FederationModel | None = None
        if self._progress.completed or 0 in verified.snapshots:
            completed = self._progress.completed
            self._model = models.load(completed, expected=verified.snapshots[completed])
            if not self._spec:
                raise StateIntegrityError(
                    f"the state database in {models.root.parent} records the model of round "
                    f"{completed} but not its tensor spec; restore the state dir from a backup"
                )
        #: How each level's aggregate is applied, and its moments after the last completed
        #: round (saved with that round's snapshot).
        self._server_optimizer = config.aggregation.server_optimizer.build()
        self._moments = self._resume_moments(verified.snapshots)
        self._assignment = state.assignment()
        self._clustered_members: frozenset[str] = frozenset()
        #: True while the clusterer could not be reached: the last assignment is kept and
        #: every round summary says so (``clustering_degraded``) until it answers again.
        self._clustering_degraded = False
        #: Cluster refinement's evidence (None: refinement off), durable with each round,
        #: and whether it changed since the clusterer last saw it.
        self._refiner = self._load_refiner(config, state)
        self._refinement_pending = self._refiner is not None
        #: The round attempt that failed unexpectedly (None while the round loop is healthy).
        self._failure: RoundFailure | None = None
        #: The snapshot being written while clients evaluate (awaited at the checkpoint).
        self._pending_save: asyncio.Future[tuple[PreparedSnapshot, float]] | None = None
        #: What the clients of the round in progress download (None between rounds).
        self._round_models: RoundModels | None = None
        self._initial_lock = asyncio.Lock()
        self._waited_for_latecomers = False
        self._strategy = build_strategy(config)
        #: The secure round in progress (None: none, or secure aggregation is off), and the
        #: task of its current stage per member (sent again to a member that reconnects).
        self._secure: SecureRound | None = None
        self._secure_tasks: dict[str, Task] = {}
        #: Where uploads are checked and accepted into the round in progress.
        self.uploads = UploadIntake(
            sessions=self._sessions,
            progress=self._progress,
            models=models,
            limits=UploadLimits(
                max_update_bytes=config.max_update_bytes,
                max_initial_model_bytes=config.max_initial_model_bytes,
                max_spool_bytes=config.limits.max_spool_bytes,
                max_buffered_bytes=config.limits.max_buffered_upload_bytes,
            ),
            max_update_l2_norm=config.max_update_l2_norm,
            max_examples=config.max_client_examples,
            spec=lambda: self._spec,
            has_model=lambda: self._model is not None,
            accept_initial=self._accept_initial,
            notify=self._notify,
            secure=lambda: self._secure,
        )
        self._dp_levels = config.privacy.dp_levels(
            clustered=strategy_spec(config.strategy).clustered
        )
        self._budget = make_budget(
            config.privacy,
            rounds=config.rounds,
            saved_accountant=state.get_setting(_SETTING_ACCOUNTANT),
            levels=self._dp_levels,
        )
        self._reports = RoundReports(
            total_rounds=config.rounds,
            strategy=config.strategy.value,
            state=state,
            metrics=self.metrics,
            sessions=self._sessions,
            progress=self._progress,
            traffic=self.traffic,
            budget=self._budget,
            clock=clock,
            page_clients=config.status_page_clients,
            page_rounds=config.status_page_rounds,
        )
        self.metrics.watch(self._reports.gauges)
        self._rng = np.random.default_rng(config.privacy.seed)
        self._aggregator = self._make_aggregator()
        self._secure_plan = (
            SecurePlan.from_config(
                config,
                mechanisms=self._budget.mechanisms if self._budget else None,
            )
            if config.secure_aggregation.enabled
            else None
        )
        self._stop_reason = state.get_setting(_SETTING_STOP_REASON) or ""
        if self._progress.completed:
            logger.info("resuming after completed round %d", self._progress.completed)
        if self._progress.completed >= config.rounds or self._stop_reason:
            self._progress.phase = Phase.DONE

    def _resume_moments(self, snapshots: Mapping[int, Mapping[str, str]]) -> ServerMoments:
        """The server optimizer's moments saved with the last completed round (none for a
        fresh federation, or a state dir written before there were moments).

        Raises
        ------
        StateIntegrityError
            When a moment file is corrupt or does not fit the model.
        """
        completed = self._progress.completed
        if self._model is None or completed not in snapshots:
            return ServerMoments()
        try:
            saved = self._models.load_moments(completed, expected=snapshots[completed])
            return self._server_optimizer.resume(saved, self._model)
        except (SnapshotIntegrityError, ValueError) as exc:
            raise StateIntegrityError(
                f"{exc}. Restore the whole state dir from a backup (the moments of the server "
                "optimizer are part of the snapshot of every round)"
            ) from exc

    def _make_aggregator(self) -> ClusterAggregator:
        """The strategy's aggregator (capped weights, level rules, per-client clipping),
        wrapped in DP-FedAvg of every DP level when DP is on (its clipping replaces that
        level's). Adaptive clip bounds resume from the last completed round's record.
        """
        completed = [r for r in self._state.rounds() if r.status == "completed"]
        levels = self._dp_levels
        inner = self._strategy.make_aggregator(
            clip_global=DPLevel.GLOBAL not in levels,
            # the cluster level's clipping is replaced only when DP covers all of it
            clip_cluster=not {DPLevel.CLUSTER, DPLevel.HEAD} <= set(levels),
            rounds_completed=lambda: self._progress.completed,
            restored_bounds=bounds_from_summary(completed[-1].summary) if completed else None,
        )
        if self._budget is None:
            return inner
        cfg = self._config.privacy
        q = cfg.client_sampling_rate

        def expected_cluster(cluster_id: int) -> float:
            # m_k: the cluster's expected participants among the joined clients
            joined = self._sessions.ids()
            members = sum(1 for c, k in self._assignment.items() if k == cluster_id and c in joined)
            return expected_participants(q, members)

        return DPLevels(
            inner,
            mechanisms=self._budget.mechanisms,
            # fixed denominator: the expected number of participants, q · N
            expected_global=lambda: expected_participants(q, len(self._sessions)),
            expected_cluster=expected_cluster,
            server_learning_rate=cfg.server_learning_rate,
            rng=self._rng,  # one generator for client sampling and noise, as before
            min_cluster_members=cfg.min_cluster_members,
        )

    # ------------------------------------------------------------------ client calls

    async def join(self, request: JoinRequest) -> JoinResult:
        """Register (or re-register) a client; ask for the initial model if there is none.

        Who was asked is recorded: only those clients may upload an initial model.
        """
        session = await self._sessions.join(request)
        asked = self._model is None
        self._sessions.record_initial_model_ask(session.client_id, asked=asked)
        return JoinResult(
            initial_model_requested=asked,
            current_round=self.current_round,
            total_rounds=self._config.rounds,
            phase=self._progress.phase,
            strategy=self._config.strategy.value,
        )

    def task_stream(self, client_id: str) -> AsyncIterator[Task]:
        """The client's tasks as they are published (missed ones first), until it is done."""
        return self._sessions.task_stream(client_id, lambda: self._pending_tasks_for(client_id))

    def fetch_model(self, client_id: str, round_id: int, stage: ModelStage) -> EncodedModel:
        """Return the download (serialized messages) of the model a client of ``round_id``
        asks for; the same object for every participant of a cluster."""
        self._sessions.require(client_id)
        current = self._progress.require_participant(client_id, round_id, FETCH_MODEL)
        if stage not in (ModelStage.ROUND_START, ModelStage.AGGREGATED):
            raise InvalidArgumentError("model stage must be ROUND_START or AGGREGATED")
        assert self._round_models is not None  # set with the round in progress
        return self._round_models.encoded(stage, current.participants[client_id])

    async def report_metrics(
        self, client_id: str, round_id: int, phase: MetricsPhase, metrics: Mapping[str, float]
    ) -> None:
        """Store a client's metrics for the round in progress."""
        self._sessions.require(client_id)
        checked = check_metrics(metrics, field="metrics")
        current = self._progress.require_participant(client_id, round_id, REPORT_METRICS)
        target = current.train_metrics if phase is MetricsPhase.TRAIN else current.eval_metrics
        target[client_id] = checked
        await self._notify()

    async def secagg_step(self, step: SecAggStep) -> None:
        """Record a member's answer to a secure-aggregation task of the round in progress.

        Raises
        ------
        WrongRoundError
            When no secure round is in progress for ``step.round``, or it is at another stage.
        """
        self._sessions.require(step.client_id)
        secure = self._secure
        if secure is None or secure.round != step.round:
            raise WrongRoundError(f"round {step.round} has no secure aggregation in progress")
        secure.add_step(step)
        await self._notify()

    def status(self, query: StatusQuery | None = None) -> FederationStatus:
        """A page of rounds, phase, clients and traffic, as the caller's view shows it.

        A round attempt that failed unexpectedly is part of every view; which clients had
        updates in it only of the full view.

        Parameters
        ----------
        query
            Who asks and which page; None: the full view's first page.
        """
        query = query or StatusQuery()
        status = self._reports.status(
            query, assignment=self._assignment, stop_reason=self._stop_reason
        )
        failure = self._failure
        if failure is not None and query.view is not StatusView.FULL:
            failure = dataclasses.replace(failure, clients_with_updates=())
        return dataclasses.replace(status, round_failure=failure)

    @property
    def failure(self) -> RoundFailure | None:
        """The round attempt that failed unexpectedly, or None while the loop is healthy."""
        return self._failure

    @property
    def current_round(self) -> int:
        """The round in progress, else the last completed one."""
        return self._progress.current_round

    @property
    def phase(self) -> Phase:
        """The state machine's phase."""
        return self._progress.phase

    # ------------------------------------------------------------------ state machine

    async def run(self) -> None:
        """Run rounds until the configured number is completed, then tell clients to finish.

        Raises
        ------
        RoundFailedError
            When a round failed with an unexpected error: it is logged with its traceback,
            its temporary files are removed and the attempt is recorded as failed first.
        """
        while self._progress.completed < self._config.rounds and not self._stop_reason:
            round_id = self._progress.completed + 1
            error: Exception | None = None
            try:
                await self._run_round(round_id)
            except BudgetExhaustedError as exc:
                self._stop_reason = exc.message
                self._state.set_setting(_SETTING_STOP_REASON, exc.message)
                logger.warning("%s", exc.message)
            except Exception as exc:  # noqa: BLE001 - the round loop's guard: never silent
                error = exc
            if error is not None:  # handled outside the except block: clean tracebacks
                raise RoundFailedError(await self._fail_round(round_id, error)) from error
        self._progress.phase = Phase.DONE
        self._progress.current = None
        self._drop_round_models()
        message = f"federation completed {self._progress.completed} rounds"
        if self._stop_reason:
            message += f"; stopped early: {self._stop_reason}"
        logger.info("%s", message)
        self._sessions.publish_to_all(
            Task(kind=TaskKind.FINISHED, round=self._progress.completed, message=message)
        )
        await self._notify()

    async def _run_round(self, round_id: int) -> None:
        self._progress.phase = Phase.WAITING_FOR_QUORUM
        if self._budget is not None:
            self._budget.check_next_round(round_id)  # refuse before any work is done
        await self._wait_for_quorum()
        started = self._clock()

        self._progress.phase = Phase.CLUSTERING
        participants = self._draw_participants()
        if len(participants) < self._config.min_clients:
            # Poisson sampling drew fewer clients than the quorum: nothing is trained or
            # released (the draw does not depend on any data, so no privacy is spent); the
            # attempt is recorded and the round is drawn again after a short pause.
            reason = (
                f"failed: client sampling drew {len(participants)} clients, "
                f"quorum is {self._config.min_clients}"
            )
            logger.warning("round %d %s; it will be retried", round_id, reason)
            self._reports.store(RoundRecord(round_id, reason, started, self._clock(), 0, (), {}))
            await asyncio.sleep(SAMPLING_RETRY_PAUSE_S)
            return
        await self._update_assignment(participants)

        self._progress.phase = Phase.BROADCAST
        self._accounting_round = round_id
        current = RoundInProgress(
            round=round_id,
            started_unix=started,
            participants={c: self._assignment[c] for c in participants},
            deadline_unix=started + self._config.round_deadline_s,
        )
        assert self._model is not None  # quorum waits for it
        clusters = sorted(set(current.participants.values()))
        round_models = self._round_models = RoundModels(
            current,
            self._model,
            extras=self._strategy.round_start_tensors(self._model, clusters),
            inline_limit=self._config.inline_model_max_bytes,
            spill_dir=self._models.download_dir,
        )
        self._progress.current = current
        logger.info("round %d: %d participants", round_id, len(participants))
        # BROADCAST: the round-start model of every participating cluster is encoded off the
        # event loop (for large models, seconds), then the TRAIN tasks go out together.
        t_broadcast = time.perf_counter()
        await round_models.encode_round_start()
        current.phase_seconds["broadcast_seconds"] = time.perf_counter() - t_broadcast
        if self._secure_plan is not None:
            secure = await self._secure_stages(current, self._secure_plan)
            evaluators = secure.evaluators()
        else:
            secure = None
            self._progress.phase = Phase.TRAINING
            t_train = time.perf_counter()
            for cid in participants:
                self._sessions.publish(cid, self._train_task(current, cid))
            await self._wait_until(
                lambda: len(current.updates) == len(current.participants), current.deadline_unix
            )
            current.phase_seconds["training_seconds"] = time.perf_counter() - t_train
            evaluators = sorted(current.updates)
        # a secure round completes when any group's sum was released (its quorum is each
        # group's min_survivors); a plain one when the quorum of updates arrived
        if (secure is None and len(current.updates) < self._config.min_clients) or (
            secure is not None and not secure.released
        ):
            reason = (
                f"failed: {len(current.updates)} of {len(current.participants)} updates by the "
                f"deadline, quorum is {self._config.min_clients}"
                if secure is None
                else "failed: no secure-aggregation group could be released"
            )
            logger.warning("round %d %s; it will be retried", round_id, reason)
            self._reports.store(self._round_record(current, status=reason))
            self._progress.current = None
            self._drop_round_models()
            self._secure = None
            self._models.drop_spool(round_id)
            return

        self._progress.phase = Phase.AGGREGATION
        assert self._model is not None
        t0 = time.perf_counter()
        aggregation_seconds = current.aggregation_seconds
        released: Released
        if secure is not None:
            aggregate = secure.result
            released = secure.released_tensors
            assert aggregate is not None  # aggregated in the secure stages
        else:
            aggregate = await asyncio.to_thread(
                self._aggregate, self._model, list(current.updates.values())
            )
            released = self._aggregator.last_released
        # the server optimizer steps each released level (post-processing of the release)
        step: ServerStep = await asyncio.to_thread(
            self._server_optimizer.apply,
            self._model,
            aggregate,
            released=released,
            moments=self._moments,
        )
        aggregated = current.aggregated = step.model
        current.server_step_info = step.info
        current.aggregation_seconds = aggregation_seconds + time.perf_counter() - t0
        if self._budget is not None:
            # account before the noised model is released to anyone; a crash after this
            # point may count the round twice (safe), never zero times
            self._budget.record_round()
            self._state.set_setting(_SETTING_ACCOUNTANT, self._budget.state_json())

        # The aggregate is final: write its tensor files (under a temporary name) while
        # clients evaluate it. The round only counts as completed once the SQLite record
        # below commits with the files' SHA-256, after these files are durable; the folder is
        # renamed into place after the commit. A crash in between resumes from the previous
        # round (or, after the commit, renames the folder at the next start).
        save = asyncio.ensure_future(
            asyncio.to_thread(self._prepare_snapshot, round_id, aggregated, step.moments)
        )
        self._pending_save = save
        # the aggregate's downloads are encoded once, off the event loop (beside the snapshot)
        await round_models.encode_aggregated()
        self._progress.phase = Phase.EVALUATION
        t_eval = time.perf_counter()
        eval_deadline = self._clock() + self._config.eval_deadline_s
        evaluate = self._strategy.configure_evaluate()
        for cid in evaluators:
            self._sessions.publish(
                cid,
                Task(
                    kind=TaskKind.EVALUATE,
                    round=round_id,
                    cluster_id=current.participants[cid],
                    deadline_unix_ms=int(eval_deadline * 1000),
                    model=round_models.inline(ModelStage.AGGREGATED, current.participants[cid]),
                    training=evaluate.training,
                    personalize_steps=evaluate.personalize_steps,
                ),
            )
        await self._wait_until(  # the length test spares an O(n) scan on most wake-ups
            lambda: (
                len(current.eval_metrics) >= len(evaluators)
                and all(c in current.eval_metrics for c in evaluators)
            ),
            eval_deadline,
        )
        current.phase_seconds["evaluation_seconds"] = time.perf_counter() - t_eval
        self._progress.phase = Phase.CHECKPOINT
        t_save = time.perf_counter()
        prepared, current.phase_seconds["model_save_seconds"] = await save
        current.phase_seconds["checkpoint_wait_seconds"] = time.perf_counter() - t_save
        self._pending_save = None
        evidence: dict[str, Evidence] | None = None
        settings: dict[str, str] = {}
        if self._refiner is not None and secure is None:
            evidence = await asyncio.to_thread(  # O(n² d) for the peers: off the event loop
                self._refiner.observed,
                list(current.updates.values()),
                new_id=max(self._assignment.values(), default=-1) + 1,
            )
            settings[_SETTING_REFINEMENT] = AlignmentTracker.evidence_to_json(evidence)
        try:
            self._reports.store(
                self._round_record(current, status="completed"),
                snapshot=prepared.files,
                settings=settings,
            )
        except BaseException:
            self._models.discard(prepared)
            raise
        if self._refiner is not None and evidence is not None:
            self._refinement_pending |= self._refiner.commit(evidence)
        await asyncio.to_thread(self._models.publish, prepared)
        self._model = current.aggregated
        self._moments = step.moments
        self._progress.completed = round_id
        self._progress.current = None
        self._drop_round_models()
        self._secure = None
        self._models.drop_spool(round_id)
        self.traffic.forget_before(round_id)
        logger.info("round %d completed", round_id)

    def _prepare_snapshot(
        self, round_id: int, model: FederationModel, moments: ServerMoments
    ) -> tuple[PreparedSnapshot, float]:
        """Prune snapshots older than the round-start model, write ``model`` and the server
        optimizer's ``moments`` under a temporary name; returns it (with its digests) and
        the seconds it took.

        Kept on disk: the initial model, the round-start model (round_id - 1) and this one.
        """
        t0 = time.perf_counter()
        self._models.prune(keep_from=round_id - 1)
        prepared = self._models.prepare(round_id, model, moments=moments)
        return prepared, time.perf_counter() - t0

    async def _fail_round(self, round_id: int, exc: Exception) -> RoundFailure:
        """Log, clean up and record a round attempt that ended with an unexpected error.

        Every step is attempted even when an earlier one fails (on a full disk the record
        may not be writable: the failure is then kept in memory for the status, and said).
        Nothing of the attempt is kept for a retry: its updates, spool and snapshot go.
        """
        phase = self._progress.phase
        message = str(exc) or repr(exc)
        if len(message) > MAX_REASON_CHARS:
            message = message[:MAX_REASON_CHARS] + "..."
        reason = f"failed: unexpected error in {phase.name}: {type(exc).__name__}: {message}"
        logger.error(
            "round %d failed with an unexpected error in phase %s; the round loop stops",
            round_id,
            phase.name,
            exc_info=exc,
        )
        self.metrics.observe_round_error(phase)
        current = self._progress.current
        if current is not None and current.round != round_id:
            current = None
        self._failure = RoundFailure(
            round=round_id,
            phase=phase,
            reason=reason,
            failed_unix=self._clock(),
            clients_with_updates=tuple(sorted(current.updates)) if current else (),
        )
        save, self._pending_save = self._pending_save, None
        if save is not None:
            # the snapshot thread cannot be cancelled: let it end, then drop what it wrote
            await asyncio.wait([save])
            if not save.cancelled() and save.exception() is None:
                self._models.discard(save.result()[0])
        try:
            removed = self._models.remove_temporaries()
            self._models.drop_spool(round_id)
            if removed:
                logger.info("removed %s", ", ".join(p.name for p in removed))
        except Exception:  # keep going: the failure must still be recorded
            logger.exception("round %d: could not remove its temporary files", round_id)
        self._progress.current = None
        self._drop_round_models()
        self._secure = None
        self._record_failure(round_id, current, reason)
        return self._failure

    def _record_failure(self, round_id: int, current: RoundInProgress | None, reason: str) -> None:
        """Store the failed attempt durably if the store can take it; count it either way."""
        now = self._clock()
        record = RoundRecord(round_id, reason, now, now, 0, (), {})
        if current is not None:
            try:
                record = self._round_record(current, status=reason)
            except Exception:  # fall back to a record without clients
                logger.exception("round %d: could not build the failed round's record", round_id)
        attempts = (
            (record, "could not store the failed round's record"),
            (
                dataclasses.replace(record, clients=(), summary={}),
                "could not store it without its client rows either",
            ),
        )
        for attempt, problem in attempts:
            try:
                self._reports.store(attempt)
                return
            except Exception:  # a full disk, or the record itself is the poison
                logger.exception("round %d: %s", round_id, problem)
        self.metrics.observe_round(record)
        logger.error(
            "round %d: the failure is reported in GetStatus (round_failure) and the metrics "
            "only, not in the state database",
            round_id,
        )

    async def _wait_for_quorum(self) -> None:
        def quorum() -> bool:
            connected = self._sessions.connected_count()
            return self._model is not None and connected >= self._config.min_clients

        await self._wait_until(quorum, None)
        expected = self._config.expected_clients
        if expected is not None:
            await self._wait_until(
                lambda: self._sessions.connected_count() >= expected,
                self._clock() + self._config.quorum_wait_s,
            )
        elif self._config.quorum_wait_s > 0 and not self._waited_for_latecomers:
            # only before the first round this process opens: later rounds start at once
            await asyncio.sleep(self._config.quorum_wait_s)
        self._waited_for_latecomers = True

    async def _update_assignment(self, participants: list[str]) -> None:
        members = self._sessions.ids()
        if (
            not self._clustering_degraded  # a failed clustering is asked again every round
            and not self._refinement_pending  # new evidence from the members' updates
            and members == self._clustered_members
            and all(c in self._assignment for c in participants)
        ):
            return
        metadata = self._sessions.metadata()
        evidence = None
        if self._refiner is not None:
            self._refiner.forget(members)
            evidence = self._refiner.evidence
        previous = dict(self._assignment)
        try:
            assignment = await self._clustering.assign(metadata, previous, evidence)
        except FedPromptError as exc:
            logger.warning(
                "clustering failed, keeping the last assignment (retried next round): %s",
                exc.message,
            )
            self._clustering_degraded = True
            assignment = dict(self._assignment)
            fallback = min(assignment.values(), default=0)
            for cid in participants:
                assignment.setdefault(cid, fallback)
        else:
            if self._clustering_degraded:
                logger.info("clusterer answered again; assignment updated")
            self._clustering_degraded = False
            self._refinement_pending = False
            self._clustered_members = members
            moved = {
                c: (previous[c], k)
                for c, k in assignment.items()
                if c in previous and previous[c] != k
            }
            for cid, (old, new) in sorted(moved.items()):
                logger.info("client %s moved from cluster %d to cluster %d", cid, old, new)
            self.metrics.observe_cluster_moves(len(moved))
        self._assignment = assignment
        self._state.set_assignment(assignment)

    @staticmethod
    def _load_refiner(config: CoordinatorConfig, state: StateStore) -> AlignmentTracker | None:
        """The refinement tracker with the durable evidence (None: refinement off).

        Raises
        ------
        StateIntegrityError
            When the stored evidence is not readable.
        """
        cfg = config.clustering
        if cfg.refine_after_rounds == 0:
            return None
        saved = state.get_setting(_SETTING_REFINEMENT)
        try:
            evidence = AlignmentTracker.evidence_from_json(saved) if saved else {}
        except ValueError as exc:
            raise StateIntegrityError(
                f"the state database holds unreadable cluster refinement evidence ({exc}); "
                "restore the state dir from a backup"
            ) from exc
        return AlignmentTracker(
            after_rounds=cfg.refine_after_rounds, margin=cfg.refine_margin, evidence=evidence
        )

    def _train_task(
        self, current: RoundInProgress, client_id: str, secure: SecAggTask | None = None
    ) -> Task:
        return Task(
            kind=TaskKind.TRAIN,
            round=current.round,
            cluster_id=current.participants[client_id],
            deadline_unix_ms=int(current.deadline_unix * 1000),
            training=self._strategy.configure_train(),
            expected_update=self._spec,
            model=self._current_models().inline(
                ModelStage.ROUND_START, current.participants[client_id]
            ),
            secure_aggregation=secure,
        )

    async def _secure_stages(self, current: RoundInProgress, plan: SecurePlan) -> SecureRound:
        """KEY_EXCHANGE (keys, shares) -> TRAINING (masked uploads) -> UNMASKING -> the sums
        aggregated (:attr:`SecureRound.result`); each stage waits for its members or deadline.
        """
        model = self._model
        assert model is not None
        secure = self._secure = SecureRound(
            round_id=current.round,
            participants=current.participants,
            spec=self._spec,
            global_names=model.global_tensors,
            examples={
                c: self._sessions.require(c).num_train_examples for c in current.participants
            },
            plan=plan,
        )
        cfg = self._config.secure_aggregation
        stages = (  # the task kind, its phase, what opens it, what completes it, its deadline
            (TaskKind.SECAGG_KEYS, Phase.KEY_EXCHANGE, secure.keys_tasks, secure.keys_complete),
            (
                TaskKind.SECAGG_SHARES,
                Phase.KEY_EXCHANGE,
                secure.open_shares,
                secure.shares_complete,
            ),
            (TaskKind.TRAIN, Phase.TRAINING, secure.open_training, secure.masked_complete),
            (TaskKind.SECAGG_UNMASK, Phase.UNMASKING, secure.open_unmask, secure.unmask_complete),
        )
        wait_s = {
            TaskKind.TRAIN: self._config.round_deadline_s,
            TaskKind.SECAGG_UNMASK: cfg.unmask_deadline_s,
        }
        seconds = {
            Phase.KEY_EXCHANGE: "secagg_key_exchange_seconds",
            Phase.TRAINING: "training_seconds",
        }
        t0 = time.perf_counter()
        for kind, phase, open_stage, complete in stages:
            if phase is not self._progress.phase and self._progress.phase in seconds:
                current.phase_seconds[seconds[self._progress.phase]] = time.perf_counter() - t0
                t0 = time.perf_counter()
            self._progress.phase = phase
            deadline = self._clock() + wait_s.get(kind, cfg.key_deadline_s)
            current.deadline_unix = deadline
            self._secure_tasks = {
                cid: (
                    self._train_task(current, cid, info)
                    if kind is TaskKind.TRAIN
                    else Task(
                        kind=kind,
                        round=current.round,
                        cluster_id=current.participants[cid],
                        deadline_unix_ms=int(deadline * 1000),
                        secure_aggregation=info,
                    )
                )
                for cid, info in open_stage().items()
            }
            for cid, task in self._secure_tasks.items():
                self._sessions.publish(cid, task)
            # a member whose task stream is gone (its process died) is not waited for
            done = functools.partial(_stage_done, complete, self._sessions.connected_ids)
            await self._wait_until(done, deadline)
        current.phase_seconds["secagg_unmask_seconds"] = time.perf_counter() - t0
        self._secure_tasks = {}
        self._progress.phase = Phase.AGGREGATION
        t_agg = time.perf_counter()
        await asyncio.to_thread(self._aggregate_secure, secure, model)
        current.aggregation_seconds = time.perf_counter() - t_agg
        return secure

    def _aggregate_secure(self, secure: SecureRound, model: FederationModel) -> None:
        """The secure round's sums aggregated onto the server optimizer's working model."""
        secure.aggregate(
            self._server_optimizer.working_model(model), denominators=self._dp_denominator
        )

    def _aggregate(self, model: FederationModel, updates: list[ClientUpdate]) -> FederationModel:
        """The round's updates aggregated onto the server optimizer's working model."""
        return self._aggregator.aggregate(self._server_optimizer.working_model(model), updates)

    def _dp_denominator(self, cluster: int | None) -> float:
        """Expected participants under DP: q·N (global, ``None``), q·|members of k| (cluster)."""
        q = self._config.privacy.client_sampling_rate
        if cluster is None:
            return max(1.0, q * len(self._sessions))
        members = sum(1 for c in self._sessions.ids() if self._assignment.get(c) == cluster)
        return max(1.0, q * members)

    def _drop_round_models(self) -> None:
        """Forget the round's encoded models (and delete their files)."""
        if self._round_models is not None:
            self._round_models.close()
        self._round_models = None

    def _current_models(self) -> RoundModels:
        """The models of the round in progress (set whenever a round is)."""
        assert self._round_models is not None
        return self._round_models

    def _pending_tasks_for(self, client_id: str) -> list[Task]:
        """Tasks a (re)connecting client missed in the round in progress."""
        if self._progress.phase is Phase.DONE:
            return [
                Task(
                    kind=TaskKind.FINISHED,
                    round=self._progress.completed,
                    message="federation is done",
                )
            ]
        current = self._progress.current
        if current is None or client_id not in current.participants:
            return []
        if self._secure is not None:
            task = self._secure_tasks.get(client_id)
            resend = task is not None and (
                task.kind is not TaskKind.TRAIN or client_id not in current.updates
            )
            return [task] if task is not None and resend else []
        if self._progress.phase is Phase.TRAINING and client_id not in current.updates:
            return [self._train_task(current, client_id)]
        return []

    async def _accept_initial(self, client_id: str, tensors: dict[str, np.ndarray]) -> bool:
        async with self._initial_lock:  # concurrent joiners race to provide the initial model
            return await self._accept_initial_locked(client_id, tensors)

    async def _accept_initial_locked(self, client_id: str, tensors: dict[str, np.ndarray]) -> bool:
        if self._model is not None:
            if spec_of(tensors) != self._spec:
                raise ModelMismatchError(
                    "initial tensors differ in names, dtypes or shapes from the federation's"
                )
            return True
        self._strategy.check_initial(tensors)
        validate_update(tensors, spec_of(tensors))
        glob, clus = self._strategy.split_levels(
            {k: np.array(v, copy=True) for k, v in tensors.items()}
        )
        model = FederationModel(global_tensors=glob, cluster_tensors={}, cluster_template=clus)
        spec = spec_of(tensors)
        spec_json = json.dumps(
            [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in spec]
        )
        # files first (temporary name), then their digests with the spec in one commit, then
        # the rename: the initial model exists for a restart only once all three happened
        prepared = await asyncio.to_thread(self._models.prepare, 0, model)
        try:
            self._state.record_snapshot(0, prepared.files, settings={_SETTING_SPEC: spec_json})
        except BaseException:
            self._models.discard(prepared)
            raise
        await asyncio.to_thread(self._models.publish, prepared)
        self._spec = spec
        self._model = model
        logger.info("initial model from %s: %d tensors", client_id, len(tensors))
        await self._notify()
        return False

    def _round_record(self, current: RoundInProgress, *, status: str) -> RoundRecord:
        return self._reports.round_record(
            current,
            status=status,
            clustering_degraded=self._clustering_degraded,
            aggregation_info={
                **(
                    self._secure.info()
                    if self._secure is not None
                    else self._aggregator.last_info
                    if current.aggregated is not None
                    else {}
                ),
                **current.server_step_info,
            },
        )

    def _draw_participants(self) -> list[str]:
        """Connected clients, Poisson-sampled with rate q when DP-FedAvg samples clients."""
        connected = self._sessions.connected_ids()
        q = self._config.privacy.client_sampling_rate if self._budget is not None else 1.0
        if q >= 1.0:
            return connected
        return [c for c in connected if self._rng.random() < q]

    # ------------------------------------------------------------------ helpers

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait_until(self, predicate: Callable[[], bool], deadline_unix: float | None) -> bool:
        """Wait until ``predicate()`` holds or the deadline passes; returns the predicate."""
        async with self._changed:
            while not predicate():
                if deadline_unix is None:
                    await self._changed.wait()
                    continue
                remaining = deadline_unix - self._clock()
                if remaining <= 0:
                    return False
                try:
                    # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that
                    # arrives just after a notification, so the round task would not stop.
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
                except TimeoutError:
                    return predicate()
            return True

"""Pure conversions between coordinator domain types and protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable

from fedprompt.errors import InvalidArgumentError
from fedprompt.secagg import PublicKeys, UnmaskReply
from fedprompt.server import DEFAULT_MAX_MESSAGE_BYTES
from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_coordinator import domain

#: Largest GetStatus answer: the message limit, less room for gRPC's framing.
STATUS_MAX_BYTES = DEFAULT_MAX_MESSAGE_BYTES - 16 * 1024

_VIEW_TO_PROTO: dict[domain.StatusView, coordinator_pb2.StatusView.ValueType] = {
    domain.StatusView.FULL: coordinator_pb2.STATUS_VIEW_FULL,
    domain.StatusView.SILO: coordinator_pb2.STATUS_VIEW_SILO,
}


def phase_to_proto(phase: domain.Phase) -> common_pb2.RoundPhase.ValueType:
    """Domain phase -> proto enum value."""
    return common_pb2.RoundPhase.Value(f"ROUND_PHASE_{phase.name}")


def join_request_from_proto(msg: coordinator_pb2.JoinRequest) -> domain.JoinRequest:
    """Proto JoinRequest -> domain."""
    caps = msg.capabilities
    return domain.JoinRequest(
        client_id=msg.client_id,
        metadata_json=msg.metadata_json,
        capabilities=domain.Capabilities(
            device=caps.device,
            model_name=caps.model_name,
            model_fingerprint=caps.model_fingerprint,
            trainable_tensors=tuple(caps.trainable_tensors),
            strategy=caps.strategy,
        ),
        num_train_examples=msg.num_train_examples,
    )


def join_result_to_proto(result: domain.JoinResult) -> coordinator_pb2.JoinResponse:
    """Domain JoinResult -> proto JoinResponse."""
    return coordinator_pb2.JoinResponse(
        accepted=True,
        initial_model_requested=result.initial_model_requested,
        current_round=result.current_round,
        total_rounds=result.total_rounds,
        phase=phase_to_proto(result.phase),
        strategy=result.strategy,
    )


def tensor_spec_to_proto(spec: domain.TensorSpec) -> common_pb2.TensorSpec:
    """Domain TensorSpec -> proto."""
    return common_pb2.TensorSpec(name=spec.name, dtype=spec.dtype, shape=list(spec.shape))


def task_to_proto(task: domain.Task) -> coordinator_pb2.Task:
    """Domain Task -> proto Task."""
    msg = coordinator_pb2.Task(
        kind=coordinator_pb2.TaskKind.Value(f"TASK_KIND_{task.kind.name}"),
        round=task.round,
        cluster_id=task.cluster_id,
        deadline_unix_ms=task.deadline_unix_ms,
        expected_update=[tensor_spec_to_proto(s) for s in task.expected_update],
        message=task.message,
        personalize_steps=task.personalize_steps,
    )
    if task.model is not None:
        msg.model.data = task.model.data
        msg.model.sha256 = task.model.sha256
    if task.secure_aggregation is not None:
        msg.secure_aggregation.CopyFrom(secagg_task_to_proto(task.secure_aggregation))
    if task.training is not None:
        msg.training.CopyFrom(
            coordinator_pb2.TrainingSettings(
                local_steps=task.training.local_steps,
                batch_size=task.training.batch_size,
                learning_rate=task.training.learning_rate,
                head_learning_rate=task.training.head_learning_rate,
                contrastive_weight=task.training.contrastive_weight,
                contrastive_temperature=task.training.contrastive_temperature,
                proximal_mu=task.training.proximal_mu,
            )
        )
    return msg


def secagg_task_to_proto(task: domain.SecAggTask) -> coordinator_pb2.SecAggTask:
    """Domain SecAggTask -> proto."""
    msg = coordinator_pb2.SecAggTask(
        group=task.group,
        public_keys=[
            coordinator_pb2.SecAggPublicKeys(member=m, c_pk=k.c_pk, s_pk=k.s_pk)
            for m, k in sorted(task.public_keys.items())
        ],
        ciphertexts=[
            coordinator_pb2.SecAggCiphertext(sender=sender, ciphertext=ct)
            for sender, ct in sorted(task.ciphertexts.items())
        ],
        shared=list(task.shared),
    )
    if task.setup is not None:
        setup = task.setup
        msg.setup.CopyFrom(
            coordinator_pb2.SecAggSetup(
                members=list(setup.members),
                seed=setup.seed,
                degree=setup.degree,
                threshold=setup.threshold,
                min_survivors=setup.min_survivors,
                layout=[
                    common_pb2.TensorSpec(name=n, dtype="U64", shape=list(shape))
                    for n, shape in setup.layout
                ],
                fraction_bits=setup.fraction_bits,
                neighbours=list(task.neighbours),
            )
        )
    if task.encoding is not None:
        enc = task.encoding
        msg.encoding.CopyFrom(
            coordinator_pb2.SecAggEncoding(
                clip_bounds=dict(enc.clip_bounds),
                weighting=enc.weighting,
                weight_cap=enc.weight_cap,
                noise_std=dict(enc.noise_std),
                max_abs=enc.max_abs,
                temperature=enc.temperature,
                global_tensors=list(enc.global_tensors),
                clip_keys=dict(enc.clip_keys),
            )
        )
    if task.unmask is not None:
        msg.dropped.extend(task.unmask.dropped)
        msg.survivors.extend(task.unmask.survivors)
    return msg


def secagg_step_from_proto(msg: coordinator_pb2.SecAggStepRequest) -> domain.SecAggStep:
    """Proto SecAggStepRequest -> domain; a request without a step is refused."""
    which = msg.WhichOneof("step")
    base = (msg.client_id, msg.round, msg.group)
    if which == "keys":
        keys = msg.keys
        if keys.member and keys.member != msg.client_id:
            raise InvalidArgumentError("keys.member must be the caller's client_id")
        return domain.SecAggStep(*base, keys=PublicKeys(c_pk=keys.c_pk, s_pk=keys.s_pk))
    if which == "shares":
        cts: dict[str, bytes] = {}
        for c in msg.shares.ciphertexts:
            if c.sender and c.sender != msg.client_id:
                raise InvalidArgumentError("shares.ciphertexts[].sender must be the caller")
            if c.recipient in cts:
                raise InvalidArgumentError(f"two ciphertexts for {c.recipient!r}")
            cts[c.recipient] = c.ciphertext
        return domain.SecAggStep(*base, ciphertexts=cts)
    if which == "unmask":
        reply = UnmaskReply(
            s_sk_shares=_shares(msg.unmask.s_sk_shares, "s_sk_shares"),
            b_shares=_shares(msg.unmask.b_shares, "b_shares"),
        )
        return domain.SecAggStep(*base, unmask=reply)
    raise InvalidArgumentError("a SecAggStep request carries keys, shares or unmask")


def _shares(shares: Iterable[coordinator_pb2.SecAggShare], field: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for share in shares:
        if share.owner in out:
            raise InvalidArgumentError(f"unmask.{field} names {share.owner!r} twice")
        out[share.owner] = share.share
    return out


def model_stage_from_proto(stage: int) -> domain.ModelStage:
    """Proto ModelStage -> domain; UNSPECIFIED is refused."""
    if stage == coordinator_pb2.MODEL_STAGE_ROUND_START:
        return domain.ModelStage.ROUND_START
    if stage == coordinator_pb2.MODEL_STAGE_AGGREGATED:
        return domain.ModelStage.AGGREGATED
    raise InvalidArgumentError("stage must be MODEL_STAGE_ROUND_START or MODEL_STAGE_AGGREGATED")


def update_kind_from_proto(kind: int) -> domain.UpdateKind:
    """Proto UpdateKind -> domain; UNSPECIFIED is refused."""
    if kind == coordinator_pb2.UPDATE_KIND_INITIAL:
        return domain.UpdateKind.INITIAL
    if kind == coordinator_pb2.UPDATE_KIND_DELTA:
        return domain.UpdateKind.DELTA
    if kind == coordinator_pb2.UPDATE_KIND_MASKED:
        return domain.UpdateKind.MASKED
    raise InvalidArgumentError(
        "kind must be UPDATE_KIND_INITIAL, UPDATE_KIND_DELTA or UPDATE_KIND_MASKED"
    )


def metrics_phase_from_proto(phase: int) -> domain.MetricsPhase:
    """Proto MetricsPhase -> domain; UNSPECIFIED is refused."""
    if phase == coordinator_pb2.METRICS_PHASE_TRAIN:
        return domain.MetricsPhase.TRAIN
    if phase == coordinator_pb2.METRICS_PHASE_EVALUATE:
        return domain.MetricsPhase.EVALUATE
    raise InvalidArgumentError("phase must be METRICS_PHASE_TRAIN or METRICS_PHASE_EVALUATE")


def _round_to_proto(record: domain.RoundRecord) -> coordinator_pb2.RoundSummary:
    return coordinator_pb2.RoundSummary(
        round=record.round,
        status=record.status,
        started_unix=record.started_unix,
        finished_unix=record.finished_unix,
        num_clusters=record.num_clusters,
        clients=[
            coordinator_pb2.ClientRoundRecord(
                client_id=c.client_id,
                cluster_id=c.cluster_id,
                num_examples=c.num_examples,
                update_accepted=c.update_accepted,
                bytes_up=c.bytes_up,
                bytes_down=c.bytes_down,
                train_metrics=c.train_metrics,
                eval_metrics=c.eval_metrics,
            )
            for c in record.clients
        ],
        summary=record.summary,
    )


def round_failure_to_proto(failure: domain.RoundFailure) -> coordinator_pb2.RoundFailure:
    """Domain RoundFailure -> proto."""
    return coordinator_pb2.RoundFailure(
        round=failure.round,
        phase=phase_to_proto(failure.phase),
        reason=failure.reason,
        failed_unix=failure.failed_unix,
        clients_with_updates=list(failure.clients_with_updates),
    )


def status_query_from_proto(
    msg: coordinator_pb2.GetStatusRequest, *, view: domain.StatusView, caller: str
) -> domain.StatusQuery:
    """Proto GetStatusRequest -> domain, with the view the caller's certificate allows.

    Raises
    ------
    InvalidArgumentError
        If ``clients_after`` is longer than any client id can be.
    """
    if len(msg.clients_after) > 128:
        raise InvalidArgumentError("clients_after is longer than any client id")
    return domain.StatusQuery(
        view=view,
        caller=caller,
        clients_after=msg.clients_after,
        max_clients=msg.max_clients,
        first_round_record=(msg.first_round_record if msg.HasField("first_round_record") else None),
        max_round_records=msg.max_round_records,
    )


def status_to_proto(
    status: domain.FederationStatus,
    *,
    latest_rounds: bool = True,
    max_bytes: int = STATUS_MAX_BYTES,
) -> coordinator_pb2.GetStatusResponse:
    """Domain FederationStatus -> proto GetStatusResponse of at most ``max_bytes``.

    Every client field is bounded and a page holds a bounded number of clients and rounds;
    when a page is larger still (many maximal metrics, many clusters), round records are
    left out, the ones farthest from what was asked first (the oldest of a page of the
    latest rounds, the newest of a page from ``first_round_record``), then clients from the
    end of the page; ``truncated`` says so and the paging fields point at what was left out.

    Parameters
    ----------
    status
        The page, as the domain made it.
    latest_rounds
        Whether the page holds the latest rounds (no ``first_round_record`` was asked).
    max_bytes
        The largest serialized size of the answer.
    """
    msg = coordinator_pb2.GetStatusResponse(
        current_round=status.current_round,
        total_rounds=status.total_rounds,
        completed_rounds=status.completed_rounds,
        phase=phase_to_proto(status.phase),
        clients=[
            coordinator_pb2.ClientInfo(
                client_id=c.client_id,
                metadata_json=c.metadata_json,
                cluster_id=c.cluster_id,
                connected=c.connected,
                num_train_examples=c.num_train_examples,
                device=c.device,
            )
            for c in status.clients
        ],
        rounds=[_round_to_proto(r) for r in status.rounds],
        setup_bytes_up=status.setup_bytes_up,
        setup_bytes_down=status.setup_bytes_down,
        model_fingerprint=status.model_fingerprint,
        strategy=status.strategy,
        epsilon=status.epsilon,
        delta=status.delta,
        epsilon_by_level=status.epsilon_by_level,
        stop_reason=status.stop_reason,
        view=_VIEW_TO_PROTO[status.view],
        clients_total=status.clients_total,
        clients_connected=status.clients_connected,
        next_clients_after=status.next_clients_after,
        round_records_total=status.round_records_total,
        first_round_record=status.first_round_record,
        truncated=status.truncated,
    )
    if status.round_failure is not None:
        msg.round_failure.CopyFrom(round_failure_to_proto(status.round_failure))
    _fit(msg, max_bytes, oldest_out_first=latest_rounds)
    return msg


def _fit(msg: coordinator_pb2.GetStatusResponse, max_bytes: int, *, oldest_out_first: bool) -> None:
    """Leave out round records, then clients, until ``msg`` is at most ``max_bytes``."""
    if msg.ByteSize() <= max_bytes:
        return
    msg.truncated = True  # counted too: 3 bytes on the wire
    excess = msg.ByteSize() - max_bytes
    sizes = [_element_size(r.ByteSize()) for r in msg.rounds]
    if not oldest_out_first:
        sizes.reverse()
    drop = 0
    while drop < len(sizes) and excess > 0:
        excess -= sizes[drop]
        drop += 1
    if oldest_out_first:
        del msg.rounds[:drop]
        msg.first_round_record += drop  # its varint may have grown: checked below
    elif drop:
        del msg.rounds[-drop:]
    while msg.ByteSize() > max_bytes and msg.rounds:
        if oldest_out_first:
            del msg.rounds[0]
            msg.first_round_record += 1
        else:
            del msg.rounds[-1]
    # one client's record alone is bounded far below the limit: the page keeps at least one
    while msg.ByteSize() > max_bytes and len(msg.clients) > 1:
        gone = msg.clients.pop()
        msg.setup_bytes_up.pop(gone.client_id, None)
        msg.setup_bytes_down.pop(gone.client_id, None)
        msg.next_clients_after = msg.clients[-1].client_id


def _element_size(size: int) -> int:
    """Bytes a message of ``size`` bytes takes as an element of a repeated field (< 2^4 tags)."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size

"""Where the round state machine stands, and the one check of who may act in a round.

:class:`RoundProgress` is written by :class:`~fedprompt_coordinator.federation.Federation`
alone (its phase, the round in progress, the last completed round) and read by the rooms
around it: upload intake, round reports. :meth:`RoundProgress.require_participant` is the
round-participation check of every client call that addresses a round (model download,
upload, metrics report); each :class:`RoundAction` says in which phase it is allowed and
how a closed round refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedprompt.errors import NotParticipantError, WrongRoundError
from fedprompt_coordinator.domain import ClientUpdate, FederationModel, Phase


@dataclass
class RoundInProgress:
    """Everything a round accumulates before its checkpoint."""

    round: int
    started_unix: float
    participants: dict[str, int]
    deadline_unix: float = 0.0
    updates: dict[str, ClientUpdate] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregated: FederationModel | None = None
    aggregation_seconds: float = 0.0
    #: Figures of the server optimizer's step (which ran, η, update norms), for the summary.
    server_step_info: dict[str, float] = field(default_factory=dict)
    #: Wall seconds of the phases (training, evaluation, checkpoint), for the round summary.
    phase_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundAction:
    """Something a participant does in the round in progress.

    Attributes
    ----------
    refusal
        Message of the ``WrongRoundError`` when the round is not open for it; formatted with
        ``round`` (the round asked for), ``current`` (the current round) and ``phase``.
    phase
        The only phase the action is allowed in (None: any phase of an open round).
    """

    refusal: str
    phase: Phase | None = None


#: Downloading the round-start or aggregated model of the round.
FETCH_MODEL = RoundAction("round {round} is not open; the current round is {current}")
#: Uploading the round's update (training only).
UPLOAD_UPDATE = RoundAction(
    "round {round} is not accepting updates (current round {current}, phase {phase})",
    Phase.TRAINING,
)
#: Reporting training or evaluation metrics of the round.
REPORT_METRICS = RoundAction(
    "round {round} is not open for metrics; the current round is {current}"
)


@dataclass
class RoundProgress:
    """The round state machine's phase, its round in progress and its last completed round."""

    phase: Phase
    completed: int
    current: RoundInProgress | None = None

    @property
    def current_round(self) -> int:
        """The round in progress, else the last completed one."""
        return self.current.round if self.current is not None else self.completed

    def require_participant(
        self, client_id: str, round_id: int, action: RoundAction
    ) -> RoundInProgress:
        """The round in progress, if ``round_id`` is open for ``action`` by ``client_id``.

        Raises
        ------
        WrongRoundError
            When ``round_id`` is not the round in progress, or the round is in a phase the
            action is not allowed in (``FAILED_PRECONDITION``).
        NotParticipantError
            When the client was not drawn into the round (``FAILED_PRECONDITION``).
        """
        current = self.current
        if (
            current is None
            or current.round != round_id
            or (action.phase is not None and self.phase is not action.phase)
        ):
            raise WrongRoundError(
                action.refusal.format(
                    round=round_id, current=self.current_round, phase=self.phase.name
                )
            )
        if client_id not in current.participants:
            raise NotParticipantError(
                f"client {client_id!r} is not a participant of round {round_id}"
            )
        return current

"""The round-participation check shared by model downloads, uploads and metrics reports."""

from __future__ import annotations

import grpc
import pytest

from fedprompt.errors import NotParticipantError, WrongRoundError
from fedprompt_coordinator.domain import Phase
from fedprompt_coordinator.round_progress import (
    FETCH_MODEL,
    REPORT_METRICS,
    UPLOAD_UPDATE,
    RoundAction,
    RoundInProgress,
    RoundProgress,
)

ACTIONS = [FETCH_MODEL, UPLOAD_UPDATE, REPORT_METRICS]


def _open(phase: Phase = Phase.TRAINING) -> RoundProgress:
    current = RoundInProgress(round=3, started_unix=0.0, participants={"a": 0, "b": 1})
    return RoundProgress(phase=phase, completed=2, current=current)


def test_the_current_round_is_the_open_one_else_the_last_completed() -> None:
    assert _open().current_round == 3
    assert RoundProgress(phase=Phase.WAITING_FOR_QUORUM, completed=2).current_round == 2


@pytest.mark.parametrize("action", ACTIONS)
def test_a_participant_of_the_open_round_gets_it(action: RoundAction) -> None:
    progress = _open()
    assert progress.require_participant("b", 3, action) is progress.current


@pytest.mark.parametrize("action", ACTIONS)
def test_a_non_participant_is_refused_with_failed_precondition(action: RoundAction) -> None:
    with pytest.raises(NotParticipantError, match="'late' is not a participant of round 3") as info:
        _open().require_participant("late", 3, action)
    assert info.value.status_code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (FETCH_MODEL, "round 4 is not open; the current round is 3"),
        (UPLOAD_UPDATE, "round 4 is not accepting updates (current round 3, phase TRAINING)"),
        (REPORT_METRICS, "round 4 is not open for metrics; the current round is 3"),
    ],
)
def test_another_round_is_refused_with_failed_precondition(
    action: RoundAction, message: str
) -> None:
    with pytest.raises(WrongRoundError) as info:
        _open().require_participant("a", 4, action)
    assert info.value.message == message
    assert info.value.status_code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("action", ACTIONS)
def test_no_round_in_progress_refuses_every_action(action: RoundAction) -> None:
    progress = RoundProgress(phase=Phase.WAITING_FOR_QUORUM, completed=2)
    with pytest.raises(WrongRoundError, match="round 3 is not"):
        progress.require_participant("a", 3, action)


def test_uploads_are_accepted_in_training_only_downloads_and_metrics_later_too() -> None:
    progress = _open(Phase.EVALUATION)
    with pytest.raises(WrongRoundError, match=r"not accepting updates \(.*phase EVALUATION\)"):
        progress.require_participant("a", 3, UPLOAD_UPDATE)
    assert progress.require_participant("a", 3, FETCH_MODEL) is progress.current
    assert progress.require_participant("a", 3, REPORT_METRICS) is progress.current

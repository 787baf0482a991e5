"""The verdicts of ``make compose-e2e`` (docker/compose_checks.py) fail where they must.

The e2e needs a Docker engine and a quarter of an hour; its checks are pure functions of
what it observed, so each is shown here to pass a good run and to fail each bad one.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from fedprompt.v1 import coordinator_pb2

from .conftest import docker_module

KILLED_AT = 1000.0


@pytest.fixture(scope="module")
def checks() -> ModuleType:
    return docker_module("compose_checks")


def record(
    n: int, start: float, end: float, clients: tuple[str, ...], status: str = "completed"
) -> Any:
    r = coordinator_pb2.RoundSummary(round=n, status=status, started_unix=start, finished_unix=end)
    for cid in clients:
        r.clients.add(client_id=cid, update_accepted=True)
    return r


def run_status(*records: Any, completed: int = 3) -> coordinator_pb2.GetStatusResponse:
    status = coordinator_pb2.GetStatusResponse(completed_rounds=completed, total_rounds=3)
    status.rounds.extend(records)
    return status


ALL = ("clinic-0", "clinic-1", "clinic-2")
TWO = ("clinic-0", "clinic-1")


def good_run() -> coordinator_pb2.GetStatusResponse:
    """Client clinic-2 killed in round 2, the coordinator killed in round 3 at t=1000."""
    return run_status(
        record(1, 100, 200, ALL),
        record(2, 210, 400, (*TWO, "clinic-2")),
        record(3, 1030, 1100, TWO),  # round 3 open at the kill: run again after it
    )


def test_a_good_run_passes_every_check(checks: ModuleType) -> None:
    status = good_run()
    client_kill = checks.ClientKill("client-2", "clinic-2", 2)
    coordinator_kill = checks.CoordinatorKill(round=3, completed_before=2, killed_unix=KILLED_AT)
    assert checks.check_rounds_once(status, 3) == []
    assert checks.check_client_kill(status, client_kill, 3, 2) == []
    assert checks.check_coordinator_resume(status, coordinator_kill, 3) == []
    assert checks.check_final_model([2, 3], 3) == []


def test_a_repeated_or_missing_round_fails(checks: ModuleType) -> None:
    repeated = run_status(
        record(1, 100, 200, ALL),
        record(1, 1010, 1020, ALL),
        record(2, 1, 2, ALL),
        record(3, 1, 2, ALL),
    )
    assert "rounds completed more than once: 1 (2x)" in checks.check_rounds_once(repeated, 3)
    missing = run_status(record(1, 1, 2, ALL), record(3, 1, 2, ALL), completed=2)
    found = checks.check_rounds_once(missing, 3)
    assert "rounds never completed: 2" in found
    assert any("status says 2 completed rounds" in f for f in found)
    # a failed attempt of a round is not a completion
    failed = run_status(
        record(1, 1, 2, ALL),
        record(2, 3, 4, ALL, status="failed: 1 of 3 updates"),
        record(3, 5, 6, ALL),
    )
    assert "rounds never completed: 2" in checks.check_rounds_once(failed, 3)


def test_a_coordinator_that_lost_its_state_fails(checks: ModuleType) -> None:
    kill = checks.CoordinatorKill(round=3, completed_before=2, killed_unix=KILLED_AT)
    rerun = run_status(
        record(1, 1010, 1020, ALL), record(2, 1030, 1040, ALL), record(3, 1050, 1060, ALL)
    )
    found = checks.check_coordinator_resume(rerun, kill, 3)
    assert len(found) == 2 and all("ran it again (state lost)" in f for f in found)


def test_a_kill_that_hit_no_open_round_fails(checks: ModuleType) -> None:
    kill = checks.CoordinatorKill(round=3, completed_before=2, killed_unix=KILLED_AT)
    early = run_status(record(1, 1, 2, ALL), record(2, 3, 4, ALL), record(3, 900, 990, ALL))
    (found,) = checks.check_coordinator_resume(early, kill, 3)
    assert "started before it" in found
    first = checks.CoordinatorKill(round=1, completed_before=0, killed_unix=KILLED_AT)
    assert any(
        "before any round completed" in f for f in checks.check_coordinator_resume(early, first, 1)
    )
    (never,) = checks.check_coordinator_resume(early, None, 3)
    assert "never killed" in never


def test_a_killed_client_drawn_again_or_no_round_after_fails(checks: ModuleType) -> None:
    kill = checks.ClientKill("client-2", "clinic-2", 2)
    drawn = run_status(record(1, 1, 2, ALL), record(2, 3, 4, ALL), record(3, 5, 6, ALL))
    assert checks.check_client_kill(drawn, kill, 3, 2) == ["round 3 still drew the killed clinic-2"]
    stuck = run_status(record(1, 1, 2, ALL), record(2, 3, 4, ALL), completed=2)
    (found,) = checks.check_client_kill(stuck, kill, 3, 2)
    assert "no round completed after client-2" in found
    (never,) = checks.check_client_kill(stuck, None, 3, 2)
    assert "round 2 was never seen training" in never


def test_the_final_model_must_be_of_the_last_round(checks: ModuleType) -> None:
    paths = ["/var/lib/fedprompt/state/models/round-000002", "/x/round-000003", "/x/.tmp-round-9"]
    assert checks.snapshot_rounds(paths) == [2, 3]
    assert checks.check_final_model([1, 2], 3) == ["the final model snapshot is of round 2, not 3"]
    assert "no model snapshot" in checks.check_final_model([], 3)[0]


OWN = "/etc/fedprompt/tls/tls.key"


def isolation(checks: ModuleType, **overrides: Any) -> list[str]:
    view: dict[str, Any] = {
        "key_files": [OWN],
        "tls_volumes": ["tls-clinic-0"],
        "own_key_readable": True,
        "own_cert_name": "clinic-0",
    }
    view.update(overrides)
    found: list[str] = checks.check_key_isolation("client-0", "clinic-0", **view)
    return found


def test_a_container_that_sees_only_its_own_key_passes(checks: ModuleType) -> None:
    assert isolation(checks) == []
    assert (
        checks.check_key_isolation(
            "prometheus",
            None,
            key_files=[],
            tls_volumes=[],
            own_key_readable=False,
            own_cert_name=None,
        )
        == []
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"key_files": [OWN, "/ca/ca.key"]}, "can see the CA key"),
        ({"tls_volumes": ["tls-clinic-0", "tls-ca"]}, "can see the CA key"),
        ({"key_files": [OWN, "/identities/clinic-1/tls.key"]}, "not its own"),
        ({"tls_volumes": ["tls-clinic-0", "tls-clinic-1"]}, "mounts the identity volumes"),
        ({"tls_volumes": []}, "mounts the identity volumes"),
        ({"own_key_readable": False}, "cannot read its own key"),
        ({"own_cert_name": "clinic-1"}, "certificate names 'clinic-1'"),
    ],
)
def test_a_container_that_sees_more_or_less_fails(
    checks: ModuleType, overrides: dict[str, Any], message: str
) -> None:
    assert any(message in f for f in isolation(checks, **overrides))


def test_a_service_without_identity_must_see_no_key(checks: ModuleType) -> None:
    found = checks.check_key_isolation(
        "prometheus",
        None,
        key_files=[OWN],
        tls_volumes=["tls-clinic-0"],
        own_key_readable=True,
        own_cert_name="clinic-0",
    )
    assert len(found) == 2

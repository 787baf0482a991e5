"""What ``make compose-e2e`` requires of a run, as pure functions of what it observed.

Each check returns the failures it found (an empty list passes), worded so that the
e2e's report says why without a log to read: the round records after a client and a
coordinator kill, the final model's round, and what each container can see of the
federation's private keys.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedprompt.v1 import coordinator_pb2

#: Where a service of the mTLS overlay finds its own identity (its volume, read-only).
TLS_DIR = "/etc/fedprompt/tls"
OWN_KEY = f"{TLS_DIR}/tls.key"
#: The compose volume of each identity is ``tls-<identity>``; the CA's is ``tls-ca``.
CA_VOLUME = "tls-ca"
#: The identity each service of the mTLS overlay holds: its certificate's CN and its volume
#: (a service not named here, such as Prometheus, holds none).
SERVICE_IDENTITIES: dict[str, str] = {
    "coordinator": "coordinator",
    "clusterer": "clusterer",
    "client-0": "clinic-0",
    "client-1": "clinic-1",
    "client-2": "clinic-2",
    "client-gpu": "clinic-3",
}
_SNAPSHOT = re.compile(r"(?:^|/)round-(\d{6})$")


@dataclass(frozen=True)
class ClientKill:
    """A client container killed while a round trained."""

    service: str
    client_id: str
    round: int


@dataclass(frozen=True)
class CoordinatorKill:
    """The coordinator's process killed (SIGKILL) while a round was open.

    Attributes
    ----------
    round
        The round in progress at the kill.
    completed_before
        Rounds completed when it was killed.
    killed_unix
        Wall clock just before the signal was sent.
    """

    round: int
    completed_before: int
    killed_unix: float


def _completed(status: coordinator_pb2.GetStatusResponse) -> list[coordinator_pb2.RoundSummary]:
    return [r for r in status.rounds if r.status == "completed"]


def check_rounds_once(status: coordinator_pb2.GetStatusResponse, rounds: int) -> list[str]:
    """Rounds 1..``rounds`` each completed exactly once, none beyond, and the status agrees."""
    failures = []
    counts = Counter(r.round for r in _completed(status))
    repeated = sorted(n for n, c in counts.items() if c > 1)
    missing = sorted(set(range(1, rounds + 1)) - set(counts))
    beyond = sorted(n for n in counts if not 1 <= n <= rounds)
    if repeated:
        failures.append(
            "rounds completed more than once: " + ", ".join(f"{n} ({counts[n]}x)" for n in repeated)
        )
    if missing:
        failures.append(f"rounds never completed: {', '.join(map(str, missing))}")
    if beyond:
        failures.append(f"completed rounds beyond --rounds={rounds}: {beyond}")
    if status.completed_rounds != rounds:
        failures.append(f"the status says {status.completed_rounds} completed rounds, not {rounds}")
    return failures


def check_client_kill(
    status: coordinator_pb2.GetStatusResponse, kill: ClientKill | None, rounds: int, kill_round: int
) -> list[str]:
    """The client was killed while its round trained, and no later round drew it again."""
    if kill is None:
        return [f"no client was killed (round {kill_round} was never seen training)"]
    after = [r for r in _completed(status) if r.round > kill.round]
    failures = []
    if rounds > kill.round and not after:
        failures.append(f"no round completed after {kill.service} was killed in round {kill.round}")
    for r in after:
        if kill.client_id in {c.client_id for c in r.clients}:
            failures.append(f"round {r.round} still drew the killed {kill.client_id}")
    return failures


def check_coordinator_resume(
    status: coordinator_pb2.GetStatusResponse, kill: CoordinatorKill | None, kill_round: int
) -> list[str]:
    """The coordinator was killed in an open round after one completed, and resumed.

    Resumed from its volume: every round completed before the kill keeps its record (it
    finished before the kill, so it was not run again), and the round open at the kill was
    run again after the restart (its completed record started after the kill).
    """
    if kill is None:
        return [f"the coordinator was never killed (round {kill_round} was never seen training)"]
    failures = []
    if kill.completed_before < 1:
        failures.append(f"the coordinator was killed before any round completed ({kill})")
    done = {r.round: r for r in _completed(status)}
    for n in range(1, kill.completed_before + 1):
        record = done.get(n)
        if record is not None and record.finished_unix > kill.killed_unix:
            failures.append(
                f"round {n} was completed before the coordinator kill but its record "
                f"finished {record.finished_unix - kill.killed_unix:.1f} s after it: "
                "the restarted coordinator ran it again (state lost)"
            )
    retried = done.get(kill.round)
    if retried is not None and retried.started_unix < kill.killed_unix:
        failures.append(
            f"round {kill.round}, open at the kill, has a completed record that started "
            f"before it: the kill did not hit an open round, or the round was not retried"
        )
    return failures


def snapshot_rounds(paths: Iterable[str]) -> list[int]:
    """The round numbers of the coordinator's model snapshot folders (``.../round-000003``)."""
    found = (_SNAPSHOT.search(p.strip()) for p in paths)
    return sorted(int(m.group(1)) for m in found if m)


def check_final_model(snapshots: Sequence[int], rounds: int) -> list[str]:
    """The coordinator's latest model snapshot is the one of round ``rounds``."""
    if not snapshots:
        return ["the coordinator's state volume holds no model snapshot"]
    if max(snapshots) != rounds:
        return [f"the final model snapshot is of round {max(snapshots)}, not {rounds}"]
    return []


def check_key_isolation(
    service: str,
    identity: str | None,
    *,
    key_files: Sequence[str],
    tls_volumes: Sequence[str],
    own_key_readable: bool,
    own_cert_name: str | None,
) -> list[str]:
    """What one running container can see of the federation's keys.

    Parameters
    ----------
    service
        The compose service.
    identity
        The identity the service holds (``coordinator``, ``clinic-0``, ...), or None for
        a service that holds none (Prometheus).
    key_files
        Every private key file the container can see (by name ``*.key`` or by a PEM
        ``PRIVATE KEY`` block), as absolute paths.
    tls_volumes
        The ``tls-*`` volumes mounted into it (project prefix removed).
    own_key_readable
        Whether the service's own user can read ``/etc/fedprompt/tls/tls.key``.
    own_cert_name
        The subject CN of ``/etc/fedprompt/tls/tls.crt`` in the container (None if absent).
    """
    failures = []
    seen = sorted(set(key_files))
    if any(p.rsplit("/", 1)[-1] == "ca.key" for p in seen) or CA_VOLUME in tls_volumes:
        failures.append(f"{service} can see the CA key (ca.key or the {CA_VOLUME} volume)")
    expected_keys = [OWN_KEY] if identity else []
    others = [p for p in seen if p not in expected_keys]
    if others:
        failures.append(f"{service} can see private keys that are not its own: {others}")
    expected_volumes = [f"tls-{identity}"] if identity else []
    if sorted(tls_volumes) != expected_volumes:
        failures.append(
            f"{service} mounts the identity volumes {sorted(tls_volumes)}, "
            f"expected {expected_volumes}"
        )
    if identity is not None:
        if not own_key_readable:
            failures.append(f"{service} cannot read its own key {OWN_KEY} as its own user")
        if own_cert_name != identity:
            failures.append(
                f"{service}'s certificate names {own_cert_name!r}, expected {identity!r}"
            )
    return failures

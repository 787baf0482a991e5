"""Ctrl-C handling of the launcher's children (each case runs in its own interpreter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

#: A launcher that starts one child (``sleep``), writes its PID, waits under the guard, and
#: after the interrupt either cleans up normally or is stuck (a lock or C call that never
#: returns, stood in for by a loop that swallows every further interrupt).
LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fedprompt_cli.processes import Child, interrupt_guard, stop_all

    stuck = sys.argv[2] == "stuck"
    child = Child("sleeper", ["sleep", "600"], Path(sys.argv[1]) / "sleeper.log")
    child.start()
    children = [child]
    (Path(sys.argv[1]) / "pid").write_text(str(child.pid))
    try:
        with interrupt_guard(children, "interrupted: stopping", hard_exit_after_s=1.0):
            while True:
                time.sleep(0.05)
    except KeyboardInterrupt:
        if stuck:
            while True:
                try:
                    time.sleep(60)
                except KeyboardInterrupt:
                    pass
        stop_all(children)
        sys.exit(7)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize(("mode", "code"), [("clean", 7), ("stuck", 130)])
def test_an_interrupted_launcher_says_so_stops_its_children_and_exits(
    tmp_path: Path, mode: str, code: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pid").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        child_pid = int((tmp_path / "pid").read_text())
        assert _alive(child_pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "interrupted: stopping" in err
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)
    if mode == "stuck":
        assert "children killed, exiting" in err

"""``fedprompt up`` end to end: results, a failing child, and Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedprompt_cli.processes import console_script

pytestmark = pytest.mark.integration

TINY = ["--local-steps", "2", "--batch-size", "8", "--max-length", "32", "--device", "cpu"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_up_runs_rounds_and_prints_the_results(tmp_path: Path, silos_root: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [console_script("fedprompt"), "up", "--clients", "3", "--rounds", "1", "--data-root",
         str(silos_root), "--run-dir", str(run_dir), *TINY],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-client results" in proc.stdout
    assert "bytes on the wire" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed_rounds"] == 1
    assert len(summary["clients"]) == 3
    for client in summary["clients"].values():
        assert 0.0 <= client["accuracy_after"] <= 1.0
        assert client["bytes_up_per_round"] > 0 and client["bytes_down_per_round"] > 0
    pids = json.loads((run_dir / "pids.json").read_text())
    assert len(pids) == 5
    assert not any(_alive(pid) for pid in pids.values())
    # mutual TLS by default, with certificates made for the run
    assert "mutual TLS" in proc.stdout
    assert {p.name for p in (run_dir / "certs").iterdir()} >= {"ca.crt", "coordinator.key"}
    assert "(mutual TLS)" in (run_dir / "logs" / "coordinator.log").read_text()


def test_up_refuses_a_broken_silo_before_starting_anything(
    tmp_path: Path, silos_root: Path
) -> None:
    data = tmp_path / "silos"
    shutil.copytree(silos_root, data)
    broken = sorted(p for p in data.iterdir() if p.is_dir())[1]
    (broken / "train.jsonl").write_text('{"text": "", "label": "Pain"}\n')
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [console_script("fedprompt"), "up", "--clients", "3", "--rounds", "1", "--data-root",
         str(data), "--run-dir", str(run_dir), "--insecure", *TINY],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())  # rich may wrap lines anywhere
    assert broken.name in out and "empty" in out and "text" in out
    assert not (run_dir / "pids.json").exists()  # no process was started


def test_up_fails_loudly_when_a_client_fails(tmp_path: Path, silos_root: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [console_script("fedprompt"), "up", "--clients", "3", "--rounds", "50", "--data-root",
         str(silos_root), "--run-dir", str(run_dir), "--insecure", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "pids.json").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = json.loads((run_dir / "pids.json").read_text())
        victim = sorted(name for name in pids if name not in ("coordinator", "clusterer"))[0]
        os.kill(pids[victim], signal.SIGKILL)  # a process this test's run started
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    # --insecure: plaintext, said loudly, no certificates made
    assert "--insecure" in out and not (run_dir / "certs").exists()
    assert "WITHOUT TLS" in (run_dir / "logs" / "coordinator.log").read_text()
    assert victim in out and "exited with code -9" in out
    assert not any(_alive(pid) for pid in pids.values())


def test_ctrl_c_stops_every_process(tmp_path: Path, silos_root: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [console_script("fedprompt"), "up", "--clients", "3", "--rounds", "50", "--data-root",
         str(silos_root), "--run-dir", str(run_dir), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "pids.json").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = json.loads((run_dir / "pids.json").read_text())
        assert all(_alive(pid) for pid in pids.values())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not any(_alive(pid) for pid in pids.values())


def test_hosted_agents_train_together_and_every_process_reports_its_peak_memory(
    tmp_path: Path, silos_root: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [console_script("fedprompt"), "up", "--clients", "3", "--clients-per-process", "3",
         "--rounds", "2", "--data-root", str(silos_root), "--run-dir", str(run_dir), *TINY],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed_rounds"] == 2 and len(summary["clients"]) == 3
    for client in summary["clients"].values():  # every silo trained and was evaluated
        assert 0.0 <= client["accuracy_after"] <= 1.0
        assert all(r["train"]["train_steps"] == 2.0 for r in client["rounds"].values())
    host_log = (run_dir / "logs" / "client-host-0.log").read_text()
    assert "trained 3 silos together" in host_log  # one shared loop (per round, unless a task lags)
    assert "loaded encoder backbone" in host_log and host_log.count("loaded encoder") == 1
    peaks = summary["peak_rss_bytes"]
    assert set(peaks) == {"client-host-0", "coordinator", "clusterer"}
    assert all(100 * 2**20 < peak < 16 * 2**30 for peak in peaks.values())
    assert "peak memory per process" in proc.stdout

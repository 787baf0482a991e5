"""``fedprompt bench --tiny`` end to end: real federations, then the report."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedprompt_cli.processes import console_script

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1500)  # five federations; ~3 min on an idle 2-core machine
def test_bench_tiny_writes_the_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [console_script("fedprompt"), "bench", "--tiny", "--reports", str(tmp_path), "--tag", "t"],
        capture_output=True, text=True, timeout=1400, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "t"
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "## What the numbers say" in report
    for png in (
        "accuracy_per_round",
        "accuracy_vs_bytes",
        "privacy_utility",
        "per_client_accuracy",
    ):
        assert (out / f"{png}.png").stat().st_size > 1000
    plan = json.loads((out / "plan.json").read_text())
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == plan["total_runs"]
    for row in rows:
        assert 0.0 <= float(row["accuracy_mean"]) <= 1.0
        assert float(row["accuracy_worst"]) <= float(row["accuracy_mean"])
        if row["variant"] == "local":
            assert float(row["bytes_up_per_client_round"]) < 4096  # nothing but messages travel
        else:  # prompt deltas were counted on the wire
            assert float(row["bytes_up_per_client_round"]) > 10_000
        if "dp-fedavg" in row["variant"]:
            assert 0.0 < float(row["epsilon"]) <= 4.0 + 1e-6
    seeds = {row["seed"] for row in rows}
    assert seeds == {str(s) for s in plan["seeds"]}
    # a second call finds every run done and only rewrites the report
    again = subprocess.run(
        [console_script("fedprompt"), "bench", "--tiny", "--reports", str(tmp_path), "--tag", "t"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:]
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == len(rows)


@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_bench_without_retrying_the_run(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [console_script("fedprompt"), "bench", "--tiny", "--reports", str(tmp_path), "--tag", "i"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "i" / "work").glob("*/pids.json")):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = json.loads(next((tmp_path / "i" / "work").glob("*/pids.json")).read_text())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "bench interrupted" in out and "retrying" not in out
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # gone: fine
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            assert state == "Z", f"child {pid} still running"


@pytest.mark.timeout(900)  # two federations of 3 silos, one round each: ~1-2 min when idle
def test_bench_on_the_users_own_silos(tmp_path: Path) -> None:
    silos = tmp_path / "my-silos"
    made = subprocess.run(
        [console_script("fedprompt-make-silos"), "--num-silos", "3", "--seed", "5",
         "--out", str(silos)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    proc = subprocess.run(
        [console_script("fedprompt"), "bench", "--tiny", "--data-root", str(silos),
         "--seeds", "0", "--skip-privacy", "--reports", str(tmp_path), "--tag", "own"],
        capture_output=True, text=True, timeout=850, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 text silos (task text)" in proc.stdout
    out = tmp_path / "own"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["data_root"] == str(silos) and plan["clients"] == 3
    assert not (out / "work" / "silos").exists()  # nothing was generated: the user's silos ran
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert sorted(r["variant"] for r in rows) == ["fpl", "local"]
    report = (out / "report.md").read_text()
    assert f"the silo folders in `{silos}`" in report
    assert "## Paired comparisons" in report and "| text | local | mean accuracy |" in report
    head = json.loads((out / "headline.json").read_text())
    assert {c["verdict"] for c in head["paired"]} <= {"beats", "loses", "ties", "cannot tell"}
    assert all(c["client_pairs"] == 3 for c in head["paired"])

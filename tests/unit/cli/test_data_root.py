"""``--data-root``: the user's silo folders are checked before anything starts.

``fedprompt bench --data-root`` and ``fedprompt up --data-root`` exit 2 with every
problem of every silo and start no process; good silos give the plan their task and size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedprompt_cli.bench as bench_module
import fedprompt_cli.up as up_module
from fedprompt_cli.__main__ import main
from fedprompt_cli.bench import _make_silos, plan_with_overrides
from fedprompt_cli.bench_plan import RunSpec, full_plan, tiny_plan


def _text_silo(root: Path, name: str, labels: tuple[str, ...] = ("a", "b")) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for split, n in (("train", 16), ("val", 4), ("test", 4)):
        rows = [{"text": f"note {i}", "label": labels[i % len(labels)]} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metadata.json").write_text(json.dumps({"region": name}))
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    return folder


def _image_silo(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for split, n in (("train", 16), ("val", 4), ("test", 4)):
        np.savez_compressed(
            folder / f"{split}.npz",
            images=np.zeros((n, 8, 8), np.uint8),
            labels=np.arange(n) % 2,
        )
    (folder / "metadata.json").write_text(json.dumps({"site": name}))
    (folder / "labels.json").write_text(json.dumps(["0", "1"]))
    return folder


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way a run could start records itself instead (the list must stay empty)."""
    started: list[str] = []

    def _refuse(name: str) -> Any:
        def _call(*args: Any, **kwargs: Any) -> int:
            started.append(name)
            return 0

        return _call

    monkeypatch.setattr(bench_module, "run_bench", _refuse("run_bench"))
    monkeypatch.setattr("fedprompt_cli.__main__.run_up", _refuse("run_up"))
    monkeypatch.setattr(up_module.Child, "start", _refuse("Child.start"))
    monkeypatch.setattr(bench_module.subprocess, "run", _refuse("subprocess.run"))
    return started


def _bad_root(tmp_path: Path) -> Path:
    root = tmp_path / "silos"
    _text_silo(root, "clinic-a")
    both = _text_silo(root, "clinic-b")
    (both / "train.csv").write_text("text,label\nhello,a\n")  # today: a client exits mid-run
    broken = _text_silo(root, "clinic-c")
    (broken / "metadata.json").unlink()
    (broken / "test.jsonl").write_text('{"text": "x", "label": "zebra"}\n')
    return root


def test_bench_refuses_bad_silos_before_starting_anything(
    tmp_path: Path, nothing_starts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    code = main(
        ["bench", "--tiny", "--data-root", str(_bad_root(tmp_path)), "--reports", str(reports)]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert nothing_starts == [] and not reports.exists()
    assert "3 problem(s) in 2 silo folder(s)" in out and "nothing was started" in out
    assert "clinic-b/train.jsonl: both train.jsonl and train.csv exist" in out
    assert "clinic-c/metadata.json: missing -> fix: add metadata.json" in out
    assert "clinic-c/test.jsonl: labels not in labels.json: 'zebra'" in out


def test_up_refuses_bad_silos_and_too_few_silos(
    tmp_path: Path, nothing_starts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad_root(tmp_path)
    assert main(["up", "--data-root", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    good = tmp_path / "good"
    for name in ("a", "b"):
        _text_silo(good, name)
    assert main(["up", "--data-root", str(good), "--clients", "3"]) == 2
    out = capsys.readouterr().out
    assert "both train.jsonl and train.csv" in out and "2 silo folders, 3 needed" in out
    assert nothing_starts == [] and not (tmp_path / "run").exists()


def test_up_reads_the_task_from_the_silos(
    tmp_path: Path, nothing_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(
        "fedprompt_cli.__main__.run_up", lambda options, console: seen.append(options) or 0
    )
    for name in ("a", "b"):
        _image_silo(tmp_path / "img", name)
    assert main(["up", "--data-root", str(tmp_path / "img"), "--clients", "2"]) == 0
    assert seen[0].task == "vision" and seen[0].data_root == tmp_path / "img"


def test_bench_runs_the_plan_on_good_silos(
    tmp_path: Path, nothing_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(
        bench_module, "run_bench", lambda plan, out, console, **kw: seen.append(plan) or 0
    )
    for name in ("a", "b", "c"):
        _text_silo(tmp_path / "silos", name)
    assert main(["bench", "--data-root", str(tmp_path / "silos"), "--reports", str(tmp_path)]) == 0
    plan = seen[0]
    assert plan.data_root == tmp_path / "silos" and list(plan.tasks) == ["text"]
    assert plan.clients == 3 and plan.describe()["data_root"] == str(tmp_path / "silos")
    # every run of every seed reads the user's folders: nothing is generated
    spec = RunSpec("eval", "text", "fpl", 2, 0.03)
    assert _make_silos(spec, plan, tmp_path / "work") == tmp_path / "silos"
    # the user's silos are the only scenario: no hard scenario, ablations on them alone
    assert plan.scenarios == () and plan.ablation_scenarios == ("clinics",)
    # rates chosen on the bundled clinics were not chosen on these silos: the defaults
    assert plan.base_rates == {} and plan.rates_of("text", "local") == [0.03]
    assert nothing_starts == []


def test_a_plan_without_the_silos_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vision task, which the tiny plan does not run"):
        plan_with_overrides(
            tiny_plan(), seeds=None, clients=None, data_root=(tmp_path, "vision", 4)
        )
    with pytest.raises(ValueError, match="holds 4 silo folders"):
        plan_with_overrides(full_plan(), seeds=None, clients=5, data_root=(tmp_path, "text", 4))
    plan = plan_with_overrides(
        full_plan(), seeds=None, clients=3, data_root=(tmp_path, "vision", 4)
    )
    assert list(plan.tasks) == ["vision"] and plan.clients == 3

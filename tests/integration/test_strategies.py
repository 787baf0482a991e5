"""Every strategy runs 2 rounds on text and on vision, as real processes via ``fedprompt up``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fedprompt.strategies import STRATEGY_NAMES, ModelFamily, strategy_spec
from fedprompt_cli.processes import console_script

pytestmark = pytest.mark.integration

STRATEGIES = list(STRATEGY_NAMES)
TINY = {
    "text": ["--local-steps", "2", "--batch-size", "8", "--max-length", "32"],
    "vision": ["--local-steps", "2", "--batch-size", "16"],
}


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for task, extra in (("text", []), ("vision", ["--max-images", "600"])):
        root = tmp_path_factory.mktemp(f"silos-{task}")
        subprocess.run(
            [console_script("fedprompt-make-silos"), "--task", task, "--num-silos", "2",
             "--seed", "0", "--out", str(root), *extra],
            check=True, capture_output=True,
        )  # fmt: skip
        out[task] = root
    return out


@pytest.mark.parametrize("task", ["text", "vision"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_two_rounds(
    strategy: str, task: str, silos: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [console_script("fedprompt"), "up", "--clients", "2", "--rounds", "2", "--strategy",
         strategy, "--task", task, "--data-root", str(silos[task]), "--run-dir", str(run_dir),
         "--device", "cpu", *TINY[task]],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"] == strategy
    assert summary["completed_rounds"] == 2
    assert len(summary["clients"]) == 2
    spec = strategy_spec(strategy)
    for client in summary["clients"].values():
        assert 0.0 <= client["accuracy_after"] <= 1.0
        up = client["bytes_up_per_round"]
        if not spec.shares_tensors:
            assert up < 2_000  # headers and metrics only: nothing is shared
        elif spec.family is ModelFamily.PROMPT:
            assert 10_000 < up < 200_000  # prompt segments and the head
        elif spec.family is ModelFamily.LORA:
            assert 50_000 < up < 5_000_000
        else:  # full-fedavg: every weight travels
            assert up > 10_000_000

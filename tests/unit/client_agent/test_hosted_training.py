"""The hosted-training worker: open tasks of hosted silos train together, failures stay alone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.data.text_silos import SiloData, TextExample, write_silo_dir
from fedprompt_client_agent.hosted_training import HostedRuntime, HostedTraining
from fedprompt_client_agent.runtime import SiloRuntime

TEXTS = {
    "pos": ["great relief, works well", "wonderful, no side effects", "excellent results",
            "it helped a lot", "finally I sleep", "best choice I made"],
    "neg": ["terrible nausea all week", "awful headaches, stopped", "worst drug ever",
            "made me dizzy", "rash on day two", "useless and costly"],
}  # fmt: skip
KEYS = ("prompt.global", "prompt.cluster", "prompt.local", "head.weight", "head.bias")


pytestmark = pytest.mark.usefixtures("single_thread")


def _silo_dir(root: Path, name: str, n: int) -> Path:
    examples = tuple(
        TextExample(text=t, label=i) for i, key in enumerate(TEXTS) for t in TEXTS[key][:n]
    )
    silo = SiloData(
        name=name, labels=("pos", "neg"), train=examples, val=examples[:2], test=examples[2:5],
        metadata={"specialty": "psychiatry"},
    )  # fmt: skip
    return write_silo_dir(silo, root / name)


def _runtime(root: Path, name: str, n: int, state: str, **extra: object) -> SiloRuntime:
    config = ClientAgentConfig.model_validate(
        {
            "client_id": name,
            "data_dir": _silo_dir(root / "data", name, n),
            "state_dir": root / state / name,
            "device": "cpu",
            "max_length": 16,
            "seed": 3,
            **extra,
        }
    )
    return SiloRuntime(config)


def _settings(**changes: Any) -> TrainSettings:
    values: dict[str, Any] = {
        "local_steps": 3, "batch_size": 4, "learning_rate": 0.05, "head_learning_rate": 0.01,
    }  # fmt: skip
    values.update(changes)
    return TrainSettings(**values)


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads at once, as hosted agents do; exceptions are returned."""
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return out


def test_open_tasks_train_together_and_equal_training_alone(tmp_path: Path) -> None:
    sizes = {"a": 6, "b": 3, "c": 5}
    # FedProx: off, on every travelling tensor, on two of them (θ₀ copied per silo, per round)
    settings = {
        "a": _settings(),
        "b": _settings(proximal_mu=1.0),
        "c": _settings(proximal_mu=10.0, uploaded_tensors=("prompt.global", "head.weight")),
    }
    alone = {name: _runtime(tmp_path, name, n, "alone") for name, n in sizes.items()}
    hosted = {name: _runtime(tmp_path, name, n, "hosted") for name, n in sizes.items()}
    worker = HostedTraining(expected=3, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in hosted.values()]
        for _round in range(2):
            expected = [rt.train(settings[name]) for name, rt in alone.items()]
            got = _concurrently(
                [
                    lambda w=w, s=s: w.train(s)
                    for w, s in zip(wrapped, settings.values(), strict=True)
                ]
            )
            for exp, res in zip(expected, got, strict=True):
                assert not isinstance(res, Exception), res
                assert res["steps"] == exp["steps"] and res["examples_seen"] == exp["examples_seen"]
                assert res["loss"] == pytest.approx(exp["loss"], rel=1e-4)
            evaluated = _concurrently([w.evaluate for w in wrapped])
            for rt, res in zip(alone.values(), evaluated, strict=True):
                exp = rt.evaluate()
                assert res.keys() == exp.keys()
                assert (
                    res["accuracy"] == exp["accuracy"]
                    and res["val_accuracy"] == exp["val_accuracy"]
                )
                assert res["loss"] == pytest.approx(exp["loss"], rel=1e-4)
        for name in sizes:
            a = alone[name].model.personal_state()  # type: ignore[attr-defined]
            h = hosted[name].model.personal_state()  # type: ignore[attr-defined]
            for key in KEYS:
                np.testing.assert_allclose(h[key], a[key], rtol=2e-4, atol=2e-6, err_msg=key)
        # every gathering of the three open tasks became one batch of one group
        assert (3, 1) in worker.batches
    finally:
        worker.close()
    assert len({id(rt.model.backbone) for rt in hosted.values()}) == 1  # type: ignore[attr-defined]


def test_a_silo_with_a_bad_task_fails_alone(tmp_path: Path) -> None:
    hosted = [_runtime(tmp_path, name, 4, "st") for name in ("a", "b", "c")]
    worker = HostedTraining(expected=3, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in hosted]
        calls = [
            lambda: wrapped[0].train(_settings()),
            lambda: wrapped[1].train(_settings(learning_rate=-1.0)),  # refused by the trainer
            lambda: wrapped[2].train(_settings()),
        ]
        got = _concurrently(calls)
        assert isinstance(got[1], ValueError) and "lr" in str(got[1])
        assert got[0]["steps"] == got[2]["steps"] == 3.0
    finally:
        worker.close()


def test_dp_sgd_silos_train_alone_next_to_a_batched_group(tmp_path: Path) -> None:
    prompt = [_runtime(tmp_path, name, 4, "st") for name in ("a", "b")]
    dp = _runtime(tmp_path, "dp", 4, "st", dp_sgd_noise_multiplier=1.0, dp_sgd_max_grad_norm=1.0)
    assert dp.model.backbone is not prompt[0].model.backbone  # type: ignore[attr-defined]
    worker = HostedTraining(expected=3, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in (*prompt, dp)]
        got = _concurrently([lambda w=w: w.train(_settings()) for w in wrapped])
        assert all(not isinstance(r, Exception) for r in got), got
        assert "dp_sgd_epsilon" in got[2] and "dp_sgd_epsilon" not in got[0]
        assert worker.batches[-1] == (3, 2)  # the prompt pair together, the DP silo alone
    finally:
        worker.close()


def test_sequential_worker_runs_every_silo_alone(tmp_path: Path) -> None:
    hosted = [_runtime(tmp_path, name, 4, "st") for name in ("a", "b")]
    worker = HostedTraining(expected=2, batched=False, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in hosted]
        got = _concurrently([lambda w=w: w.train(_settings()) for w in wrapped])
        assert all(r["steps"] == 3.0 for r in got)
        assert worker.batches[-1] == (2, 2)
    finally:
        worker.close()


def test_a_lone_task_does_not_wait_for_silos_that_have_none(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, "a", 4, "st")
    worker = HostedTraining(expected=50, gather_s=0.01, max_wait_s=0.05)
    try:
        assert HostedRuntime(rt, worker).train(_settings(local_steps=1))["steps"] == 1.0
    finally:
        worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("evaluate", rt)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expected": 0}, "expected"),
        ({"expected": 2, "gather_s": -1.0}, "gather_s"),
        ({"expected": 2, "gather_s": 2.0, "max_wait_s": 1.0}, "gather_s"),
        ({"expected": 2, "max_pass_examples": 0}, "max_pass_examples"),
    ],
)
def test_nonsense_worker_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HostedTraining(**kwargs)

"""EVALUATE tasks with a personalization pass: the agent's edge, its report, what stays unchanged.

The agent runs on real silo runtimes (MiniLM, a small text silo); the coordinator's side of
the calls is a recording stand-in for ``CoordinatorClient`` (as in the hostile secure-
aggregation tests), which hands the agent its models and keeps what it uploads and reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt.codec import decode_tensors
from fedprompt.v1 import coordinator_pb2
from fedprompt_client_agent.agent import (
    PERSONALIZE_FAILED,
    ClientAgent,
    PersonalizeSettings,
    TrainSettings,
    personalize_settings,
)
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.hosted_training import HostedRuntime, HostedTraining
from fedprompt_client_agent.runtime import PERSONAL_PROMPT_FILE, SiloRuntime
from tests.unit.client_agent.test_hosted_training import _concurrently
from tests.unit.client_agent.test_hosted_training import _silo_dir as hosted_silo_dir

TRAINING = {"local_steps": 3, "batch_size": 4, "learning_rate": 0.05, "head_learning_rate": 0.05}
PASS = PersonalizeSettings(steps=6, batch_size=4, learning_rate=0.05, head_learning_rate=0.05)

pytestmark = pytest.mark.usefixtures("single_thread")


def _silo_dir(root: Path, name: str, n: int) -> Path:
    return hosted_silo_dir(root / "data", name, n)


def _runtime(root: Path, name: str, state: str, n: int = 6, **extra: object) -> SiloRuntime:
    config = ClientAgentConfig.model_validate(
        {
            "client_id": name,
            "data_dir": _silo_dir(root, name, n),
            "state_dir": root / state / name,
            "device": "cpu",
            "max_length": 16,
            "seed": 3,
            **extra,
        }
    )
    return SiloRuntime(config)


class _Coordinator:
    """Stands in for CoordinatorClient: serves given models, records uploads and reports."""

    def __init__(self, models: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        self.models = models
        self.fetched: list[tuple[int, int]] = []
        self.uploads: dict[int, tuple[bytes, dict[str, float]]] = {}
        self.reports: dict[int, dict[str, float]] = {}

    async def task_model(
        self, task: coordinator_pb2.Task, stage: coordinator_pb2.ModelStage.ValueType
    ) -> dict[str, np.ndarray]:
        self.fetched.append((task.round, int(stage)))
        # round r starts from models[r] and aggregates into models[r + 1]
        later = int(stage == coordinator_pb2.MODEL_STAGE_AGGREGATED)
        return {k: np.array(v, copy=True) for k, v in self.models[task.round + later].items()}

    async def upload(
        self, *, round_id: int, payload: bytes, train_metrics: Mapping[str, float], **_: Any
    ) -> coordinator_pb2.UploadUpdateResponse:
        self.uploads[round_id] = (payload, dict(train_metrics))
        return coordinator_pb2.UploadUpdateResponse(accepted=True)

    async def report_metrics(
        self, *, round_id: int, phase: int, metrics: Mapping[str, float]
    ) -> None:
        assert phase == coordinator_pb2.METRICS_PHASE_EVALUATE
        self.reports[round_id] = dict(metrics)


def _task(kind: int, round_id: int, *, steps: int = 0, **training: Any) -> coordinator_pb2.Task:
    """A task as the coordinator's bytes, parsed back as the agent receives it."""
    sent = coordinator_pb2.Task(kind=kind, round=round_id, personalize_steps=steps)  # type: ignore[arg-type]
    if training:
        sent.training.CopyFrom(coordinator_pb2.TrainingSettings(**training))
    return coordinator_pb2.Task.FromString(sent.SerializeToString())


async def _rounds(agent: ClientAgent, client: _Coordinator, evaluate: coordinator_pb2.Task) -> None:
    """TRAIN round 1, the given EVALUATE task of round 1, TRAIN round 2."""
    await agent._train(client, _task(coordinator_pb2.TASK_KIND_TRAIN, 1, **TRAINING))  # type: ignore[arg-type]
    await agent._evaluate(client, evaluate)  # type: ignore[arg-type]
    await agent._train(client, _task(coordinator_pb2.TASK_KIND_TRAIN, 2, **TRAINING))  # type: ignore[arg-type]


def test_the_pass_changes_the_report_and_nothing_else(tmp_path: Path) -> None:
    off_rt, on_rt = _runtime(tmp_path, "a", "off"), _runtime(tmp_path, "a", "on")
    initial = off_rt.shared_state()
    models = {1: initial, 2: {k: v + np.float32(0.01) for k, v in initial.items()}}
    off, on = _Coordinator(models), _Coordinator(models)
    # steps 0 with training settings: the evaluation of old (the settings are not read)
    asyncio.run(
        _rounds(
            ClientAgent(off_rt, coordinator="127.0.0.1:1"),
            off,
            _task(coordinator_pb2.TASK_KIND_EVALUATE, 1, steps=0, **TRAINING),
        )
    )
    asyncio.run(
        _rounds(
            ClientAgent(on_rt, coordinator="127.0.0.1:1"),
            on,
            _task(coordinator_pb2.TASK_KIND_EVALUATE, 1, steps=PASS.steps, **TRAINING),
        )
    )
    # what the silo uploads and keeps is the same, bit for bit, with and without the pass
    assert on.uploads.keys() == off.uploads.keys() == {1, 2}
    for round_id in (1, 2):
        assert on.uploads[round_id][0] == off.uploads[round_id][0], round_id
        assert on.uploads[round_id][1].keys() == off.uploads[round_id][1].keys()
    delta = decode_tensors(on.uploads[2][0])
    assert "prompt.local" not in delta and np.abs(delta["prompt.global"]).max() > 0
    # round 2's pre_* metrics are the unpersonalized evaluation (the model training starts from)
    for key, value in off.reports[1].items():
        assert on.uploads[2][1][f"pre_{key}"] == off.uploads[2][1][f"pre_{key}"] == value, key
    kept = {n: decode_tensors((tmp_path / n / "a" / PERSONAL_PROMPT_FILE).read_bytes())
            for n in ("off", "on")}  # fmt: skip
    assert kept["on"].keys() == kept["off"].keys() and "prompt.local" in kept["on"]
    for key, value in kept["off"].items():
        np.testing.assert_array_equal(kept["on"][key], value, err_msg=key)
    # the report: the personalized metrics under the usual keys, the aggregate's prefixed
    plain = off.reports[1]
    assert {"accuracy", "val_accuracy", "macro_f1", "loss", "num_examples"} <= plain.keys()
    report = on.reports[1]
    assert {k for k in report if k.startswith("unpersonalized_")} == {
        f"unpersonalized_{k}" for k in plain
    }
    for key, value in plain.items():
        assert report[f"unpersonalized_{key}"] == value, key
        assert key in report
    assert report["personalize_steps"] == PASS.steps and report["personalize_seconds"] > 0
    assert report["loss"] != plain["loss"]  # the copy is another model
    assert len(report) == 2 * len(plain) + 3
    assert on.fetched == off.fetched  # no extra download


@pytest.mark.parametrize(
    ("steps", "training", "match"),
    [
        (10_001, TRAINING, r"personalize_steps must be in \[0, 10000\]"),
        (2**32 - 1, TRAINING, r"personalize_steps must be in \[0, 10000\]"),
        (5, {}, "without the training settings"),
        (5, {**TRAINING, "batch_size": 0}, "batch_size"),
        (5, {**TRAINING, "learning_rate": 0.0}, "learning_rate"),
        (5, {**TRAINING, "learning_rate": -0.1}, "learning_rate"),
        (5, {**TRAINING, "learning_rate": float("nan")}, "learning_rate"),
        (5, {**TRAINING, "head_learning_rate": float("inf")}, "head_learning_rate"),
    ],
)
def test_a_hostile_pass_fails_the_task_before_the_model_is_fetched(
    tmp_path: Path, steps: int, training: dict[str, Any], match: str
) -> None:
    task = _task(coordinator_pb2.TASK_KIND_EVALUATE, 1, steps=steps, **training)
    with pytest.raises(ValueError, match=match):
        personalize_settings(task)
    client = _Coordinator({})
    agent = ClientAgent(object(), coordinator="127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        asyncio.run(agent._evaluate(client, task))  # type: ignore[arg-type]
    assert client.fetched == [] and client.reports == {}


@pytest.mark.parametrize(
    "changes",
    [{"steps": 0}, {"steps": -1}, {"steps": True}, {"steps": 2.0}, {"batch_size": True}],
)
def test_pass_settings_refuse_what_no_task_can_ask(changes: dict[str, Any]) -> None:
    values: dict[str, Any] = {**PASS.__dict__, **changes}
    with pytest.raises(ValueError, match=r"steps|batch_size"):
        PersonalizeSettings(**values)


def test_a_task_without_steps_asks_for_no_pass() -> None:
    assert personalize_settings(_task(coordinator_pb2.TASK_KIND_EVALUATE, 1)) is None
    got = personalize_settings(_task(coordinator_pb2.TASK_KIND_EVALUATE, 1, steps=7, **TRAINING))
    assert got == PersonalizeSettings(
        steps=7, batch_size=4, learning_rate=0.05, head_learning_rate=0.05
    )


def test_a_diverging_pass_reports_the_aggregate_the_silo_keeps(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, "a", "st")
    client = _Coordinator({2: rt.shared_state()})
    hostile = {**TRAINING, "learning_rate": 1e30, "head_learning_rate": 1e30}
    task = _task(coordinator_pb2.TASK_KIND_EVALUATE, 1, steps=5, **hostile)
    asyncio.run(ClientAgent(rt, coordinator="127.0.0.1:1")._evaluate(client, task))  # type: ignore[arg-type]
    report = client.reports[1]
    assert report[PERSONALIZE_FAILED] == 1.0
    plain = rt.evaluate()
    # the silo falls back to the aggregate: the summaries count that model, not nothing
    assert report["accuracy"] == report["unpersonalized_accuracy"] == plain["accuracy"]
    assert report["val_accuracy"] == plain["val_accuracy"]


def test_a_dp_sgd_silos_pass_spends_no_epsilon_and_keeps_its_state(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, "dp", "st", dp_sgd_noise_multiplier=1.0)
    epsilon = rt.train(_train_settings())["dp_sgd_epsilon"]
    before = rt.model.personal_state()  # type: ignore[attr-defined]
    plain = rt.evaluate()
    personalized = rt.personalized_evaluate(PASS)
    assert personalized["personalize_steps"] == PASS.steps
    assert rt.evaluate() == plain
    after = rt.model.personal_state()  # type: ignore[attr-defined]
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert rt._dp_epsilon() == epsilon  # the pass spent nothing
    assert rt.train(_train_settings())["dp_sgd_epsilon"] > epsilon  # Opacus still trains


def _train_settings() -> TrainSettings:
    return TrainSettings(**TRAINING)


def test_hosted_passes_run_together_and_equal_the_pass_alone(tmp_path: Path) -> None:
    sizes = {"a": 6, "b": 3, "c": 5}
    alone = {name: _runtime(tmp_path, name, "alone", n) for name, n in sizes.items()}
    hosted = {name: _runtime(tmp_path, name, "hosted", n) for name, n in sizes.items()}
    worker = HostedTraining(expected=3, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in hosted.values()]
        kept = {n: rt.model.personal_state() for n, rt in hosted.items()}  # type: ignore[attr-defined]
        got = _concurrently([lambda w=w: w.personalized_evaluate(PASS) for w in wrapped])
        for rt, res in zip(alone.values(), got, strict=True):
            assert not isinstance(res, Exception), res
            exp = rt.personalized_evaluate(PASS)
            assert res.keys() == exp.keys()
            assert res["accuracy"] == exp["accuracy"]
            assert res["val_accuracy"] == exp["val_accuracy"]
            assert res["loss"] == pytest.approx(exp["loss"], rel=1e-3)
            assert res["personalize_loss"] == pytest.approx(exp["personalize_loss"], rel=1e-3)
        assert (3, 1) in worker.batches  # the three passes: one group, shared backbone passes
        for name, rt in hosted.items():
            now = rt.model.personal_state()  # type: ignore[attr-defined]
            for key, value in kept[name].items():
                np.testing.assert_array_equal(now[key], value, err_msg=f"{name} {key}")
        # a diverging pass fails alone; the others are answered
        hostile = PersonalizeSettings(
            steps=5, batch_size=4, learning_rate=1e30, head_learning_rate=1e30
        )
        got = _concurrently(
            [
                lambda: wrapped[0].personalized_evaluate(PASS),
                lambda: wrapped[1].personalized_evaluate(hostile),
                lambda: wrapped[2].personalized_evaluate(PASS),
            ]
        )
        assert isinstance(got[1], FloatingPointError)
        assert got[0]["personalize_steps"] == got[2]["personalize_steps"] == PASS.steps
    finally:
        worker.close()


def test_a_hosted_dp_sgd_silos_pass_runs_alone_next_to_a_group(tmp_path: Path) -> None:
    prompt = [_runtime(tmp_path, name, "st", 4) for name in ("a", "b")]
    dp = _runtime(tmp_path, "dp", "st", 4, dp_sgd_noise_multiplier=1.0)
    worker = HostedTraining(expected=3, gather_s=0.5, max_wait_s=5.0)
    try:
        wrapped = [HostedRuntime(rt, worker) for rt in (*prompt, dp)]
        got = _concurrently([lambda w=w: w.personalized_evaluate(PASS) for w in wrapped])
        assert all(not isinstance(r, Exception) for r in got), got
        assert worker.batches[-1] == (3, 2)  # the prompt pair together, the DP silo alone
    finally:
        worker.close()

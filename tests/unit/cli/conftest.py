"""Hand-made run records (the shape ``fedprompt bench`` keeps) for the report's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def _make_record(
    *,
    task: str = "text",
    strategy: str = "fpl",
    seed: int = 0,
    lr: float = 0.03,
    stage: str = "tune",
    accs: list[list[float]],
    vals: list[float] | None = None,
    up: int = 1000,
    down: int = 2000,
    epsilon: float = 0.0,
    dp_epsilon: float | None = None,
    dp_sgd_epsilon: float | None = None,
    upload_compression: str | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """A record whose ``accs[r][c]`` is client c's test accuracy after round r+1."""
    n_clients = len(accs[0])
    groups = groups or [("a" if c % 2 == 0 else "b") for c in range(n_clients)]
    vals = vals or accs[-1]
    clients = {}
    for c in range(n_clients):
        rounds = {}
        for r, row in enumerate(accs, start=1):
            ev = {"accuracy": row[c], "macro_f1": row[c] / 2, "num_examples": 10 + c}
            if r == len(accs):
                ev["val_accuracy"] = vals[c]
            train = {"train_seconds": 1.5}
            if dp_sgd_epsilon is not None:
                train["train_dp_sgd_epsilon"] = dp_sgd_epsilon * r / len(accs)
            rounds[str(r)] = {
                "cluster": c % 2,
                "bytes_up": up,
                "bytes_down": down,
                "train": train,
                "eval": ev,
            }
        clients[f"client-{c}"] = {
            "metadata": {"specialty": groups[c]},
            "setup_bytes_up": 10,
            "setup_bytes_down": 0,
            "rounds": rounds,
        }
    spec = {
        "stage": stage,
        "task": task,
        "strategy": strategy,
        "seed": seed,
        "learning_rate": lr,
        "dp_epsilon": dp_epsilon,
        "dp_sgd_epsilon": dp_sgd_epsilon,
        "upload_compression": upload_compression,
    }
    spec["name"] = (
        f"{task}-{strategy}-lr{lr:g}-s{seed}-{dp_epsilon}-{dp_sgd_epsilon}-{upload_compression}"
    )
    return {
        "spec": spec,
        "wall_seconds": 30.0,
        "summary": {
            "strategy": strategy,
            "epsilon": epsilon,
            "rounds": [
                {"round": r, "num_clusters": 2, "summary": {"round_seconds": 4.0}}
                for r in range(1, len(accs) + 1)
            ],
            "clients": clients,
        },
    }


@pytest.fixture
def make_record() -> Callable[..., dict[str, Any]]:
    """Builds a run record from per-round, per-client accuracies."""
    return _make_record


def _three_seeds(strategy: str, accs: list[float], **kw: Any) -> list[dict[str, Any]]:
    return [
        _make_record(strategy=strategy, seed=s, accs=[[a, a]], **kw) for s, a in enumerate(accs)
    ]


@pytest.fixture
def three_seeds() -> Callable[..., list[dict[str, Any]]]:
    """Builds one record of ``strategy`` per seed 0, 1, ...: both clients at ``accs[seed]``."""
    return _three_seeds


@pytest.fixture
def compression_records() -> list[dict[str, Any]]:
    """fpl on 3 seeds (1000 B up), int8 on the same seeds (300 B), fp16 on seeds 0 and 1."""
    return (
        _three_seeds("fpl", [0.60, 0.62, 0.64], up=1000)
        + [_make_record(strategy="fpl", lr=0.09, accs=[[0.9, 0.9]], vals=[0.1, 0.1], up=5000)]
        + [
            _make_record(strategy="fpl", seed=s, accs=[[a, a]], up=300, stage="compression",
                         upload_compression="int8")
            for s, a in enumerate([0.59, 0.61, 0.63])
        ]
        + [
            _make_record(strategy="fpl", seed=s, accs=[[a, a]], up=500, stage="compression",
                         upload_compression="fp16")
            for s, a in enumerate([0.70, 0.72])
        ]
    )  # fmt: skip

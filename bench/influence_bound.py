"""How far can one malicious member move each level of the model? Measured, per setting.

Usage: ``.venv/bin/python bench/influence_bound.py [--clients 4 10] [--rounds 10] [--seed 0]``

Runs the coordinator's real aggregation (the aggregator ``Federation`` builds from a
``CoordinatorConfig``: capped weights, the level rules, per-client clipping) for a few rounds
of one federation: ``n - 1`` honest members whose updates of each part have the norms
measured on the bundled text task (``bench/honest_update_norms.py``: global prompt ~8,
cluster prompt ~5.7, head ~1.3; spread ±10 %, pairwise cosine ~0.5) and one malicious member
that declares the largest sample count (10^9 at Join and upload) and uploads, every round,
each tensor at the hard ``max_update_l2_norm`` limit in a crafted direction:

- ``opposite``: against the honest mean (drags the level back);
- ``orthogonal``: a direction no honest member uses (moves the level elsewhere);
- ``along``: with the honest mean, at full force (overshoot);
- ``alie``: "a little is enough" (Baruch et al. 2019): per coordinate, the honest mean minus
  one honest standard deviation, at its natural (small) norm: hard to tell from the honest.

For each part it prints the largest displacement the malicious member caused in any round
and direction, ``‖move(with it) - move(honest only)‖``, as a multiple of a median honest
update's norm, for the federation as it was (n-weighted mean, no clipping, the old 10^4
limit), each defence alone, the default settings and each robust rule (with the default
clipping and cap).
A figure, not a test.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.parts import Part, group_by_part
from fedprompt_coordinator.config import DEFAULT_MAX_UPDATE_L2_NORM, CoordinatorConfig
from fedprompt_coordinator.domain import ClientUpdate, FederationModel
from fedprompt_coordinator.strategies import build_strategy

#: A small clustered model (everyone in one cluster): every part at both levels.
SHAPES = {
    "prompt.global": (8, 32),
    "prompt.cluster": (4, 32),
    "head.weight": (8, 32),
    "head.bias": (8,),
}
#: Median honest norm of each part (bench/honest_update_norms.py, text, fpl).
HONEST_NORMS = {Part.GLOBAL_PROMPT: 8.0, Part.CLUSTER_PROMPT: 5.7, Part.HEAD: 1.3}
MAX_EXAMPLES = 10**9
HONEST_EXAMPLES = (60, 90, 120, 150, 180)

#: name -> (aggregation settings, hard per-tensor L2 limit)
SETTINGS: dict[str, tuple[dict[str, Any], float | None]] = {
    "as it was (n-weighted, no clip, 1e4)": (
        {"clipping": {"mode": "off"}, "max_weight_share": 1.0, "max_weight_multiple": None},
        1e4,
    ),
    "new hard limit only (n-weighted, no clip)": (
        {"clipping": {"mode": "off"}, "max_weight_share": 1.0, "max_weight_multiple": None},
        DEFAULT_MAX_UPDATE_L2_NORM,
    ),
    "capped weights, no clip": ({"clipping": {"mode": "off"}}, DEFAULT_MAX_UPDATE_L2_NORM),
    "clip, no weight cap": (
        {"max_weight_share": 1.0, "max_weight_multiple": None},
        DEFAULT_MAX_UPDATE_L2_NORM,
    ),
    "default (capped mean, adaptive clip)": ({}, DEFAULT_MAX_UPDATE_L2_NORM),
    "median": (
        {"global_rule": "median", "cluster_rule": "median"},
        DEFAULT_MAX_UPDATE_L2_NORM,
    ),
    "trimmed-mean (β=0.2)": (
        {"global_rule": "trimmed-mean", "cluster_rule": "trimmed-mean"},
        DEFAULT_MAX_UPDATE_L2_NORM,
    ),
    "multi-krum (f=1)": (
        {"global_rule": "multi-krum", "cluster_rule": "multi-krum"},
        DEFAULT_MAX_UPDATE_L2_NORM,
    ),
}

Tensors = dict[str, np.ndarray]
Attack = Callable[[list[Tensors], np.random.Generator, float], Tensors]


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v)
    return out


def honest_updates(n: int, rng: np.random.Generator) -> list[Tensors]:
    """``n`` honest deltas: a shared direction plus as much private noise (cosine ~0.5)."""
    parts = group_by_part(SHAPES)
    common = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    out = []
    for _ in range(n):
        tensors: Tensors = {}
        for part, names in parts.items():
            raw = {k: common[k] + rng.normal(size=SHAPES[k]) for k in names}
            norm = np.sqrt(sum(float(np.sum(v**2)) for v in raw.values()))
            target = HONEST_NORMS[part] * float(np.exp(rng.normal(0.0, 0.1)))
            for k, v in raw.items():
                tensors[k] = (v * target / norm).astype(np.float32)
        out.append(tensors)
    return out


def _per_tensor(direction: Mapping[str, np.ndarray], limit: float) -> Tensors:
    """Every tensor along ``direction`` at the per-tensor ``limit`` (a hair under it)."""
    return {k: (_unit(v) * limit * (1 - 1e-6)).astype(np.float32) for k, v in direction.items()}


def _honest_mean(honest: list[Tensors]) -> Tensors:
    return {k: np.mean([h[k] for h in honest], axis=0) for k in SHAPES}


ATTACKS: dict[str, Attack] = {
    "opposite": lambda h, rng, lim: _per_tensor({k: -v for k, v in _honest_mean(h).items()}, lim),
    "orthogonal": lambda h, rng, lim: _per_tensor(
        {k: rng.normal(size=s) for k, s in SHAPES.items()}, lim
    ),
    "along": lambda h, rng, lim: _per_tensor(_honest_mean(h), lim),
    "alie": lambda h, rng, lim: {
        k: (np.mean([x[k] for x in h], axis=0) - np.std([x[k] for x in h], axis=0)).astype(
            np.float32
        )
        for k in SHAPES
    },
}


def _aggregator(settings: Mapping[str, Any]) -> ClusterAggregator:
    """The aggregator a coordinator with these aggregation settings builds (clustered)."""
    config = CoordinatorConfig(strategy="clustered", aggregation=settings)  # type: ignore[arg-type]
    return build_strategy(config).make_aggregator()


def _model() -> FederationModel:
    zeros = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    glob = {k: v for k, v in zeros.items() if k == "prompt.global"}
    clus = {k: v for k, v in zeros.items() if k != "prompt.global"}
    return FederationModel(glob, {0: dict(clus)}, dict(clus))


def _updates(honest: list[Tensors], malicious: Tensors | None) -> list[ClientUpdate]:
    out = [
        ClientUpdate(f"h{i}", 0, HONEST_EXAMPLES[i % len(HONEST_EXAMPLES)], t)
        for i, t in enumerate(honest)
    ]
    if malicious is not None:
        out.append(ClientUpdate("mallory", 0, MAX_EXAMPLES, malicious))
    return out


def _move(before: FederationModel, after: FederationModel) -> Tensors:
    b, a = before.for_cluster(0), after.for_cluster(0)
    return {k: a[k].astype(np.float64) - b[k] for k in SHAPES}


def worst_displacement(
    settings: Mapping[str, Any], limit: float | None, *, clients: int, rounds: int, seed: int
) -> dict[Part, float]:
    """The largest displacement per part, over rounds and attacks, in honest-norm multiples."""
    worst = dict.fromkeys(HONEST_NORMS, 0.0)
    for attack_name, attack in ATTACKS.items():
        rng = np.random.default_rng(seed)
        attacked, reference = _aggregator(settings), _aggregator(settings)
        model_a, model_h = _model(), _model()
        for _ in range(rounds):
            honest = honest_updates(clients - 1, rng)
            bad = attack(honest, rng, limit if limit is not None else 1e4)
            after_a = attacked.aggregate(model_a, _updates(honest, bad))
            after_h = reference.aggregate(model_h, _updates(honest, None))
            move_a, move_h = _move(model_a, after_a), _move(model_h, after_h)
            for part, names in group_by_part(SHAPES).items():
                diff = np.sqrt(sum(float(np.sum((move_a[k] - move_h[k]) ** 2)) for k in names))
                worst[part] = max(worst[part], diff / HONEST_NORMS[part])
            model_a, model_h = after_a, after_h
        del attack_name
    return worst


def main() -> int:
    """Print one table per federation size."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, nargs="+", default=[4, 10])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for clients in args.clients:
        print(
            f"\nOne malicious member among {clients} ({clients - 1} honest), {args.rounds} rounds:"
            " largest displacement of each part, in multiples of a median honest update\n"
        )
        print("| setting | global prompt | cluster prompt | head |")
        print("|---|---|---|---|")
        for name, (settings, limit) in SETTINGS.items():
            worst = worst_displacement(
                settings, limit, clients=clients, rounds=args.rounds, seed=args.seed
            )
            cells = " | ".join(f"{worst[p]:.3g}" for p in HONEST_NORMS)
            print(f"| {name} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

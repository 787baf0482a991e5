"""Coordinated hostile silos against cluster refinement's evidence.

Two colluders with valid certificates: an *insider* in the victim's cluster, which sees
that cluster's aggregate and so knows its mean update direction, and an *outsider* in
another cluster. The insider uploads the opposite of its cluster's direction to drag its
peers' leave-one-out alignment down; the outsider uploads the victim cluster's direction to
become an honest member's best peer, so that the pair rule splits the victim off into a new
cluster shared with the outsider (or the single-member rule moves it to the outsider's).
Honest updates are their cluster's direction plus noise 0.75 times as large, drawn afresh
each trial (pairwise cosine about 0.64, leave-one-out cosine 0.7-0.8: the low end of what
the clinics measured).

The defence under test: a member's standing at home is the higher of its leave-one-out
cosine and its cosine with its closest member there, and a hostile member cannot lower a
maximum. Before it (the leave-one-out mean alone), the same attack split off a member in
every trial with one honest peer beside the insider and in 76 % of trials with two.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.cluster_refinement import AlignmentTracker
from fedprompt_coordinator.domain import ClientUpdate

DIM = 64
NOISE = 0.75
MARGIN = 0.25  # the validated default (clustering.refine_margin)


def _update(cid: str, cluster: int, vector: np.ndarray) -> ClientUpdate:
    return ClientUpdate(
        client_id=cid,
        cluster_id=cluster,
        num_examples=10,
        tensors={"prompt.cluster": vector.astype(np.float32)},
    )


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM)
    return v / np.linalg.norm(v)


def _honest(
    rng: np.random.Generator, direction: np.ndarray, prefix: str, cluster: int, n: int
) -> list[ClientUpdate]:
    return [_update(f"{prefix}{i}", cluster, direction + NOISE * _unit(rng)) for i in range(n)]


def _attacked_round(
    rng: np.random.Generator, *, victims: int, insider: bool = True
) -> list[ClientUpdate]:
    """Cluster 0: ``victims`` honest ``v*`` and insider ``x``; cluster 1: four ``c*`` and ``y``."""
    g0, g1 = _unit(rng), _unit(rng)
    updates = [*_honest(rng, g0, "v", 0, victims), *_honest(rng, g1, "c", 1, 4)]
    if insider:
        updates.append(_update("x", 0, -g0))
    updates.append(_update("y", 1, g0))
    return updates


def _best(updates: list[ClientUpdate]) -> dict[str, int]:
    return AlignmentTracker(after_rounds=1, margin=MARGIN).best_clusters(updates, new_id=9)


def _honest_moved(updates: list[ClientUpdate]) -> dict[str, int]:
    home = {u.client_id: u.cluster_id for u in updates}
    return {c: b for c, b in _best(updates).items() if c not in {"x", "y"} and b != home[c]}


def _split_rate(victims: int, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return (
        sum(bool(_honest_moved(_attacked_round(rng, victims=victims))) for _ in range(trials))
        / trials
    )


@pytest.mark.parametrize("victims", [4, 6])
def test_an_insider_and_an_outsider_never_split_off_a_member_of_a_larger_cluster(
    victims: int,
) -> None:
    assert _split_rate(victims, trials=300, seed=victims) == 0.0


@pytest.mark.parametrize(("victims", "bound"), [(2, 0.15), (3, 0.02)])
def test_with_two_or_three_honest_peers_the_attack_rarely_splits_anyone_off(
    victims: int, bound: float
) -> None:
    """Measured 7 % and 0.1 % over 1,000 trials (the leave-one-out mean alone: 100 % and
    76 %)."""
    assert _split_rate(victims, trials=400, seed=victims) <= bound


def test_an_outsider_alone_cannot_pull_a_member_of_the_cluster_it_copies() -> None:
    rng = np.random.default_rng(7)
    for trial in range(100):
        updates = _attacked_round(rng, victims=2, insider=False)
        assert _honest_moved(updates) == {}, f"trial {trial}"


def test_colluders_that_agree_with_each_other_move_only_themselves() -> None:
    """x (cluster 0) and y (cluster 1) upload one direction: they pair off, nobody else."""
    rng = np.random.default_rng(99)
    for trial in range(100):
        g0, g1, shared = _unit(rng), _unit(rng), _unit(rng)
        updates = [
            *_honest(rng, g0, "v", 0, 3),
            *_honest(rng, g1, "c", 1, 3),
            _update("x", 0, shared),
            _update("y", 1, shared),
        ]
        best = _best(updates)
        assert best["x"] == best["y"] == 9, f"trial {trial}"
        assert _honest_moved(updates) == {}, f"trial {trial}"


def test_known_limit_a_member_whose_only_peer_is_the_insider_is_split_off() -> None:
    """Pinned so that a change to this limit is seen (README, "Cluster refinement"): when
    the insider is the victim's only peer at home, nothing honest vouches for the victim
    there, and the outsider that copies the cluster's direction becomes its pair."""
    rng = np.random.default_rng(5)
    for trial in range(50):
        updates = _attacked_round(rng, victims=1)
        assert _honest_moved(updates) == {"v0": 9}, f"trial {trial}"
        assert _best(updates)["y"] == 9

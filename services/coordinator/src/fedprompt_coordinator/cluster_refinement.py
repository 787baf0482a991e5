"""The evidence for cluster refinement: which cluster each member's updates align with.

Metadata is the clustering's cold start; a silo whose metadata misleads is placed in the
wrong group. Its updates then betray it: trained on another group's data, its cluster-level
update (cluster prompt and head) points where that group's members' updates point. After
every completed round the coordinator scores each participant i of cluster k against every
cluster j with at least one *other* participant in the round,

    s_ij = cos(Δ_i, mean_{m ∈ j, m ≠ i} Δ_m / ‖Δ_m‖),

over the cluster-level tensors of the updates, each tensor scaled to unit norm before they
are joined (so a large, noisy prompt segment does not drown the head, and no member
outweighs another by its norm; leave-one-out, so a member never counts as evidence for its
own cluster). How well i sits at home is h_i = max(s_ik, max_{m ∈ k, m ≠ i} cos(Δ_i, Δ_m)):
a hostile member of k that uploads against k's direction drags the leave-one-out mean down,
but it cannot lower the cosine with i's closest honest member there. The best cluster is
``argmax_j s_ij`` when it beats h_i by more than ``margin``, else its own cluster. A group
that the metadata split over several clusters has no cluster of its own to move to: two
members of different clusters whose updates align with each other (cosine) better than
with any cluster and by more than ``margin`` over each one's h_i, each the other's best
peer, are given a new cluster id together (the clusterer opens it when both name it). The
evidence per member is a cluster id and a count: a round whose best cluster is the
evidence's cluster counts it up (to ``after_rounds``), a round that names another counts it
down, and at 0 the new cluster takes over with a count of 1. The clusterer
(``fedprompt_clusterer.refinement``) moves a member at ``after_rounds`` and keeps it while
the count stays >= 1, so arriving and leaving each take ``after_rounds`` rounds of agreeing
evidence.

A member without another participant in its own cluster this round cannot be compared and
keeps its evidence, as does every member that did not take part.

Refinement reads each member's update, so the configuration refuses it with secure
aggregation (the coordinator must not see single updates) and with DP-FedAvg (the
assignment would then depend on private data outside the accountant).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedprompt_coordinator.aggregation.levels import Level, level_of
from fedprompt_coordinator.domain import ClientUpdate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evidence:
    """The cluster a member's recent updates align with, and for how many rounds."""

    cluster_id: int
    rounds: int


def _direction(update: ClientUpdate) -> np.ndarray | None:
    """The update's cluster-level tensors, each scaled to unit norm, joined and scaled to
    unit norm (None: no such tensor, all zero, or not finite).

    Each tensor gets one vote in the cosine (the dot product of two directions is the mean
    of the per-tensor cosines): a large, noisy prompt segment does not drown the head.
    """
    parts: list[np.ndarray] = []
    for name in sorted(update.tensors):
        if level_of(name) is not Level.CLUSTER:
            continue
        part = np.asarray(update.tensors[name], dtype=np.float64).ravel()
        norm = float(np.linalg.norm(part))
        if not math.isfinite(norm):
            return None
        parts.append(part / norm if norm > 0.0 else part)
    if not parts:
        return None
    vector = np.concatenate(parts)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        return None
    out: np.ndarray = vector / norm
    return out


def _directions(updates: Sequence[ClientUpdate]) -> dict[str, tuple[int, np.ndarray]]:
    """(cluster, unit direction) of every comparable update.

    An update without cluster-level tensors (or a zero or non-finite one) is left out; so is
    one whose cluster-level tensors differ in size from the first usable update's
    (validated uploads always agree).
    """
    out: dict[str, tuple[int, np.ndarray]] = {}
    for u in updates:
        d = _direction(u)
        if d is None:
            continue
        first = next(iter(out.values()), None)
        if first is not None and first[1].size != d.size:
            continue
        out[u.client_id] = (u.cluster_id, d)
    return out


def alignment_scores(updates: Sequence[ClientUpdate]) -> dict[str, dict[int, float]]:
    """``s_ij`` for every participant i and every cluster j with another participant."""
    return _scores(_directions(updates))


def _scores(directions: Mapping[str, tuple[int, np.ndarray]]) -> dict[str, dict[int, float]]:
    """:func:`alignment_scores` of directions already computed."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for cluster, d in directions.values():
        sums[cluster] = sums[cluster] + d if cluster in sums else d.copy()
        counts[cluster] = counts.get(cluster, 0) + 1
    scores: dict[str, dict[int, float]] = {}
    for cid, (own, d) in directions.items():
        mine: dict[int, float] = {}
        for cluster, total in sums.items():
            if counts[cluster] - (1 if cluster == own else 0) == 0:
                continue
            reference = total - d if cluster == own else total
            norm = float(np.linalg.norm(reference))
            if norm > 0.0:
                mine[cluster] = float(d @ reference) / norm
        scores[cid] = mine
    return scores


def _best_peers(
    directions: Mapping[str, tuple[int, np.ndarray]],
) -> tuple[dict[str, tuple[str, float]], dict[str, float]]:
    """Each member's most aligned member of *another* cluster and their cosine, and each
    member's highest cosine with a member of its *own* cluster.

    One matrix product of the unit directions (ties go to the smaller client id).
    """
    ids = sorted(directions)
    if len(ids) < 2:
        return {}, {}
    clusters = np.array([directions[c][0] for c in ids])
    units = np.stack([directions[c][1] for c in ids])
    cosines = units @ units.T
    same = clusters[:, None] == clusters[None, :]
    home = np.where(same, cosines, -np.inf)
    np.fill_diagonal(home, -np.inf)
    cosines[same] = -np.inf  # same cluster (and self)
    out: dict[str, tuple[str, float]] = {}
    closest_home: dict[str, float] = {}
    for row, cid in enumerate(ids):
        col = int(np.argmax(cosines[row]))
        if np.isfinite(cosines[row, col]):
            out[cid] = (ids[col], float(cosines[row, col]))
        nearest = float(np.max(home[row]))
        if math.isfinite(nearest):
            closest_home[cid] = nearest
    return out, closest_home


class AlignmentTracker:
    """Counts, per member, the rounds its updates align with one cluster.

    Parameters
    ----------
    after_rounds
        Rounds of agreeing evidence that move a member (the count's ceiling), >= 1.
    margin
        How much better than its own cluster another cluster must align to count (>= 0).
    evidence
        The evidence so far (read back by :meth:`evidence_from_json`).
    """

    def __init__(
        self,
        *,
        after_rounds: int,
        margin: float = 0.0,
        evidence: Mapping[str, Evidence] | None = None,
    ) -> None:
        if after_rounds < 1:
            raise ValueError(f"after_rounds must be >= 1, got {after_rounds}")
        if not (math.isfinite(margin) and margin >= 0.0):
            raise ValueError(f"margin must be finite and >= 0, got {margin}")
        self.after_rounds = after_rounds
        self.margin = margin
        self._evidence: dict[str, Evidence] = dict(evidence or {})

    @property
    def evidence(self) -> dict[str, Evidence]:
        """The evidence per member (a copy)."""
        return dict(self._evidence)

    def best_clusters(self, updates: Sequence[ClientUpdate], *, new_id: int) -> dict[str, int]:
        """The cluster each comparable participant's update aligns with best this round.

        A member with another participant in its own cluster names the cluster whose
        reference aligns best, when that beats its standing at home by more than the margin
        (else its own); its standing is the higher of its own cluster's leave-one-out score
        and its cosine with its closest member there. Two members of different clusters
        that are each other's best peer, aligned with each other at least as well as with
        any cluster and by more than the margin over their standing at home (0 for a member
        alone in its cluster this round, which otherwise gives no evidence), are a pair:
        they name the cluster of the one alone in its cluster (the lower id when both are),
        else a new cluster together: ids ``new_id``, ``new_id + 1``, ... in the order of each
        pair's smaller client id.
        """
        directions = _directions(updates)
        all_scores = _scores(directions)
        peers, closest_home = _best_peers(directions)
        debug = logger.isEnabledFor(logging.DEBUG)
        sizes = Counter(cluster for cluster, _ in directions.values())
        best: dict[str, int] = {}
        standing: dict[str, float] = {}
        wants_peer: dict[str, str] = {}
        for cid, (cluster, _) in sorted(directions.items()):
            scores = all_scores.get(cid, {})
            own = scores.get(cluster)
            # how well it sits at home: the leave-one-out mean, or its closest member there
            # when that is higher (a hostile member cannot lower a maximum)
            home = None if own is None else max(own, closest_home.get(cid, own))
            top = max(sorted(scores), key=lambda c: scores[c]) if scores else None
            if home is not None:
                standing[cid] = home
                if top is not None:
                    best[cid] = top if scores[top] > home + self.margin else cluster
            peer = peers.get(cid)
            if peer is not None:
                bar = max(home if home is not None else 0.0, 0.0) + self.margin
                if peer[1] > bar and (top is None or peer[1] >= scores[top]):
                    wants_peer[cid] = peer[0]
            if debug:
                logger.debug(
                    "refinement: client %s (cluster %d) scores %s, best peer %s",
                    cid,
                    cluster,
                    {k: round(v, 3) for k, v in sorted(scores.items())},
                    (peer[0], round(peer[1], 3)) if peer else None,
                )
        pairs = sorted((a, b) for a, b in wants_peer.items() if wants_peer.get(b) == a and a < b)
        opened = 0
        for a, b in pairs:
            alone = sorted(directions[c][0] for c in (a, b) if sizes[directions[c][0]] == 1)
            if alone:
                best[a] = best[b] = alone[0]
            else:
                best[a] = best[b] = new_id + opened
                opened += 1
            logger.info(
                "clients %s and %s (clusters %d and %d) align with each other (cos %.3f) "
                "more than with any cluster: evidence for cluster %d",
                a,
                b,
                directions[a][0],
                directions[b][0],
                peers[a][1],
                best[a],
            )
        paired = {c for pair in pairs for c in pair}
        for cid, target in sorted(best.items()):
            cluster = directions[cid][0]
            if target != cluster and cid not in paired:
                scores = all_scores[cid]
                logger.info(
                    "client %s (cluster %d) aligns with cluster %d (cos %.3f) more than with "
                    "its standing at home (cos %.3f) by over the margin %.3f",
                    cid,
                    cluster,
                    target,
                    scores[target],
                    standing[cid],
                    self.margin,
                )
        return best

    def observed(self, updates: Sequence[ClientUpdate], *, new_id: int) -> dict[str, Evidence]:
        """The evidence after one more round's ``updates`` (the tracker is not changed).

        ``new_id`` is the first cluster id no client holds (for pairs that split off).
        """
        out = dict(self._evidence)
        for cid, best in self.best_clusters(updates, new_id=new_id).items():
            held = out.get(cid)
            if held is None:
                out[cid] = Evidence(best, 1)
            elif held.cluster_id == best:
                out[cid] = Evidence(best, min(held.rounds + 1, self.after_rounds))
            elif held.rounds > 1:
                out[cid] = Evidence(held.cluster_id, held.rounds - 1)
            else:
                out[cid] = Evidence(best, 1)
        return out

    def commit(self, evidence: Mapping[str, Evidence]) -> bool:
        """Take ``evidence`` (from :meth:`observed`); True when it differs from before."""
        changed = dict(evidence) != self._evidence
        self._evidence = dict(evidence)
        return changed

    def forget(self, members: frozenset[str]) -> None:
        """Drop the evidence of clients that are no longer ``members``."""
        self._evidence = {c: e for c, e in self._evidence.items() if c in members}

    @staticmethod
    def evidence_to_json(evidence: Mapping[str, Evidence]) -> str:
        """Evidence as JSON (durable with each completed round)."""
        return json.dumps(
            {c: [e.cluster_id, e.rounds] for c, e in sorted(evidence.items())},
            separators=(",", ":"),
        )

    @staticmethod
    def evidence_from_json(text: str) -> dict[str, Evidence]:
        """Read :meth:`evidence_to_json`'s output.

        Raises
        ------
        ValueError
            If the text is not such an object.
        """
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("refinement evidence must be a JSON object")
        out: dict[str, Evidence] = {}
        for cid, value in raw.items():
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or value[0] < 0
                or value[1] < 0
            ):
                raise ValueError(f"refinement evidence of {cid!r} is not [cluster, rounds]")
            out[str(cid)] = Evidence(int(value[0]), int(value[1]))
        return out

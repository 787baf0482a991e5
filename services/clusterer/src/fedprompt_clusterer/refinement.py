"""Cluster refinement: metadata is the cold start, the members' prompt updates correct it.

A silo's public metadata can mislead (a clinic that publishes another group's specialty):
the clusterer then places it in the wrong group, where it trains and evaluates with the
wrong cluster's prompt and head. The coordinator sees every member's update and counts,
round by round, which cluster's other members' updates each member's updates align with
(``UpdateAlignment``: a cluster id and the rounds of evidence for it). The rule applied
here, after the metadata clustering has given its stable ids, is stateless:

- a member moves to the cluster its evidence names when that evidence reaches
  ``after_rounds`` rounds;
- a member that the previous assignment already placed there stays while the evidence
  holds at least one round (hysteresis: the coordinator counts the evidence down one per
  contrary round, so leaving takes as many rounds as arriving);
- evidence that names the member's metadata cluster changes nothing;
- a cluster id the metadata clustering does not use opens a new cluster only when at
  least :data:`MIN_NEW_CLUSTER` members qualify for it (a group the metadata scattered over
  several clusters, found by the coordinator as members that align with each other); a
  lone member's evidence for such an id changes nothing. The coordinator names new ids
  above every id it holds; should the metadata clustering give the same id to a new group
  of its own in the same run, the members join that group.

The coordinator keeps the count; the clusterer only decides, so a restarted or replaced
clusterer gives the same answer to the same request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedprompt.errors import InvalidArgumentError

#: Largest ``refine_after_rounds`` a request may carry.
MAX_REFINE_AFTER_ROUNDS = 10_000
#: Members that must name a cluster id the metadata clustering does not use to open it.
MIN_NEW_CLUSTER = 2


@dataclass(frozen=True)
class UpdateAlignment:
    """Which cluster a member's recent updates align with, and how many rounds say so.

    Attributes
    ----------
    client_id
        The member.
    cluster_id
        The cluster (>= 0) whose other members' updates this member's updates align with.
    rounds
        The evidence for ``cluster_id`` in rounds (>= 0).
    """

    client_id: str
    cluster_id: int
    rounds: int


def check_alignment(
    alignment: Sequence[UpdateAlignment], members: Sequence[str], *, after_rounds: int
) -> None:
    """Reject evidence the rule cannot use.

    Raises
    ------
    InvalidArgumentError
        If ``after_rounds`` is out of range, an entry names a client that is not a member
        or names one twice, or a cluster id or round count is negative.
    """
    if not 0 <= after_rounds <= MAX_REFINE_AFTER_ROUNDS:
        raise InvalidArgumentError(
            f"refine_after_rounds must be in [0, {MAX_REFINE_AFTER_ROUNDS}], got {after_rounds}"
        )
    known = set(members)
    seen: set[str] = set()
    for entry in alignment:
        if entry.client_id not in known:
            raise InvalidArgumentError(
                f"alignment names client {entry.client_id!r}, which is not among the members"
            )
        if entry.client_id in seen:
            raise InvalidArgumentError(f"alignment names client {entry.client_id!r} twice")
        seen.add(entry.client_id)
        if entry.cluster_id < 0:
            raise InvalidArgumentError(
                f"alignment of client {entry.client_id!r}: cluster id must be >= 0, "
                f"got {entry.cluster_id}"
            )
        if entry.rounds < 0:
            raise InvalidArgumentError(
                f"alignment of client {entry.client_id!r}: rounds must be >= 0, got {entry.rounds}"
            )


def refine(
    assignment: Mapping[str, int],
    previous: Mapping[str, int],
    alignment: Sequence[UpdateAlignment],
    *,
    after_rounds: int,
) -> tuple[dict[str, int], tuple[str, ...]]:
    """The metadata ``assignment`` corrected by the members' update alignment.

    Parameters
    ----------
    assignment
        Cluster id per member from the metadata clustering (stable ids).
    previous
        The previous assignment (refined members included), as the caller sent it.
    alignment
        The evidence, checked by :func:`check_alignment`.
    after_rounds
        Rounds of evidence that move a member; 0 turns refinement off.

    Returns
    -------
    tuple
        The refined assignment, and the members it placed by their updates (sorted).
    """
    out = dict(assignment)
    if after_rounds == 0:
        return out, ()
    wanted: dict[str, int] = {}
    for entry in sorted(alignment, key=lambda e: e.client_id):
        cid, target = entry.client_id, entry.cluster_id
        if target == assignment[cid]:
            continue
        arrives = entry.rounds >= after_rounds
        stays = entry.rounds >= 1 and previous.get(cid) == target
        if arrives or stays:
            wanted[cid] = target
    in_use = set(assignment.values())
    askers = Counter(wanted.values())
    opened = {t for t, n in askers.items() if t not in in_use and n >= MIN_NEW_CLUSTER}
    refined = sorted(c for c, t in wanted.items() if t in in_use or t in opened)
    for cid in refined:
        out[cid] = wanted[cid]
    return out, tuple(refined)

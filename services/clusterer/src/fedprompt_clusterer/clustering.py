"""Group federation members by their public metadata, with cluster ids stable across runs.

:class:`MetadataClusterer` encodes the metadata (:mod:`fedprompt_clusterer.features`), runs
HDBSCAN, re-assigns the points HDBSCAN calls noise, and finally matches the new clusters to
the previous assignment so that a group keeps its id from one round to the next.

Small federations
    Cross-silo federations have 3-30 members, where HDBSCAN's defaults label everything as
    noise. The defaults here are ``min_cluster_size=2`` and ``min_samples=1``.
    ``allow_single_cluster`` stays off: on a handful of points it lets the root of the
    cluster tree win and merges groups that are clearly apart; the fallback below covers
    the case where HDBSCAN then finds nothing.

Fallback when HDBSCAN finds no cluster at all
    This happens with fewer members than ``min_cluster_size``, or when every point is noise.
    With :attr:`NoisePolicy.NEAREST` there is no cluster to join, so all members form a
    single cluster; with :attr:`NoisePolicy.SINGLETON` each member becomes a cluster of its
    own. Either way every member is reported in ``noise_reassigned``. One member, or members
    whose features are all identical, form a single cluster without running HDBSCAN (and
    without noise).

Stable ids
    New clusters are matched one-to-one to previous ids by maximum member overlap
    (Hungarian matching, :func:`scipy.optimize.linear_sum_assignment`). A new cluster that
    shares no member with any unmatched previous cluster gets a fresh id, counting up from
    the largest id in the previous assignment plus one, so an id that existed before is
    never given to a different group. With no previous assignment the ids are 0, 1, ...
    in the order of each cluster's smallest client id, which makes the output independent
    of the members' order.

Refinement from the members' updates
    When the request carries update alignment (:mod:`fedprompt_clusterer.refinement`), the
    metadata assignment is the cold start and members whose updates have aligned with
    another cluster for enough rounds are placed there (``refined``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import hdbscan
import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from fedprompt.client_input import MetadataValue
from fedprompt.errors import InvalidArgumentError
from fedprompt_clusterer.features import FeatureMatrix, build_features
from fedprompt_clusterer.refinement import UpdateAlignment, check_alignment, refine

logger = logging.getLogger(__name__)

#: HDBSCAN ``min_cluster_size`` used when the caller does not choose one.
DEFAULT_MIN_CLUSTER_SIZE = 2
#: HDBSCAN ``min_samples`` used when the caller does not choose one.
DEFAULT_MIN_SAMPLES = 1
#: Largest cluster id (ids travel as ``int32``).
MAX_CLUSTER_ID = 2**31 - 1

Labels = npt.NDArray[np.int64]


class NoisePolicy(enum.StrEnum):
    """What happens to members HDBSCAN labels as noise."""

    NEAREST = "nearest"
    """Join the cluster whose centroid (mean feature vector) is nearest."""
    SINGLETON = "singleton"
    """Become a cluster of one."""


@dataclass(frozen=True)
class ClusteringSettings:
    """Knobs of one clustering run.

    Attributes
    ----------
    min_cluster_size
        HDBSCAN ``min_cluster_size``: the smallest group that counts as a cluster (>= 2).
    min_samples
        HDBSCAN ``min_samples`` (>= 1); values above the number of members are clamped.
    noise_policy
        What happens to noise points.
    """

    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE
    min_samples: int = DEFAULT_MIN_SAMPLES
    noise_policy: NoisePolicy = NoisePolicy.NEAREST

    def __post_init__(self) -> None:
        """Reject values HDBSCAN cannot use."""
        if self.min_cluster_size < 2:
            raise InvalidArgumentError(
                f"min_cluster_size must be at least 2, got {self.min_cluster_size}"
            )
        if self.min_samples < 1:
            raise InvalidArgumentError(f"min_samples must be at least 1, got {self.min_samples}")


@dataclass(frozen=True)
class Member:
    """One federation member and its public metadata.

    Attributes
    ----------
    client_id
        The member's unique, non-empty id.
    metadata
        Flat mapping of field name to number, string or boolean.
    """

    client_id: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterResult:
    """The outcome of one clustering run.

    Attributes
    ----------
    assignment
        Cluster id (>= 0) per client id, for every member.
    num_clusters
        Number of distinct ids in ``assignment``.
    noise_reassigned
        Client ids HDBSCAN called noise, re-assigned by the noise policy, in member order.
    feature_names
        Names of the feature columns the clustering used.
    seconds
        Wall-clock run time of the clustering.
    refined
        Client ids placed by their update alignment instead of their metadata (sorted).
    refinement_applied
        Whether the run applied refinement (``refine_after_rounds`` > 0).
    """

    assignment: Mapping[str, int]
    num_clusters: int
    noise_reassigned: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    seconds: float = 0.0
    refined: tuple[str, ...] = ()
    refinement_applied: bool = False


class MetadataClusterer:
    """Cluster members by metadata with HDBSCAN and keep cluster ids stable.

    The object holds no state between calls; the caller passes the previous assignment.
    """

    def cluster(
        self,
        members: Sequence[Member],
        *,
        previous: Mapping[str, int],
        settings: ClusteringSettings,
        alignment: Sequence[UpdateAlignment] = (),
        refine_after_rounds: int = 0,
    ) -> ClusterResult:
        """Assign every member to a cluster.

        Parameters
        ----------
        members
            The current members, with unique client ids.
        previous
            Cluster id per client id from the last run (may name former members); empty on
            the first run.
        settings
            HDBSCAN parameters and noise policy.
        alignment
            Update alignment per member (:mod:`fedprompt_clusterer.refinement`).
        refine_after_rounds
            Rounds of alignment evidence that move a member; 0: metadata alone decides.

        Returns
        -------
        ClusterResult
            The assignment with stable ids.

        Raises
        ------
        InvalidArgumentError
            If there are no members, a client id is empty or repeated, a previous id is
            negative, some metadata is not a flat object of scalars, or the alignment names
            a non-member, names one twice or holds a negative value.
        """
        start = time.perf_counter()
        client_ids = _checked_client_ids(members)
        _check_previous(previous)
        check_alignment(alignment, client_ids, after_rounds=refine_after_rounds)
        features = build_features(client_ids, [m.metadata for m in members])
        labels, noise = _cluster_labels(features, settings)
        labels = _canonical_labels(labels, client_ids)
        ids = assign_stable_ids(client_ids, labels, previous)
        assignment, refined = refine(
            dict(zip(client_ids, ids, strict=True)),
            previous,
            alignment,
            after_rounds=refine_after_rounds,
        )
        seconds = time.perf_counter() - start
        result = ClusterResult(
            assignment=MappingProxyType(assignment),
            num_clusters=len(set(assignment.values())),
            noise_reassigned=tuple(
                cid for cid, is_noise in zip(client_ids, noise, strict=True) if is_noise
            ),
            feature_names=features.names,
            seconds=seconds,
            refined=refined,
            refinement_applied=refine_after_rounds > 0,
        )
        logger.info(
            "clustered %d members into %d clusters (%d noise reassigned, %d placed by their "
            "updates, %d features) in %.3f s",
            len(client_ids),
            result.num_clusters,
            len(result.noise_reassigned),
            len(refined),
            len(features.names),
            seconds,
        )
        return result


def assign_stable_ids(
    client_ids: Sequence[str], labels: Labels, previous: Mapping[str, int]
) -> list[int]:
    """Turn labels ``0..k-1`` into cluster ids that keep the previous run's ids.

    Parameters
    ----------
    client_ids
        The members, in the order of ``labels``.
    labels
        Cluster label per member, the values ``0..k-1`` all present.
    previous
        Previous cluster id (>= 0) per client id.

    Returns
    -------
    list[int]
        Cluster id per member. Labels matched (by maximum overlap) to a previous id get
        that id; the others get fresh ids above every previous id, in label order.

    Raises
    ------
    InvalidArgumentError
        If fresh ids would exceed :data:`MAX_CLUSTER_ID`.
    """
    num_labels = int(labels.max()) + 1 if len(labels) else 0
    previous_ids = sorted(set(previous.values()))
    id_of_label: dict[int, int] = {}
    if previous_ids:
        column = {cluster_id: j for j, cluster_id in enumerate(previous_ids)}
        overlap = np.zeros((num_labels, len(previous_ids)), dtype=np.int64)
        for client_id, label in zip(client_ids, labels, strict=True):
            if client_id in previous:
                overlap[label, column[previous[client_id]]] += 1
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        for row, col in zip(rows, cols, strict=True):
            if overlap[row, col] > 0:
                id_of_label[int(row)] = previous_ids[int(col)]
    next_id = previous_ids[-1] + 1 if previous_ids else 0
    for label in range(num_labels):
        if label not in id_of_label:
            if next_id > MAX_CLUSTER_ID:
                raise InvalidArgumentError("no fresh cluster id left below 2**31")
            id_of_label[label] = next_id
            next_id += 1
    return [id_of_label[int(label)] for label in labels]


def _checked_client_ids(members: Sequence[Member]) -> list[str]:
    """Return the members' ids after checking there is one at least, none empty or repeated."""
    if not members:
        raise InvalidArgumentError("at least one member is required")
    client_ids = [m.client_id for m in members]
    if any(not cid for cid in client_ids):
        raise InvalidArgumentError("every member needs a non-empty client_id")
    seen: set[str] = set()
    for cid in client_ids:
        if cid in seen:
            raise InvalidArgumentError(f"client {cid!r} appears more than once")
        seen.add(cid)
    return client_ids


def _check_previous(previous: Mapping[str, int]) -> None:
    """Reject negative previous cluster ids."""
    for cid, cluster_id in previous.items():
        if cluster_id < 0:
            raise InvalidArgumentError(
                f"previous cluster id of client {cid!r} must be >= 0, got {cluster_id}"
            )


def _cluster_labels(
    features: FeatureMatrix, settings: ClusteringSettings
) -> tuple[Labels, npt.NDArray[np.bool_]]:
    """Labels ``0..k-1`` for every member after the noise policy, and the noise mask."""
    values = features.values
    n = values.shape[0]
    no_noise = np.zeros(n, dtype=np.bool_)
    if n == 1 or values.shape[1] == 0 or len(np.unique(values, axis=0)) == 1:
        return np.zeros(n, dtype=np.int64), no_noise
    if n < settings.min_cluster_size:
        raw = np.full(n, -1, dtype=np.int64)
    else:
        raw = _hdbscan_labels(values, settings)
    noise = raw < 0
    if not noise.any():
        return raw, noise
    if noise.all():
        if settings.noise_policy is NoisePolicy.SINGLETON:
            return np.arange(n, dtype=np.int64), noise
        return np.zeros(n, dtype=np.int64), noise
    if settings.noise_policy is NoisePolicy.SINGLETON:
        labels = raw.copy()
        labels[noise] = raw.max() + 1 + np.arange(int(noise.sum()))
        return labels, noise
    return _join_nearest_centroid(values, raw), noise


def _hdbscan_labels(values: npt.NDArray[np.float64], settings: ClusteringSettings) -> Labels:
    """Raw HDBSCAN labels, ``-1`` for noise."""
    model = hdbscan.HDBSCAN(
        min_cluster_size=settings.min_cluster_size,
        min_samples=min(settings.min_samples, values.shape[0]),
        core_dist_n_jobs=1,
    )
    labels: Labels = np.asarray(model.fit_predict(values), dtype=np.int64)
    return labels


def _join_nearest_centroid(values: npt.NDArray[np.float64], raw: Labels) -> Labels:
    """Give each noise point (label < 0) the label of the nearest cluster centroid.

    Ties go to the lowest label.
    """
    cluster_labels = np.unique(raw[raw >= 0])
    centroids = np.stack([values[raw == label].mean(axis=0) for label in cluster_labels])
    labels = raw.copy()
    for index in np.flatnonzero(raw < 0):
        distances = np.linalg.norm(centroids - values[index], axis=1)
        labels[index] = cluster_labels[int(np.argmin(distances))]
    return labels


def _canonical_labels(labels: Labels, client_ids: Sequence[str]) -> Labels:
    """Renumber labels ``0..k-1`` in the order of each cluster's smallest client id."""
    smallest: dict[int, str] = {}
    for cid, label in zip(client_ids, labels, strict=True):
        key = int(label)
        if key not in smallest or cid < smallest[key]:
            smallest[key] = cid
    order = sorted(smallest, key=smallest.__getitem__)
    new_label = {old: new for new, old in enumerate(order)}
    return np.array([new_label[int(label)] for label in labels], dtype=np.int64)


@dataclass(frozen=True)
class ClusteringRequest:
    """Everything one clustering run needs, as it arrives from the caller.

    Attributes
    ----------
    members
        The current members.
    previous
        Cluster id per client id from the last run.
    settings
        HDBSCAN parameters and noise policy.
    alignment
        Update alignment per member (cluster refinement).
    refine_after_rounds
        Rounds of alignment evidence that move a member (0: refinement off).
    """

    members: tuple[Member, ...]
    previous: Mapping[str, int] = field(default_factory=dict)
    settings: ClusteringSettings = field(default_factory=ClusteringSettings)
    alignment: tuple[UpdateAlignment, ...] = ()
    refine_after_rounds: int = 0

"""Secure aggregation of one round, without any gRPC: the coordinator's side of SecAgg+.

One :class:`~fedprompt.secagg.SecAggServer` per cluster among the round's participants
(group ``cluster-<k>``, a fresh 32-byte seed from :mod:`secrets`). :class:`SecureRound`
builds what each member's task carries at each stage, takes the members' answers
(:meth:`SecureRound.add_step`) and masked uploads (:meth:`SecureRound.add_masked`), and
after unmasking turns each group's decoded sums into the round's model
(:meth:`SecureRound.aggregate`)::

    keys (KEY_EXCHANGE) -> shares (KEY_EXCHANGE) -> masked inputs (TRAINING)
    -> unmask (UNMASKING) -> sums (AGGREGATION)

Each member's vector is its delta, every part clipped by the member to the task's bound and
multiplied by its level's weight, plus the weights themselves (``secagg.weight.global``,
``secagg.weight.cluster``). With the decoded sums of group k:

    C_k += Σ_k w_c ΔC / Σ_k w_c          G += Σ_groups Σ w_g ΔG / Σ_groups Σ w_g

(under DP the weights are 1 and the denominators the expected participants, m_k and m,
as in central DP-FedAvg). What this object never does is leak: a group with fewer members
than ``min_group_size``, fewer keys, shares or masked uploads than its ``min_survivors``, or
too few unmasking shares is skipped (its cluster tensors keep their value), and a group
whose decoded sum is larger than its members' clipped, weighted updates can make
(a malicious member's out-of-range input) is rejected, reported and skipped too.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt.errors import (
    InvalidArgumentError,
    NotParticipantError,
    ShapeMismatchError,
    WrongRoundError,
)
from fedprompt.secagg import (
    FixedPoint,
    GroupSetup,
    Layout,
    NotEnoughSharesError,
    SecAggError,
    SecAggServer,
    degree_for_dropout,
    min_survivors,
    share_threshold,
)
from fedprompt.tensor_names import SECAGG_WEIGHT_CLUSTER as WEIGHT_CLUSTER
from fedprompt.tensor_names import SECAGG_WEIGHT_GLOBAL as WEIGHT_GLOBAL
from fedprompt_coordinator.aggregation.dp_levels import cluster_dp_level
from fedprompt_coordinator.aggregation.levels import Released
from fedprompt_coordinator.aggregation.parts import Part, part_of
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import (
    FederationModel,
    SecAggEncoding,
    SecAggStep,
    SecAggTask,
    TensorSpec,
)
from fedprompt_coordinator.privacy import LevelMechanism
from fedprompt_coordinator.validation import validate_update

logger = logging.getLogger(__name__)

#: The global level's clip key under DP.
GLOBAL = "global"
#: Encoding range allowance for a member's noise, in standard deviations (per coordinate).
ENCODE_NOISE_SIGMAS = 10.0
#: Post-unmask bound check allowance for the summed noise: 6·σ·sqrt(dim).
CHECK_NOISE_SIGMAS = 6.0
#: Relative slack of the post-unmask bound check (fixed-point rounding).
CHECK_SLACK = 1e-6
#: Stages of a secure round, in order.
STAGES = ("keys", "shares", "training", "unmask", "done")


def group_name(cluster: int) -> str:
    """The secure-aggregation group of a cluster."""
    return f"cluster-{cluster}"


def dp_levels(mechanisms: Mapping[str, LevelMechanism]) -> dict[str, tuple[float, float]]:
    """(z_l, S_l) of each DP level's distributed noise: the one place that decides them.

    ``mechanisms`` are the privacy budget's (:func:`~fedprompt_coordinator.privacy.
    level_mechanisms`): each member adds N(0, (z_l·S_l)² / min_survivors) to the coordinates
    of level l, so that a released sum of at least min_survivors members carries z_l·S_l.
    """
    return {level: (m.noise_multiplier, m.clip_norm) for level, m in mechanisms.items()}


@dataclass(frozen=True)
class SecurePlan:
    """What the configuration decides for every secure round.

    Attributes
    ----------
    min_group_size
        Smaller groups are skipped.
    max_dropout
        Fraction of a group that may drop before its sum is withheld.
    clip_bounds
        L2 bound by part name, or by level under DP.
    weighting
        ``examples``, ``contrastive`` or ``unit`` (DP).
    weight_cap
        Largest weight of one member.
    temperature
        τ of the members' InfoNCE probability.
    dp
        (z, S) by level under DP (None: no noise).
    min_cluster_members
        Under DP, clusters whose expected participants are fewer are not released (their
        members' sums still count towards the global level).
    server_learning_rate
        η applied to the averaged deltas under DP.
    """

    min_group_size: int
    max_dropout: float
    clip_bounds: Mapping[str, float]
    weighting: str
    weight_cap: float
    temperature: float = 0.5
    dp: Mapping[str, tuple[float, float]] | None = None
    server_learning_rate: float = 1.0
    #: Under DP: a cluster whose expected participants m_k are fewer keeps its tensors.
    min_cluster_members: float = 0.0

    @classmethod
    def from_config(
        cls, config: CoordinatorConfig, *, mechanisms: Mapping[str, LevelMechanism] | None
    ) -> SecurePlan:
        """The plan of ``config`` (``mechanisms``: the budget's (S_l, z_l), None without DP).

        Under DP the clip keys are the DP levels (``global``, ``cluster``, ``head``), every
        level is noised (the configuration refuses DP on some levels only) and weights are 1.
        """
        secure = config.secure_aggregation
        privacy = config.privacy
        dp = None
        if mechanisms is not None:
            dp = dp_levels(mechanisms)
            bounds = {level: s for level, (_, s) in dp.items()}
            weighting = "unit"
        else:
            bounds = {p.value: secure.bound_of(p) for p in Part}
            fpl = config.strategy.value == "fpl"
            contrastive = fpl and config.contrastive.server_weighting == "contrastive"
            weighting = "contrastive" if contrastive else "examples"
        return cls(
            min_group_size=secure.min_group_size,
            max_dropout=secure.max_dropout,
            clip_bounds=bounds,
            weighting=weighting,
            weight_cap=secure.max_weight,
            temperature=config.contrastive.temperature,
            dp=dp,
            server_learning_rate=privacy.server_learning_rate if dp is not None else 1.0,
            min_cluster_members=privacy.min_cluster_members if dp is not None else 0.0,
        )


@dataclass
class _Group:
    """One cluster's group in one round."""

    cluster: int
    members: tuple[str, ...]
    setup: GroupSetup
    server: SecAggServer
    noise_std: dict[str, float]
    #: None while the group goes on; else why it was skipped ("released" once aggregated).
    outcome: str | None = None
    unmask_answered: set[str] = field(default_factory=set)
    #: Members that got a TRAIN task; whether the group was still open when it went out.
    trained: frozenset[str] = frozenset()
    masking: bool = False


class SecureRound:
    """One round's secure aggregation over its clusters' groups (no gRPC, no clock).

    Parameters
    ----------
    round_id
        The round.
    participants
        Client id -> cluster of the round's participants.
    spec
        The federation's tensor spec (every shared tensor).
    global_names
        Names of the global level's tensors.
    examples
        Client id -> example count declared at Join (the weight's upper bound).
    plan
        What the configuration decides.
    seed
        Source of each group's 32-byte seed (``secrets.token_bytes``).
    """

    def __init__(
        self,
        *,
        round_id: int,
        participants: Mapping[str, int],
        spec: Sequence[TensorSpec],
        global_names: Collection[str],
        examples: Mapping[str, int],
        plan: SecurePlan,
        seed: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.round = round_id
        self.plan = plan
        self._participants = dict(participants)
        self._examples = dict(examples)
        self._global = tuple(sorted(global_names))
        self._clip_keys = {s.name: self._clip_key(s.name) for s in spec}
        missing = sorted({k for k in self._clip_keys.values() if k not in plan.clip_bounds})
        if missing:
            raise InvalidArgumentError(f"secure aggregation has no clip bound for {missing}")
        shapes = {s.name: tuple(s.shape) for s in spec}
        shapes[WEIGHT_GLOBAL] = (1,)
        shapes[WEIGHT_CLUSTER] = (1,)
        self.layout: Layout = tuple(sorted(shapes.items()))
        self.masked_spec = tuple(TensorSpec(n, "U64", shape) for n, shape in self.layout)
        self.stage = STAGES[0]
        self.bytes = 0
        #: Clusters whose cluster tensors DP did not release (too few expected members).
        self.dp_skipped: list[int] = []
        #: The aggregated model, once :meth:`aggregate` ran.
        self.result: FederationModel | None = None
        #: Which tensors :meth:`aggregate` moved (what a server optimizer steps).
        self.released_tensors = Released()
        self._groups: dict[int, _Group] = {}
        self._small: dict[int, tuple[str, ...]] = {}
        by_cluster: dict[int, list[str]] = {}
        for cid, cluster in sorted(participants.items()):
            by_cluster.setdefault(cluster, []).append(cid)
        for cluster, members in sorted(by_cluster.items()):
            if len(members) < plan.min_group_size:
                self._small[cluster] = tuple(members)
                logger.info(
                    "round %d: cluster %d has %d participants, fewer than min_group_size %d: "
                    "not aggregated this round",
                    round_id,
                    cluster,
                    len(members),
                    plan.min_group_size,
                )
                continue
            noise = self._noise_std(len(members))
            setup = GroupSetup.create(
                round=round_id,
                group=group_name(cluster),
                members=members,
                layout=self.layout,
                max_abs=self._max_abs(noise),
                seed=seed(32),
                max_dropout=plan.max_dropout,
            )
            if noise and setup.min_survivors != self._min_survivors(len(members)):
                raise RuntimeError("the noise shares were sized for another min_survivors")
            self._groups[cluster] = _Group(
                cluster, tuple(setup.members), setup, SecAggServer(setup), noise
            )

    # ------------------------------------------------------------------ plan helpers

    def _clip_key(self, name: str) -> str:
        """The part of a tensor, or under DP its DP level (global, cluster or head)."""
        if self.plan.dp is not None:
            return GLOBAL if name in self._global else cluster_dp_level(name).value
        return part_of(name).value

    def _min_survivors(self, members: int) -> int:
        """The group's min_survivors, as :meth:`GroupSetup.create` will set it."""
        degree = degree_for_dropout(members, max_dropout=self.plan.max_dropout)
        return min_survivors(members, share_threshold(degree), max_dropout=self.plan.max_dropout)

    def _noise_std(self, members: int) -> dict[str, float]:
        """Per-member noise std by level: z·S / sqrt(min_survivors) (none without DP)."""
        if self.plan.dp is None:
            return {}
        survivors = self._min_survivors(members)
        return {lvl: z * s / math.sqrt(survivors) for lvl, (z, s) in self.plan.dp.items()}

    def _max_abs(self, noise: Mapping[str, float]) -> float:
        """The largest |coordinate| an honest member encodes (weights included)."""
        weight = 1.0 if self.plan.weighting == "unit" else self.plan.weight_cap
        sigma = max(noise.values(), default=0.0)
        bound = max(self.plan.clip_bounds.values())
        return max(weight * bound + ENCODE_NOISE_SIGMAS * sigma, weight)

    def _max_weight(self, cid: str) -> float:
        if self.plan.weighting == "unit":
            return 1.0
        return float(min(self._examples.get(cid, 0), self.plan.weight_cap))

    def encoding(self, cluster: int) -> SecAggEncoding:
        """How the members of ``cluster`` encode their deltas."""
        group = self._groups[cluster]
        return SecAggEncoding(
            clip_bounds=dict(self.plan.clip_bounds),
            clip_keys=dict(self._clip_keys),
            weighting=self.plan.weighting,
            weight_cap=self.plan.weight_cap,
            noise_std=dict(group.noise_std),
            max_abs=self._max_abs(group.noise_std),
            temperature=self.plan.temperature,
            global_tensors=self._global,
        )

    # ------------------------------------------------------------------ stages

    def _open(self) -> list[_Group]:
        return [g for g in self._groups.values() if g.outcome is None]

    def _skip(self, group: _Group, why: str) -> None:
        group.outcome = why
        logger.warning(
            "round %d: group %s is not aggregated this round: %s",
            self.round,
            group.setup.group,
            why,
        )

    def _group_of(self, client_id: str) -> _Group | None:
        cluster = self._participants.get(client_id)
        return None if cluster is None else self._groups.get(cluster)

    def keys_tasks(self) -> dict[str, SecAggTask]:
        """Stage 1: each member of each group gets its group's setup and neighbours."""
        return {
            cid: SecAggTask(
                group=g.setup.group, setup=g.setup, neighbours=tuple(g.setup.neighbours(cid))
            )
            for g in self._open()
            for cid in g.members
        }

    def keys_complete(self, alive: Collection[str] | None = None) -> bool:
        """Whether every member of every open group sent its keys (of ``alive``, if given:
        a member whose task stream is gone will not answer)."""
        return all(_answered(g.members, g.server.u1, alive) for g in self._open())

    def open_shares(self) -> dict[str, SecAggTask]:
        """Stage 2: each member of U1 gets its neighbours' public keys."""
        self._advance("keys", "shares")
        tasks: dict[str, SecAggTask] = {}
        for g in self._open():
            try:
                u1 = g.server.close_keys()
            except NotEnoughSharesError:
                self._skip(g, f"{len(g.server.u1)} members sent keys, fewer than needed")
                continue
            for cid in sorted(u1):
                tasks[cid] = SecAggTask(group=g.setup.group, public_keys=g.server.keys_for(cid))
        return tasks

    def shares_complete(self, alive: Collection[str] | None = None) -> bool:
        """Whether every member of U1 of every open group sent its shares (of ``alive``)."""
        return all(_answered(g.server.u1, g.server.u2, alive) for g in self._open())

    def open_training(self) -> dict[str, SecAggTask]:
        """Stage 3: what each participant's TRAIN task carries.

        Members of U2 get the ciphertexts addressed to them and the encoding; members of a
        small or skipped group a task without encoding (train, upload nothing, evaluate).
        Members that dropped out of U1 or U2 get no TRAIN task.
        """
        self._advance("shares", "training")
        tasks: dict[str, SecAggTask] = {}
        for cluster, members in self._small.items():
            for cid in members:
                tasks[cid] = SecAggTask(group=group_name(cluster))
        for g in self._groups.values():
            if g.outcome is None:
                try:
                    g.server.close_shares()
                except NotEnoughSharesError:
                    self._skip(g, f"{len(g.server.u2)} members sent shares, fewer than needed")
            if g.outcome is not None:
                g.trained = frozenset(g.server.u2 if g.server.u2 else g.server.u1)
                for cid in sorted(g.trained):
                    tasks[cid] = SecAggTask(group=g.setup.group)
                continue
            g.trained = frozenset(g.server.u2)
            g.masking = True
            encoding = self.encoding(g.cluster)
            shared = tuple(sorted(g.server.u2))
            for cid in shared:
                tasks[cid] = SecAggTask(
                    group=g.setup.group,
                    ciphertexts=g.server.shares_for(cid),
                    shared=shared,
                    encoding=encoding,
                )
        return tasks

    def expects_masked(self, client_id: str) -> bool:
        """Whether ``client_id`` may upload a masked input now."""
        g = self._group_of(client_id)
        return (
            self.stage == "training"
            and g is not None
            and g.outcome is None
            and client_id in g.server.u2
        )

    def add_masked(self, client_id: str, tensors: Mapping[str, np.ndarray]) -> None:
        """Take a member's masked input (uint64 tensors of the layout; no norm check).

        Raises
        ------
        WrongRoundError
            Outside the training stage.
        NotParticipantError
            From a client that is not a member of an open group's U2.
        ShapeMismatchError
            When names, shapes or dtype differ from the layout (``INVALID_ARGUMENT``).
        """
        if self.stage != "training":
            raise WrongRoundError(f"round {self.round} is not accepting masked inputs")
        if not self.expects_masked(client_id):
            raise NotParticipantError(
                f"client {client_id!r} has no masked input to send in round {self.round}"
            )
        validate_update(tensors, self.masked_spec)
        g = self._group_of(client_id)
        assert g is not None
        try:
            g.server.add_masked(client_id, {k: np.asarray(v) for k, v in tensors.items()})
        except SecAggError as exc:
            raise ShapeMismatchError(str(exc)) from exc
        self.bytes += sum(int(np.asarray(v).nbytes) for v in tensors.values())

    def masked_complete(self, alive: Collection[str] | None = None) -> bool:
        """Whether every member of U2 of every open group uploaded its masked input (of
        ``alive``)."""
        return all(_answered(g.server.u2, g.server.u3, alive) for g in self._open())

    def open_unmask(self) -> dict[str, SecAggTask]:
        """Stage 4: each survivor of a group with enough masked inputs gets the unmask request.

        A group with fewer masked inputs than its ``min_survivors`` is skipped here: no
        unmask request goes out, so nothing of it is ever revealed.
        """
        self._advance("training", "unmask")
        tasks: dict[str, SecAggTask] = {}
        for g in self._open():
            if len(g.server.u3) < g.setup.min_survivors:
                self._skip(
                    g,
                    f"{len(g.server.u3)} masked inputs, fewer than min_survivors "
                    f"{g.setup.min_survivors}",
                )
                continue
            request = g.server.unmask_request()
            for cid in request.survivors:
                tasks[cid] = SecAggTask(group=g.setup.group, unmask=request)
        return tasks

    def unmask_complete(self, alive: Collection[str] | None = None) -> bool:
        """Whether every survivor of every open group answered the unmask request (of
        ``alive``)."""
        return all(_answered(g.server.u3, g.unmask_answered, alive) for g in self._open())

    def _advance(self, expected: str, to: str) -> None:
        if self.stage != expected:
            raise WrongRoundError(f"secure round {self.round} is at {self.stage}, not {expected}")
        self.stage = to

    def add_step(self, step: SecAggStep) -> None:
        """Take a member's answer to a keys, shares or unmask task.

        Raises
        ------
        WrongRoundError
            For another round, or an answer of another stage than the current one
            (``FAILED_PRECONDITION``).
        NotParticipantError
            From a client that is not a member of the named, open group.
        InvalidArgumentError
            When the protocol object refuses the message (twice, malformed, ...).
        """
        if step.round != self.round:
            raise WrongRoundError(
                f"round {step.round} has no secure aggregation in progress (round {self.round})"
            )
        given = [x is not None for x in (step.keys, step.ciphertexts, step.unmask)]
        if sum(given) != 1:
            raise InvalidArgumentError("a secure-aggregation step carries exactly one answer")
        stage = ("keys", "shares", "unmask")[given.index(True)]
        if stage != self.stage:
            raise WrongRoundError(
                f"secure round {self.round} is at stage {self.stage}, not accepting {stage}"
            )
        g = self._group_of(step.client_id)
        if g is None or g.setup.group != step.group or step.client_id not in g.members:
            raise NotParticipantError(
                f"client {step.client_id!r} is not a member of group {step.group!r}"
            )
        if g.outcome is not None:
            raise WrongRoundError(f"group {step.group!r} is not aggregated this round")
        if step.keys is not None:
            g.server.add_keys(step.client_id, step.keys)
            self.bytes += len(step.keys.c_pk) + len(step.keys.s_pk)
        elif step.ciphertexts is not None:
            g.server.add_shares(step.client_id, step.ciphertexts)
            self.bytes += sum(len(c) for c in step.ciphertexts.values())
        elif step.unmask is not None:
            g.server.add_unmask(step.client_id, step.unmask)
            g.unmask_answered.add(step.client_id)
            shares = (*step.unmask.s_sk_shares.values(), *step.unmask.b_shares.values())
            self.bytes += sum(len(s) for s in shares)

    # ------------------------------------------------------------------ result

    def evaluators(self) -> list[str]:
        """Members who trained this round (masked inputs in, or a group not aggregated)."""
        out = {c for members in self._small.values() for c in members}
        for g in self._groups.values():
            out |= set(g.server.u3) if g.masking else set(g.trained)
        return sorted(out)

    @property
    def released(self) -> list[int]:
        """Clusters whose aggregate was released."""
        return sorted(k for k, g in self._groups.items() if g.outcome == "released")

    def aggregate(
        self,
        model: FederationModel,
        *,
        denominators: Callable[[int | None], float] | None = None,
    ) -> FederationModel:
        """The next model from every open group's unmasked sums.

        Parameters
        ----------
        model
            The round-start model.
        denominators
            Under DP, the expected participants of a cluster (its id) or of the global level
            (None): the fixed denominators of DP-FedAvg.
        """
        self._advance("unmask", "done")
        sums: dict[int, dict[str, np.ndarray]] = {}
        for g in self._open():
            try:
                raw = g.server.result()
            except NotEnoughSharesError as exc:
                self._skip(g, f"too few unmasking shares ({exc})")
                continue
            point = FixedPoint(g.setup.fraction_bits)
            decoded = {name: point.decode(v) for name, v in raw.items()}
            problem = self._bound_problem(g, decoded)
            if problem is not None:
                self._skip(g, f"rejected: {problem}")
                g.outcome = "rejected"
                continue
            sums[g.cluster] = decoded
            g.outcome = "released"
        cluster_tensors = dict(model.cluster_tensors)
        released: dict[int, frozenset[str]] = {}
        num_global: dict[str, np.ndarray] = {}
        den_global = 0.0
        eta = self.plan.server_learning_rate
        for cluster, decoded in sums.items():
            base = model.cluster_tensors.get(cluster, model.cluster_template)
            den = (
                denominators(cluster)
                if self.plan.dp is not None and denominators is not None
                else float(decoded[WEIGHT_CLUSTER][0])
            )
            if self.plan.dp is not None and den < self.plan.min_cluster_members:
                self.dp_skipped.append(cluster)
                logger.info(
                    "round %d: cluster %d expects %.3g participants, fewer than "
                    "privacy.min_cluster_members: its tensors are not released",
                    self.round,
                    cluster,
                    den,
                )
            elif base and den > 0:
                cluster_tensors[cluster] = {
                    name: (np.asarray(t, dtype=np.float64) + eta * decoded[name] / den).astype(
                        t.dtype
                    )
                    for name, t in base.items()
                }
                released[cluster] = frozenset(base)
            for name in model.global_tensors:
                num_global[name] = num_global.get(name, 0.0) + decoded[name]
            den_global += float(decoded[WEIGHT_GLOBAL][0])
        if self.plan.dp is not None and denominators is not None:
            den_global = denominators(None)
        global_tensors = dict(model.global_tensors)
        released_global: frozenset[str] = frozenset()
        if sums and den_global > 0:
            released_global = frozenset(model.global_tensors)
            global_tensors = {
                name: (
                    np.asarray(t, dtype=np.float64) + eta * num_global[name] / den_global
                ).astype(t.dtype)
                for name, t in model.global_tensors.items()
            }
        self.result = FederationModel(
            global_tensors=global_tensors,
            cluster_tensors=cluster_tensors,
            cluster_template=model.cluster_template,
        )
        self.released_tensors = Released(global_names=released_global, clusters=released)
        return self.result

    def _bound_problem(self, g: _Group, decoded: Mapping[str, np.ndarray]) -> str | None:
        """Why the decoded sums are larger than honest members can make, or None.

        Each clip key's sum must have L2 ≤ Σ w_i^max · S (+ 6·σ·sqrt(dim) under DP, σ the
        std of the summed noise), and each weight sum must be in [0, Σ w_i^max].
        """
        survivors = sorted(g.server.u3)
        w_max = sum(self._max_weight(c) for c in survivors)
        tol = CHECK_SLACK * max(w_max, 1.0)
        for name in (WEIGHT_GLOBAL, WEIGHT_CLUSTER):
            w = float(decoded[name][0])
            if not -tol <= w <= w_max + tol:
                return f"weight sum {name} = {w:.6g} outside [0, {w_max:.6g}]"
        by_key: dict[str, list[str]] = {}
        for name, key in self._clip_keys.items():
            by_key.setdefault(key, []).append(name)
        for key, names in sorted(by_key.items()):
            sq = sum(float(np.square(decoded[n], dtype=np.float64).sum()) for n in names)
            dim = sum(int(decoded[n].size) for n in names)
            limit = w_max * self.plan.clip_bounds[key]
            if g.noise_std:
                sigma = g.noise_std.get(key, 0.0) * math.sqrt(len(survivors))
                limit += CHECK_NOISE_SIGMAS * sigma * math.sqrt(dim)
            limit = limit * (1 + CHECK_SLACK) + tol
            if not math.sqrt(sq) <= limit:
                return f"sum of {key} has L2 norm {math.sqrt(sq):.6g} over the bound {limit:.6g}"
        return None

    def info(self) -> dict[str, float]:
        """Round-summary figures (``secagg_*``)."""
        groups = list(self._groups.values())
        # members that left the protocol after it started: no masked input (or no TRAIN task)
        dropped = sum(
            len(set(g.members) - (g.server.u3 if g.masking else g.trained)) for g in groups
        )
        info = {
            "secagg_groups": float(len(groups) + len(self._small)),
            "secagg_released": float(sum(g.outcome == "released" for g in groups)),
            "secagg_skipped": float(
                len(self._small) + sum(g.outcome not in (None, "released") for g in groups)
            ),
            "secagg_dropped": float(dropped),
            # dropped after sending shares: their pairwise masks were removed with shares
            "secagg_recovered": float(
                sum(len(g.server.u2 - g.server.u3) for g in groups if g.outcome == "released")
            ),
            "secagg_bytes": float(self.bytes),
        }
        for cluster in self._small:
            info[f"secagg_cluster_{cluster}_skipped"] = 1.0
        for cluster in self.dp_skipped:
            info[f"dp_cluster_{cluster}_skipped"] = 1.0
        for g in groups:
            if g.outcome not in (None, "released"):
                info[f"secagg_cluster_{g.cluster}_skipped"] = 1.0
            if g.outcome == "rejected":
                info[f"secagg_cluster_{g.cluster}_rejected"] = 1.0
            if g.outcome == "released" and self.plan.dp is not None:
                scale = math.sqrt(len(g.server.u3) / g.setup.min_survivors)
                for level, (z, _) in self.plan.dp.items():
                    info[f"secagg_cluster_{g.cluster}_effective_z_{level}"] = z * scale
        return info


def _answered(
    expected: Collection[str], answered: Collection[str], alive: Collection[str] | None
) -> bool:
    """Whether every expected member (still alive, when ``alive`` is given) answered."""
    waiting = set(expected) - set(answered)
    if alive is not None:
        waiting &= set(alive)
    return not waiting

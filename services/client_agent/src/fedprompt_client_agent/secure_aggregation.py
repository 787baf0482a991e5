"""The silo's side of secure aggregation: SecAggTask protobufs to and from
:class:`fedprompt.secagg.SecAggMember`, and the encoding of a trained delta.

:class:`SecureMember` is one member of one group in one round: it is made from the
SECAGG_KEYS task's setup (checked: the library validates it, and the neighbours the
coordinator announced must be the ones the member computes itself), answers the keys and
shares tasks, decrypts the shares the TRAIN task carries, masks the encoded delta and
answers the unmask request. Whatever the library refuses (a request for both secrets of a
live member, a setup that does not add up, ...) raises; the agent logs a warning and answers
nothing.

:func:`encode_update` turns a delta into the vector the member masks, as the TRAIN task's
:class:`SecAggEncoding` says: each part (or, under DP, each level) clipped to its L2 bound,
each level multiplied by its weight (``examples``: min(n, cap); ``contrastive``: the cluster
level's weight times p, the InfoNCE probability of the member's own centroid among the
round-start centroids; ``unit``: 1), Gaussian noise of the level's std added (distributed
DP), the weights appended, every value encoded in fixed point modulo 2^64.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedprompt.alignment import alignment_scores
from fedprompt.secagg import (
    GroupSetup,
    PublicKeys,
    SecAggError,
    SecAggMember,
    SecAggRefusedError,
    UnmaskRequest,
)
from fedprompt.tensor_names import CLUSTER_PROMPT, centroid
from fedprompt.tensor_names import SECAGG_WEIGHT_CLUSTER as WEIGHT_CLUSTER
from fedprompt.tensor_names import SECAGG_WEIGHT_GLOBAL as WEIGHT_GLOBAL
from fedprompt.v1 import coordinator_pb2


@dataclass(frozen=True)
class Encoding:
    """The TRAIN task's ``SecAggEncoding``, as plain values."""

    clip_bounds: Mapping[str, float]
    clip_keys: Mapping[str, str]
    weighting: str
    weight_cap: float
    noise_std: Mapping[str, float]
    max_abs: float
    temperature: float
    global_tensors: frozenset[str]

    @classmethod
    def from_proto(cls, msg: coordinator_pb2.SecAggEncoding) -> Encoding:
        """Read a task's encoding; refuses an unknown weighting or a tensor without a bound."""
        if msg.weighting not in ("examples", "contrastive", "unit"):
            raise SecAggRefusedError(f"unknown secure-aggregation weighting {msg.weighting!r}")
        for name, key in msg.clip_keys.items():
            bound = msg.clip_bounds.get(key)
            if bound is None or not bound > 0 or not math.isfinite(bound):
                raise SecAggRefusedError(f"tensor {name!r} has no valid clip bound")
        if not msg.max_abs > 0:
            raise SecAggRefusedError("the encoding's max_abs must be positive")
        return cls(
            clip_bounds=dict(msg.clip_bounds),
            clip_keys=dict(msg.clip_keys),
            weighting=msg.weighting,
            weight_cap=msg.weight_cap,
            noise_std=dict(msg.noise_std),
            max_abs=msg.max_abs,
            temperature=msg.temperature or 0.5,
            global_tensors=frozenset(msg.global_tensors),
        )


def setup_from_proto(msg: coordinator_pb2.SecAggTask, round_id: int) -> GroupSetup:
    """The group setup a SECAGG_KEYS task carries (validated by :class:`GroupSetup`)."""
    s = msg.setup
    return GroupSetup(
        round=round_id,
        group=msg.group,
        members=tuple(s.members),
        seed=bytes(s.seed),
        degree=s.degree,
        threshold=s.threshold,
        min_survivors=s.min_survivors,
        layout=tuple((t.name, tuple(int(d) for d in t.shape)) for t in s.layout),
        fraction_bits=s.fraction_bits,
    )


def clip_by_key(delta: Mapping[str, np.ndarray], encoding: Encoding) -> dict[str, np.ndarray]:
    """Each group of tensors (one clip key) scaled to L2 at most its bound (float64)."""
    out = {n: np.asarray(v, dtype=np.float64) for n, v in delta.items()}
    by_key: dict[str, list[str]] = {}
    for name in out:
        key = encoding.clip_keys.get(name)
        if key is None:
            raise SecAggRefusedError(f"tensor {name!r} has no clip bound in the task")
        by_key.setdefault(key, []).append(name)
    for key, names in by_key.items():
        norm = math.sqrt(sum(float(np.square(out[n]).sum()) for n in names))
        bound = encoding.clip_bounds[key]
        if norm > bound:
            for n in names:
                out[n] = out[n] * (bound / norm)
    return out


def member_weights(
    clipped: Mapping[str, np.ndarray],
    encoding: Encoding,
    *,
    num_examples: int,
    cluster_id: int,
    centroids: Mapping[int, np.ndarray],
) -> tuple[float, float]:
    """The member's (global, cluster) weights as the encoding's weighting defines them."""
    if encoding.weighting == "unit":
        return 1.0, 1.0
    w = float(min(num_examples, encoding.weight_cap))
    segment = clipped.get(CLUSTER_PROMPT)
    if encoding.weighting != "contrastive" or segment is None or cluster_id not in centroids:
        return w, w
    # the proposal's token-mean is centroid(C_k) + centroid(ΔC) (the mean is linear)
    proposal = np.asarray(centroids[cluster_id], dtype=np.float64) + centroid(segment)
    score = alignment_scores(
        [proposal], own=cluster_id, centroids=centroids, temperature=encoding.temperature
    )[0]
    return w, w * math.exp(float(score))


def encode_update(
    delta: Mapping[str, np.ndarray],
    encoding: Encoding,
    setup: GroupSetup,
    *,
    num_examples: int,
    cluster_id: int,
    centroids: Mapping[int, np.ndarray],
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """The uint64 vector a member masks: clipped, weighted, noised, fixed-point encoded.

    Raises
    ------
    SecAggRefusedError
        When the delta's tensors differ from the layout.
    EncodingRangeError
        When a value exceeds the encoding's ``max_abs`` (nothing is clamped).
    """
    clipped = clip_by_key(delta, encoding)
    w_global, w_cluster = member_weights(
        clipped, encoding, num_examples=num_examples, cluster_id=cluster_id, centroids=centroids
    )
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    values: dict[str, np.ndarray] = {}
    for name, x in clipped.items():
        weighted = x * (w_global if name in encoding.global_tensors else w_cluster)
        std = encoding.noise_std.get(encoding.clip_keys[name], 0.0)
        if std > 0:
            weighted = weighted + rng.normal(0.0, std, size=weighted.shape)
        values[name] = weighted
    values[WEIGHT_GLOBAL] = np.array([w_global])
    values[WEIGHT_CLUSTER] = np.array([w_cluster])
    want = {name: shape for name, shape in setup.layout}
    got = {name: tuple(v.shape) for name, v in values.items()}
    if want != got:
        raise SecAggRefusedError(
            f"the update's tensors {sorted(got)} do not match the group's layout {sorted(want)}"
        )
    point = setup.fixed_point
    return {name: point.encode(v, max_abs=encoding.max_abs) for name, v in values.items()}


class SecureMember:
    """This silo as a member of one group in one round.

    Parameters
    ----------
    client_id
        This silo's id.
    round_id
        The round of the SECAGG_KEYS task.
    task
        The SECAGG_KEYS task's ``secure_aggregation``.

    Raises
    ------
    SecAggError
        When the setup is inconsistent, this silo is not a member, or the announced
        neighbours differ from those the member computes.
    """

    def __init__(self, client_id: str, round_id: int, task: coordinator_pb2.SecAggTask) -> None:
        self.round = round_id
        self.group = task.group
        self.setup = setup_from_proto(task, round_id)
        self._member = SecAggMember(client_id, self.setup)
        announced = tuple(sorted(task.setup.neighbours))
        if announced != tuple(sorted(self.setup.neighbours(client_id))):
            raise SecAggRefusedError(
                "the neighbours the coordinator announced differ from the neighbour graph"
            )
        self.client_id = client_id

    def _request(self) -> coordinator_pb2.SecAggStepRequest:
        return coordinator_pb2.SecAggStepRequest(
            client_id=self.client_id, round=self.round, group=self.group
        )

    def keys(self) -> coordinator_pb2.SecAggStepRequest:
        """Stage 1: this member's public keys."""
        pk = self._member.advertise()
        request = self._request()
        request.keys.CopyFrom(
            coordinator_pb2.SecAggPublicKeys(member=self.client_id, c_pk=pk.c_pk, s_pk=pk.s_pk)
        )
        return request

    def shares(self, task: coordinator_pb2.SecAggTask) -> coordinator_pb2.SecAggStepRequest:
        """Stage 2: one ciphertext of shares per neighbour whose keys the task carries."""
        self._check_group(task)
        keys: dict[str, PublicKeys] = {}
        for k in task.public_keys:
            if k.member in keys:
                raise SecAggRefusedError(f"the task names {k.member!r}'s keys twice")
            keys[k.member] = PublicKeys(c_pk=bytes(k.c_pk), s_pk=bytes(k.s_pk))
        ciphertexts = self._member.share_keys(keys)
        request = self._request()
        request.shares.ciphertexts.extend(
            coordinator_pb2.SecAggCiphertext(sender=self.client_id, recipient=r, ciphertext=c)
            for r, c in sorted(ciphertexts.items())
        )
        return request

    def receive(self, task: coordinator_pb2.SecAggTask) -> Encoding:
        """Stage 3 (TRAIN task): decrypt the shares addressed to this member; the encoding."""
        self._check_group(task)
        cts: dict[str, bytes] = {}
        for c in task.ciphertexts:
            if c.sender in cts:
                raise SecAggRefusedError(f"two ciphertexts from {c.sender!r}")
            cts[c.sender] = bytes(c.ciphertext)
        encoding = Encoding.from_proto(task.encoding)
        self._member.receive_shares(cts)
        return encoding

    def mask(
        self,
        delta: Mapping[str, np.ndarray],
        encoding: Encoding,
        *,
        num_examples: int,
        cluster_id: int,
        centroids: Mapping[int, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Stage 3: the masked, encoded delta (uint64 tensors of the layout)."""
        encoded = encode_update(
            delta,
            encoding,
            self.setup,
            num_examples=num_examples,
            cluster_id=cluster_id,
            centroids=centroids,
        )
        return self._member.mask(encoded)

    def unmask(self, task: coordinator_pb2.SecAggTask) -> coordinator_pb2.SecAggStepRequest:
        """Stage 4: the shares that remove the masks; the library refuses what it must."""
        self._check_group(task)
        reply = self._member.unmask(
            UnmaskRequest(dropped=tuple(task.dropped), survivors=tuple(task.survivors))
        )
        request = self._request()
        request.unmask.s_sk_shares.extend(
            coordinator_pb2.SecAggShare(owner=o, share=s)
            for o, s in sorted(reply.s_sk_shares.items())
        )
        request.unmask.b_shares.extend(
            coordinator_pb2.SecAggShare(owner=o, share=s) for o, s in sorted(reply.b_shares.items())
        )
        return request

    def _check_group(self, task: coordinator_pb2.SecAggTask) -> None:
        if task.group != self.group:
            raise SecAggError(f"a task of group {task.group!r} reached member of {self.group!r}")

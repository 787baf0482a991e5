"""The member (client) side of one group's secure aggregation in one round.

Stages, each once and in order: :meth:`SecAggMember.advertise` (public keys),
:meth:`~SecAggMember.share_keys` (encrypted Shamir shares of its mask-agreement key and
self-mask seed for each neighbour), :meth:`~SecAggMember.receive_shares` (the shares its
neighbours sent it; defines ``U2 ∩ N(u)``), :meth:`~SecAggMember.mask` (its masked input),
:meth:`~SecAggMember.unmask` (the shares the server needs to remove the masks).

The member refuses (:class:`SecAggRefusedError`, before producing anything) every request
that could reveal more than the group's sum: a second unmask, a member both dropped and
surviving, itself not surviving, too few survivors, ids it knows are not in ``U2``, keys of
non-neighbours, and too few holders to reconstruct.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.secagg import keys as kx
from fedprompt.secagg import prg, shamir
from fedprompt.secagg.encoding import flatten, layout_size, unflatten
from fedprompt.secagg.errors import SecAggError, SecAggRefusedError
from fedprompt.secagg.messages import GroupSetup, PublicKeys, UnmaskReply, UnmaskRequest


class _Stage(enum.IntEnum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    RECEIVED = 3
    MASKED = 4
    UNMASKED = 5


class SecAggMember:
    """One member of one group in one round.

    Parameters
    ----------
    client_id
        This member's id (must be in ``setup.members``).
    setup
        The group's setup, as received from the coordinator (validated on construction).
    """

    def __init__(self, client_id: str, setup: GroupSetup) -> None:
        if client_id not in setup.members:
            raise SecAggError(f"{client_id!r} is not a member of {setup.group}")
        self._id = client_id
        self._setup = setup
        self._neighbours = frozenset(setup.neighbours(client_id))
        self._c_sk = kx.generate_private()
        self._s_sk = kx.generate_private()
        self._b = secrets.token_bytes(prg.SEED_BYTES)
        self._public = PublicKeys(
            c_pk=kx.public_bytes(self._c_sk), s_pk=kx.public_bytes(self._s_sk)
        )
        self._stage = _Stage.NEW
        self._keys: dict[str, PublicKeys] = {}
        # owner -> (this member's share of owner's s_sk, of owner's b); includes itself.
        self._held: dict[str, tuple[bytes, bytes]] = {}
        self._u2_neighbours: frozenset[str] = frozenset()

    @property
    def client_id(self) -> str:
        """This member's id."""
        return self._id

    @property
    def setup(self) -> GroupSetup:
        """The group's setup."""
        return self._setup

    @property
    def neighbours(self) -> tuple[str, ...]:
        """This member's neighbours, recomputed from the setup (sorted)."""
        return self._setup.neighbours(self._id)

    def check_neighbours(self, listed: Sequence[str]) -> None:
        """Refuse a neighbour list (e.g. sent in a task) that differs from its own.

        Raises
        ------
        SecAggRefusedError
            If ``listed`` is not exactly this member's recomputed neighbours.
        """
        if sorted(listed) != list(self.neighbours):
            raise self._refuse("the neighbour list differs from its own recomputation")

    def _expect(self, stage: _Stage, action: str) -> None:
        if self._stage != stage:
            raise SecAggError(f"secagg member {self._id!r} cannot {action} now")

    def _refuse(self, reason: str) -> SecAggRefusedError:
        return SecAggRefusedError(f"secagg member {self._id!r} refuses: {reason}")

    def advertise(self) -> PublicKeys:
        """Return this member's public keys (stage 1; repeatable until keys are shared)."""
        if self._stage > _Stage.ADVERTISED:
            raise SecAggError(f"secagg member {self._id!r} already shared its keys")
        self._stage = _Stage.ADVERTISED
        return self._public

    def share_keys(self, keys: Mapping[str, PublicKeys]) -> dict[str, bytes]:
        """Share this member's secrets with its neighbours that advertised keys (stage 2).

        Parameters
        ----------
        keys
            Neighbour -> its public keys (``N(u) ∩ U1``), optionally with this member's own.

        Returns
        -------
        dict
            Recipient neighbour -> ciphertext of (its share of ``s_sk``, its share of ``b``).
            This member keeps its own share (it is one of its ``k + 1`` holders).

        Raises
        ------
        SecAggRefusedError
            On keys of a non-neighbour, a wrong own entry, repeated public keys, or fewer
            than ``threshold`` holders.
        """
        self._expect(_Stage.ADVERTISED, "share keys")
        setup = self._setup
        for owner, public in keys.items():
            if not isinstance(public, PublicKeys):
                raise SecAggError("secagg keys must be PublicKeys")
            if owner == self._id:
                if public != self._public:
                    raise self._refuse("its own public keys were replaced")
            elif owner not in self._neighbours:
                raise self._refuse(f"keys of {owner!r}, which is not its neighbour")
        peers = {v: pk for v, pk in keys.items() if v != self._id}
        raw = [self._public.c_pk, self._public.s_pk]
        raw += [b for pk in peers.values() for b in (pk.c_pk, pk.s_pk)]
        if len(set(raw)) != len(raw):
            raise self._refuse("two members advertised the same public key")
        if len(peers) + 1 < setup.threshold:
            raise self._refuse(
                f"{len(peers) + 1} holders cannot reach the threshold {setup.threshold}"
            )
        holders = [self._id, *sorted(peers)]
        xs = {v: setup.holder_index(v) for v in holders}
        s_shares = shamir.split(
            kx.private_bytes(self._s_sk), xs=xs.values(), threshold=setup.threshold
        )
        b_shares = shamir.split(self._b, xs=xs.values(), threshold=setup.threshold)
        out: dict[str, bytes] = {}
        for v, public in sorted(peers.items()):
            key = kx.agree(
                self._c_sk,
                public.c_pk,
                purpose=kx.ENC_PURPOSE,
                round_=setup.round,
                group=setup.group,
                a=self._id,
                b=v,
            )
            plaintext = s_shares[xs[v]] + b_shares[xs[v]]
            out[v] = kx.seal(key, plaintext, kx.aad(setup.round, setup.group, self._id, v))
        self._keys = peers
        self._held = {self._id: (s_shares[xs[self._id]], b_shares[xs[self._id]])}
        self._stage = _Stage.SHARED
        return out

    def receive_shares(self, ciphertexts: Mapping[str, bytes]) -> None:
        """Decrypt the shares addressed to this member (stage 3, before training).

        Parameters
        ----------
        ciphertexts
            Sender -> ciphertext. The senders are this member's neighbours in ``U2``; it
            masks its input with exactly them.

        Raises
        ------
        SecAggRefusedError
            If a sender is not a neighbour whose keys it received, or fewer than
            ``threshold - 1`` neighbours sent shares (its own input could then be unmasked
            from too few pairwise masks; the round could not complete anyway).
        SecAggError
            If a ciphertext fails authentication (tampered, or meant for another member)
            or holds a share for another holder. Nothing is kept then.
        """
        self._expect(_Stage.SHARED, "receive shares")
        setup = self._setup
        own_x = setup.holder_index(self._id)
        received: dict[str, tuple[bytes, bytes]] = {}
        for sender, sealed in ciphertexts.items():
            if sender not in self._keys:
                raise self._refuse(f"shares from {sender!r}, which is not a keyed neighbour")
            key = kx.agree(
                self._c_sk,
                self._keys[sender].c_pk,
                purpose=kx.ENC_PURPOSE,
                round_=setup.round,
                group=setup.group,
                a=self._id,
                b=sender,
            )
            plaintext = kx.open_sealed(
                key, sealed, kx.aad(setup.round, setup.group, sender, self._id)
            )
            if len(plaintext) != 2 * shamir.SHARE_BYTES:
                raise SecAggError(f"the shares from {sender!r} are malformed")
            s_share = plaintext[: shamir.SHARE_BYTES]
            b_share = plaintext[shamir.SHARE_BYTES :]
            for share in (s_share, b_share):
                if shamir.decode_share(share)[0] != own_x:
                    raise SecAggError(f"the shares from {sender!r} are for another holder")
            received[sender] = (s_share, b_share)
        if len(received) + 1 < setup.threshold:
            raise self._refuse(
                f"only {len(received)} neighbours sent shares; {setup.threshold - 1} needed"
            )
        self._held.update(received)
        self._u2_neighbours = frozenset(received)
        self._stage = _Stage.RECEIVED

    def mask(self, encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Mask this member's encoded input (stage 3, once).

        ``y = x + PRG(b) + Σ_{v>u} PRG(s_uv) - Σ_{v<u} PRG(s_uv)`` (mod 2^64) over the
        neighbours ``v`` in ``U2``.

        Parameters
        ----------
        encoded
            uint64 tensors of exactly the setup's layout.

        Returns
        -------
        dict
            The masked uint64 tensors (same names and shapes).
        """
        self._expect(_Stage.RECEIVED, "mask")
        setup = self._setup
        total = flatten(encoded, setup.layout)  # a new array
        size = layout_size(setup.layout)
        total += prg.expand(self._b, size)
        for v in sorted(self._u2_neighbours):
            seed = kx.agree(
                self._s_sk,
                self._keys[v].s_pk,
                purpose=kx.MASK_PURPOSE,
                round_=setup.round,
                group=setup.group,
                a=self._id,
                b=v,
            )
            if self._id < v:
                total += prg.expand(seed, size)
            else:
                total -= prg.expand(seed, size)
        self._stage = _Stage.MASKED
        return unflatten(total, setup.layout)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Answer the server's unmask request (stage 4, at most once per round).

        Returns this member's shares of ``s_sk`` of its dropped neighbours and of ``b`` of
        its surviving holders-owners (neighbours and itself).

        Raises
        ------
        SecAggRefusedError
            If it already answered; an id is in both lists or repeated; an id is not in the
            group, or is a neighbour it knows is not in ``U2``, or a neighbour in ``U2`` is
            missing from both lists; it is not a survivor or has not uploaded; there are
            fewer survivors than ``min_survivors``; or fewer than ``threshold`` of its own
            holders survive. Nothing is revealed by a refusal.
        """
        if self._stage == _Stage.UNMASKED:
            raise self._refuse("it already answered an unmask request this round")
        if self._stage != _Stage.MASKED:
            raise self._refuse("it has not uploaded a masked input")
        setup = self._setup
        dropped, survivors = tuple(request.dropped), tuple(request.survivors)
        dropped_set, survivor_set = set(dropped), set(survivors)
        if len(dropped_set) != len(dropped) or len(survivor_set) != len(survivors):
            raise self._refuse("an id is repeated in the unmask lists")
        if dropped_set & survivor_set:
            raise self._refuse("an id is both dropped and surviving")
        listed = dropped_set | survivor_set
        if not listed <= set(setup.members):
            raise self._refuse("the unmask lists name ids outside the group")
        if self._id not in survivor_set:
            raise self._refuse("it is not among the survivors")
        if len(survivor_set) < setup.min_survivors:
            raise self._refuse(
                f"{len(survivor_set)} survivors are fewer than {setup.min_survivors}"
            )
        known_u2 = self._u2_neighbours | {self._id}
        listed_neighbours = listed & (self._neighbours | {self._id})
        if listed_neighbours - known_u2:
            raise self._refuse("the unmask lists name neighbours that are not in U2")
        if known_u2 - listed:
            raise self._refuse("the unmask lists omit neighbours in U2")
        surviving_holders = known_u2 & survivor_set
        if len(surviving_holders) < setup.threshold:
            raise self._refuse(
                f"{len(surviving_holders)} of its holders survive, fewer than the threshold "
                f"{setup.threshold}"
            )
        reply = UnmaskReply(
            s_sk_shares={v: self._held[v][0] for v in sorted(dropped_set & self._u2_neighbours)},
            b_shares={v: self._held[v][1] for v in sorted(survivor_set & known_u2)},
        )
        self._stage = _Stage.UNMASKED
        return reply

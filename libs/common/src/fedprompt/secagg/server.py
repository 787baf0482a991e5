"""The coordinator side of one group's secure aggregation in one round.

Stages (each set is frozen by the first call of the next stage):

``keys``
    :meth:`SecAggServer.add_keys` collects public keys. :meth:`~SecAggServer.close_keys`
    or the first :meth:`~SecAggServer.keys_for` freezes ``U1`` (stage ``shares``).
``shares``
    :meth:`~SecAggServer.add_shares` collects each member's ciphertexts, one per neighbour
    in ``U1``. :meth:`~SecAggServer.close_shares` or the first
    :meth:`~SecAggServer.shares_for` freezes ``U2`` (stage ``masked``).
``masked``
    :meth:`~SecAggServer.add_masked` collects masked inputs of ``U2`` members.
    :meth:`~SecAggServer.unmask_request` freezes ``U3`` (stage ``unmask``).
``unmask``
    :meth:`~SecAggServer.add_unmask` collects shares; :meth:`~SecAggServer.result`
    reconstructs the secrets, removes the masks and returns ``Σ_{U3} x_u`` (stage ``done``).

Whenever fewer members than ``min_survivors`` remain, or a needed secret has fewer than
``threshold`` shares, :class:`NotEnoughSharesError` is raised (stage ``failed``): the group
is skipped, nothing about individuals is returned. Messages out of stage, from
non-members or repeated are refused with :class:`SecAggError`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedprompt.secagg import keys as kx
from fedprompt.secagg import prg, shamir
from fedprompt.secagg.encoding import flatten, layout_size, unflatten
from fedprompt.secagg.errors import NotEnoughSharesError, SecAggError
from fedprompt.secagg.messages import GroupSetup, PublicKeys, UnmaskReply, UnmaskRequest

KEYS, SHARES, MASKED, UNMASK, DONE, FAILED = "keys", "shares", "masked", "unmask", "done", "failed"
#: Length of one share ciphertext: nonce, two shares, tag.
CIPHERTEXT_BYTES = kx.NONCE_BYTES + 2 * shamir.SHARE_BYTES + kx.TAG_BYTES


class SecAggServer:
    """Aggregator of one group in one round.

    Not thread-safe: a caller serving members concurrently serialises the calls (one lock
    per group). Holds every masked input of ``U3`` (8 bytes per value and member) until
    :meth:`result`.

    Parameters
    ----------
    setup
        The group's setup (the one sent to the members).
    """

    def __init__(self, setup: GroupSetup) -> None:
        self._setup = setup
        self._stage = KEYS
        self._keys: dict[str, PublicKeys] = {}
        self._ciphertexts: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> ct
        self._masked: dict[str, np.ndarray] = {}  # member -> flat uint64
        self._u1: frozenset[str] = frozenset()
        self._u2: frozenset[str] = frozenset()
        self._u3: frozenset[str] = frozenset()
        self._request: UnmaskRequest | None = None
        self._replied: set[str] = set()
        self._s_sk_shares: dict[str, dict[str, bytes]] = {}  # owner -> holder -> share
        self._b_shares: dict[str, dict[str, bytes]] = {}
        self._result: dict[str, np.ndarray] | None = None

    @property
    def setup(self) -> GroupSetup:
        """The group's setup."""
        return self._setup

    @property
    def stage(self) -> str:
        """``keys``, ``shares``, ``masked``, ``unmask``, ``done`` or ``failed``."""
        return self._stage

    @property
    def u1(self) -> frozenset[str]:
        """Members whose keys arrived (frozen once the shares stage starts)."""
        return self._u1 if self._stage != KEYS else frozenset(self._keys)

    @property
    def u2(self) -> frozenset[str]:
        """Members whose shares arrived (frozen once the masked stage starts)."""
        return self._u2 if self._stage not in (KEYS, SHARES) else frozenset(self._ciphertexts)

    @property
    def u3(self) -> frozenset[str]:
        """Members whose masked inputs arrived (frozen by :meth:`unmask_request`)."""
        if self._stage in (KEYS, SHARES, MASKED):
            return frozenset(self._masked)
        return self._u3

    def _expect(self, stage: str, action: str) -> None:
        if self._stage != stage:
            raise SecAggError(
                f"secagg {self._setup.group}: cannot {action} in stage {self._stage!r}"
            )

    def _member(self, member: str) -> None:
        if member not in self._setup.members:
            raise SecAggError(f"{member!r} is not a member of {self._setup.group}")

    def _fail_if_short(self, members: frozenset[str], what: str) -> None:
        if len(members) < self._setup.min_survivors:
            self._stage = FAILED
            raise NotEnoughSharesError(
                f"secagg {self._setup.group}: {len(members)} members {what}, fewer than "
                f"{self._setup.min_survivors}; the group is skipped this round"
            )

    def add_keys(self, member: str, keys: PublicKeys) -> None:
        """Record ``member``'s public keys (stage ``keys``, once per member)."""
        self._expect(KEYS, "accept keys")
        self._member(member)
        if member in self._keys:
            raise SecAggError(f"{member!r} already sent its secagg keys")
        if not isinstance(keys, PublicKeys):
            raise SecAggError("secagg keys must be PublicKeys")
        used = {b for pk in self._keys.values() for b in (pk.c_pk, pk.s_pk)}
        if keys.c_pk in used or keys.s_pk in used:
            raise SecAggError(f"{member!r} sent a public key another member already sent")
        if not (kx.usable_public(keys.c_pk) and kx.usable_public(keys.s_pk)):
            raise SecAggError(f"{member!r} sent an unusable (low-order) public key")
        self._keys[member] = keys

    def close_keys(self) -> frozenset[str]:
        """Freeze and return ``U1`` (stage ``shares``); the first :meth:`keys_for` does it too.

        Raises
        ------
        NotEnoughSharesError
            If ``U1`` is smaller than ``min_survivors`` (stage ``failed``).
        """
        if self._stage == KEYS:
            self._u1 = frozenset(self._keys)
            self._stage = SHARES
            self._fail_if_short(self._u1, "sent keys")
        self._expect(SHARES, "close the keys stage")
        return self._u1

    def keys_for(self, member: str) -> dict[str, PublicKeys]:
        """Return the keys of ``member``'s neighbours in ``U1`` and its own.

        The first call freezes ``U1``.

        Raises
        ------
        NotEnoughSharesError
            If ``U1`` is smaller than ``min_survivors``.
        """
        self._member(member)
        if self._stage == KEYS:
            self.close_keys()
        self._expect(SHARES, "hand out keys")
        if member not in self._u1:
            raise SecAggError(f"{member!r} sent no secagg keys")
        wanted = (set(self._setup.neighbours(member)) & self._u1) | {member}
        return {v: self._keys[v] for v in sorted(wanted)}

    def add_shares(self, member: str, ciphertexts: Mapping[str, bytes]) -> None:
        """Record ``member``'s ciphertexts, one per neighbour in ``U1`` (stage ``shares``)."""
        self._expect(SHARES, "accept shares")
        self._member(member)
        if member not in self._u1:
            raise SecAggError(f"{member!r} sent no secagg keys")
        if member in self._ciphertexts:
            raise SecAggError(f"{member!r} already sent its secagg shares")
        expected = set(self._setup.neighbours(member)) & self._u1
        if set(ciphertexts) != expected:
            raise SecAggError(f"{member!r} must send one share to each neighbour in U1")
        for sealed in ciphertexts.values():
            if not isinstance(sealed, bytes) or len(sealed) != CIPHERTEXT_BYTES:
                raise SecAggError(f"{member!r} sent a malformed share ciphertext")
        self._ciphertexts[member] = dict(ciphertexts)

    def close_shares(self) -> frozenset[str]:
        """Freeze and return ``U2`` (stage ``masked``); the first :meth:`shares_for` does it too.

        Raises
        ------
        NotEnoughSharesError
            If ``U2`` is smaller than ``min_survivors`` (stage ``failed``).
        """
        if self._stage == SHARES:
            self._u2 = frozenset(self._ciphertexts)
            self._stage = MASKED
            self._fail_if_short(self._u2, "sent shares")
        self._expect(MASKED, "close the shares stage")
        return self._u2

    def shares_for(self, member: str) -> dict[str, bytes]:
        """Return the ciphertexts addressed to ``member`` (sender -> ciphertext).

        The first call freezes ``U2``.

        Raises
        ------
        NotEnoughSharesError
            If ``U2`` is smaller than ``min_survivors``.
        """
        self._member(member)
        if self._stage == SHARES:
            self.close_shares()
        self._expect(MASKED, "hand out shares")
        if member not in self._u2:
            raise SecAggError(f"{member!r} sent no secagg shares")
        return {
            sender: self._ciphertexts[sender][member]
            for sender in sorted(self._u2)
            if member in self._ciphertexts[sender]
        }

    def add_masked(self, member: str, masked: Mapping[str, np.ndarray]) -> None:
        """Record ``member``'s masked input (stage ``masked``, members of ``U2``, once)."""
        self._expect(MASKED, "accept masked inputs")
        self._member(member)
        if member not in self._u2:
            raise SecAggError(f"{member!r} sent no secagg shares")
        if member in self._masked:
            raise SecAggError(f"{member!r} already sent its masked input")
        self._masked[member] = flatten(masked, self._setup.layout)  # a new array

    def unmask_request(self) -> UnmaskRequest:
        """Freeze ``U3`` and return the unmask request for every member of ``U3``.

        Raises
        ------
        NotEnoughSharesError
            If ``U3`` is smaller than ``min_survivors``.
        """
        if self._stage == MASKED:
            self._u3 = frozenset(self._masked)
            self._stage = UNMASK
            self._fail_if_short(self._u3, "uploaded masked inputs")
            self._request = UnmaskRequest(
                dropped=tuple(sorted(self._u2 - self._u3)), survivors=tuple(sorted(self._u3))
            )
        self._expect(UNMASK, "request unmasking")
        assert self._request is not None
        return self._request

    def add_unmask(self, member: str, reply: UnmaskReply) -> None:
        """Record ``member``'s shares (stage ``unmask``, members of ``U3``, once).

        Raises
        ------
        SecAggError
            If the reply's owners differ from what ``member`` holds and was asked for, or a
            share is malformed or for another holder.
        """
        self._expect(UNMASK, "accept unmask replies")
        self._member(member)
        if member not in self._u3:
            raise SecAggError(f"{member!r} uploaded no masked input")
        if member in self._replied:
            raise SecAggError(f"{member!r} already answered the unmask request")
        own = self._held_by(member)
        want_s = own & (self._u2 - self._u3) - {member}
        want_b = own & self._u3
        if set(reply.s_sk_shares) != want_s or set(reply.b_shares) != want_b:
            raise SecAggError(f"{member!r} answered the unmask request with the wrong owners")
        x = self._setup.holder_index(member)
        for share in (*reply.s_sk_shares.values(), *reply.b_shares.values()):
            if shamir.decode_share(share)[0] != x:
                raise SecAggError(f"{member!r} sent a share of another holder")
        for owner, share in reply.s_sk_shares.items():
            self._s_sk_shares.setdefault(owner, {})[member] = share
        for owner, share in reply.b_shares.items():
            self._b_shares.setdefault(owner, {})[member] = share
        self._replied.add(member)

    def _held_by(self, member: str) -> set[str]:
        """Owners whose shares ``member`` holds: itself and its neighbours in ``U2``."""
        return (set(self._setup.neighbours(member)) & self._u2) | {member}

    def result(self) -> dict[str, np.ndarray]:
        """Remove the masks and return ``Σ_{U3} x_u`` as uint64 tensors by name.

        Freezes the replies (stage ``done``); later calls return the same sums.

        Raises
        ------
        NotEnoughSharesError
            If a needed secret (``b`` of a survivor, ``s_sk`` of a dropped member with a
            surviving neighbour) has fewer than ``threshold`` shares. Nothing is returned.
        SecAggError
            If shares are inconsistent or a reconstructed key does not match its public key.
        """
        if self._stage == DONE and self._result is not None:
            return {name: array.copy() for name, array in self._result.items()}
        self._expect(UNMASK, "compute the result")
        setup = self._setup
        dropped = sorted(self._u2 - self._u3)
        needs_s = [v for v in dropped if set(setup.neighbours(v)) & self._u3]
        short = [v for v in self._u3 if len(self._b_shares.get(v, {})) < setup.threshold]
        short += [v for v in needs_s if len(self._s_sk_shares.get(v, {})) < setup.threshold]
        if short:
            self._stage = FAILED
            raise NotEnoughSharesError(
                f"secagg {setup.group}: {len(short)} secrets have fewer than "
                f"{setup.threshold} shares; the group is skipped this round"
            )
        try:
            total = self._unmasked(needs_s)
        except SecAggError:
            self._stage = FAILED
            raise
        self._result = unflatten(total, setup.layout)
        self._stage = DONE
        return {name: array.copy() for name, array in self._result.items()}

    def _unmasked(self, needs_s: list[str]) -> np.ndarray:
        setup = self._setup
        size = layout_size(setup.layout)
        total = np.zeros(size, dtype=np.uint64)
        for u in sorted(self._u3):
            total += self._masked[u]
            b = shamir.combine(self._b_shares[u].values(), threshold=setup.threshold)
            total -= prg.expand(b, size)
        for v in needs_s:
            raw = shamir.combine(self._s_sk_shares[v].values(), threshold=setup.threshold)
            s_sk = kx.load_private(raw)
            if kx.public_bytes(s_sk) != self._keys[v].s_pk:
                raise SecAggError(f"secagg {setup.group}: a reconstructed key is wrong")
            for u in sorted(set(setup.neighbours(v)) & self._u3):
                seed = kx.agree(
                    s_sk,
                    self._keys[u].s_pk,
                    purpose=kx.MASK_PURPOSE,
                    round_=setup.round,
                    group=setup.group,
                    a=u,
                    b=v,
                )
                # u added +PRG(s_uv) if u < v, else -PRG(s_uv): remove it.
                if u < v:
                    total -= prg.expand(seed, size)
                else:
                    total += prg.expand(seed, size)
        return total

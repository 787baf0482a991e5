"""A curious or misbehaving coordinator and tampered messages against secure aggregation.

Members refuse every unmask request that could hand the server both secrets of one member
(its self-mask seed and its mask-agreement key), requests naming ids they know are wrong,
and keys or shares from outside their neighbourhood; ciphertexts moved between members or
rounds fail authentication; the server refuses messages out of stage, from non-members
and repeated ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from fedprompt.secagg import (
    GroupSetup,
    NotEnoughSharesError,
    PublicKeys,
    SecAggError,
    SecAggMember,
    SecAggRefusedError,
    SecAggServer,
    UnmaskReply,
    UnmaskRequest,
    layout_of,
    secagg_plus_degree,
    shamir,
)
from fedprompt.secagg import keys as kx

LAYOUT = layout_of({"w": np.zeros(6)})
MAX_ABS = 1.0


def make_setup(n: int, *, round_: int = 1, seed: bytes = bytes(32)) -> GroupSetup:
    return GroupSetup.create(
        round=round_,
        group="cluster-0",
        members=[f"m{i:02d}" for i in range(n)],
        layout=LAYOUT,
        max_abs=MAX_ABS,
        seed=seed,
        degree=secagg_plus_degree(n),  # the sparse privacy floor, not the dropout degree
    )


class Group:
    """Members and a server, stepped by the test."""

    def __init__(self, n: int, *, round_: int = 1, seed: bytes = bytes(32)) -> None:
        self.setup = make_setup(n, round_=round_, seed=seed)
        self.server = SecAggServer(self.setup)
        self.members = {m: SecAggMember(m, self.setup) for m in self.setup.members}
        self.sent: dict[str, dict[str, bytes]] = {}

    def encoded(self, m: str) -> dict[str, np.ndarray]:
        value = (self.setup.members.index(m) + 1) / 100
        return {"w": self.setup.fixed_point.encode(np.full(6, value), max_abs=MAX_ABS)}

    def to_keys(self, skip: Iterable[str] = ()) -> None:
        for m, member in self.members.items():
            if m not in skip:
                self.server.add_keys(m, member.advertise())

    def to_shares(self, skip: Iterable[str] = ()) -> None:
        for m in sorted(self.server.u1 - set(skip)):
            self.sent[m] = self.members[m].share_keys(self.server.keys_for(m))
            self.server.add_shares(m, self.sent[m])

    def to_masked(self, skip: Iterable[str] = ()) -> None:
        for m in sorted(self.server.u2):
            self.members[m].receive_shares(self.server.shares_for(m))
        for m in sorted(self.server.u2 - set(skip)):
            self.server.add_masked(m, self.members[m].mask(self.encoded(m)))

    def through_masking(self, **skips: Iterable[str]) -> None:
        self.to_keys(skips.get("keys", ()))
        self.to_shares(skips.get("shares", ()))
        self.to_masked(skips.get("masked", ()))


def masked_group(n: int = 10, **skips: Iterable[str]) -> Group:
    group = Group(n)
    group.through_masking(**skips)
    return group


# --- a curious server asking for both secrets -------------------------------------------


def test_id_in_both_lists_is_refused() -> None:
    g = masked_group()
    m = g.setup.members
    request = UnmaskRequest(dropped=(m[3],), survivors=tuple(m))
    with pytest.raises(SecAggRefusedError, match="both dropped and surviving"):
        g.members[m[0]].unmask(request)


def test_second_request_with_roles_swapped_is_refused() -> None:
    g = masked_group(10)
    m = g.setup.members
    target = m[9]
    first = UnmaskRequest(dropped=(target,), survivors=tuple(m[:9]))
    second = UnmaskRequest(dropped=(), survivors=tuple(m))
    s_shares, b_shares = [], []
    for holder in m[:9]:
        reply = g.members[holder].unmask(first)
        assert target not in reply.b_shares
        s_shares.append(reply.s_sk_shares[target])
        with pytest.raises(SecAggRefusedError, match="already answered"):
            g.members[holder].unmask(second)
        with pytest.raises(SecAggRefusedError, match="already answered"):
            g.members[holder].unmask(first)
    # The target itself never answers a request that calls it dropped.
    with pytest.raises(SecAggRefusedError, match="not among the survivors"):
        g.members[target].unmask(first)
    b_shares.append(g.members[target].unmask(second).b_shares[target])
    # The server holds the target's key shares but only the target's own share of b.
    assert len(s_shares) >= g.setup.threshold
    with pytest.raises(NotEnoughSharesError):
        shamir.combine(b_shares, threshold=g.setup.threshold)


@pytest.mark.parametrize("n", [10, 40])
def test_split_views_never_yield_both_secrets_of_a_member(n: int) -> None:
    """Holders told "v dropped" and holders told "v survived" are disjoint: never both t."""
    g = masked_group(n)
    setup = g.setup
    v = setup.members[0]
    holders = [h for h in setup.neighbours(v)]
    others = [m for m in setup.members if m != v]
    for cut in range(len(holders) + 1):
        told_dropped, told_survived = holders[:cut], holders[cut:]
        assert not (
            len(told_dropped) >= setup.threshold and len(told_survived) + 1 >= setup.threshold
        )
    # Run the largest split for real on fresh members: one of the secrets stays locked.
    cut = setup.threshold
    told_dropped, told_survived = holders[:cut], holders[cut:]
    as_dropped = UnmaskRequest(dropped=(v,), survivors=tuple(others))
    as_survivor = UnmaskRequest(dropped=(), survivors=tuple(setup.members))
    s_shares = [g.members[h].unmask(as_dropped).s_sk_shares[v] for h in told_dropped]
    b_shares = [g.members[h].unmask(as_survivor).b_shares[v] for h in [*told_survived, v]]
    assert len(s_shares) >= setup.threshold
    assert len(b_shares) < setup.threshold
    with pytest.raises(NotEnoughSharesError):
        shamir.combine(b_shares, threshold=setup.threshold)


def test_refusal_reveals_nothing_and_an_honest_request_still_works() -> None:
    g = masked_group()
    m = g.setup.members
    with pytest.raises(SecAggRefusedError):
        g.members[m[0]].unmask(UnmaskRequest(dropped=(m[1],), survivors=(m[1], *m[2:])))
    request = g.server.unmask_request()
    for member in request.survivors:
        g.server.add_unmask(member, g.members[member].unmask(request))
    assert g.server.result()["w"].dtype == np.uint64


def test_member_not_among_survivors_refuses() -> None:
    g = masked_group()
    m = g.setup.members
    with pytest.raises(SecAggRefusedError, match="not among the survivors"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=(), survivors=tuple(m[1:])))


def test_too_few_survivors_refused() -> None:
    g = masked_group()
    m = g.setup.members
    few = tuple(m[: g.setup.min_survivors - 1])
    with pytest.raises(SecAggRefusedError, match="fewer than"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=tuple(m[len(few) :]), survivors=few))


def test_ids_outside_the_group_or_u2_refused() -> None:
    g = masked_group(10, shares=["m09"])  # m09 advertised keys but never sent shares
    m = g.setup.members
    survivors = tuple(m[:9])
    with pytest.raises(SecAggRefusedError, match="outside the group"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=("intruder",), survivors=survivors))
    with pytest.raises(SecAggRefusedError, match="not in U2"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=("m09",), survivors=survivors))
    with pytest.raises(SecAggRefusedError, match="repeated"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=(), survivors=(*survivors, m[1])))
    # Omitting a neighbour that is in U2 from both lists is refused too.
    with pytest.raises(SecAggRefusedError, match="omit"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=(), survivors=survivors[:-1]))
    assert set(g.server.unmask_request().survivors) == set(survivors)


def test_too_few_surviving_holders_refused() -> None:
    g = masked_group(40)
    setup = g.setup
    u = setup.members[0]
    neighbours = setup.neighbours(u)
    # Declare all but threshold - 2 of u's neighbours dropped (others in the group survive).
    dropped = tuple(neighbours[: len(neighbours) - (setup.threshold - 2)])
    survivors = tuple(m for m in setup.members if m not in dropped)
    assert len(survivors) >= setup.min_survivors
    with pytest.raises(SecAggRefusedError, match="holders survive"):
        g.members[u].unmask(UnmaskRequest(dropped=dropped, survivors=survivors))


def test_unmask_before_uploading_is_refused() -> None:
    g = Group(10)
    g.to_keys()
    g.to_shares()
    m = g.setup.members
    with pytest.raises(SecAggRefusedError, match="not uploaded"):
        g.members[m[0]].unmask(UnmaskRequest(dropped=(), survivors=tuple(m)))


# --- keys and neighbour lists --------------------------------------------------------------


def test_keys_of_a_non_neighbour_are_refused() -> None:
    g = Group(40)
    g.to_keys()
    u = g.setup.members[0]
    stranger = next(m for m in g.setup.members if m != u and m not in g.setup.neighbours(u))
    keys = g.server.keys_for(u)
    keys[stranger] = g.members[stranger].advertise()
    with pytest.raises(SecAggRefusedError, match="not its neighbour"):
        g.members[u].share_keys(keys)


def test_replaced_own_keys_and_repeated_keys_are_refused() -> None:
    g = Group(10)
    g.to_keys()
    m = g.setup.members
    keys = g.server.keys_for(m[0])
    forged = dict(keys)
    forged[m[0]] = keys[m[1]]
    with pytest.raises(SecAggRefusedError, match="own public keys"):
        g.members[m[0]].share_keys(forged)
    repeated = dict(keys)
    repeated[m[2]] = keys[m[1]]
    with pytest.raises(SecAggRefusedError, match="same public key"):
        g.members[m[0]].share_keys(repeated)


def test_too_few_keyed_neighbours_are_refused() -> None:
    g = Group(10)
    g.to_keys()
    m = g.setup.members
    keys = g.server.keys_for(m[0])
    few = {v: keys[v] for v in list(keys)[: g.setup.threshold - 1]}
    with pytest.raises(SecAggRefusedError, match="threshold"):
        g.members[m[0]].share_keys(few)


def test_neighbour_list_must_match_the_recomputation() -> None:
    g = Group(40)
    u = g.members[g.setup.members[0]]
    u.check_neighbours(list(reversed(u.neighbours)))
    with pytest.raises(SecAggRefusedError, match="recomputation"):
        u.check_neighbours(u.neighbours[1:])
    other = next(m for m in g.setup.members if m not in u.neighbours and m != u.client_id)
    with pytest.raises(SecAggRefusedError, match="recomputation"):
        u.check_neighbours([*u.neighbours[1:], other])


def test_weakened_setups_are_refused() -> None:
    setup = make_setup(10)
    fields: dict[str, Any] = {
        "round": setup.round,
        "group": setup.group,
        "members": setup.members,
        "seed": setup.seed,
        "degree": setup.degree,
        "threshold": setup.threshold,
        "min_survivors": setup.min_survivors,
        "layout": setup.layout,
        "fraction_bits": setup.fraction_bits,
    }
    bad: list[dict[str, Any]] = [
        {"threshold": setup.threshold - 1},
        {"degree": 2, "threshold": 2},
        {"min_survivors": setup.threshold - 1},
        {"members": tuple(reversed(setup.members))},
        {"members": ("a",)},
        {"seed": b"short"},
        {"group": "a|b"},
        {"fraction_bits": 8},
        {"layout": ()},
    ]
    for change in bad:
        with pytest.raises(SecAggError):
            GroupSetup(**{**fields, **change})
    with pytest.raises(SecAggError):
        SecAggMember("outsider", setup)


# --- tampered and misdirected ciphertexts --------------------------------------------------


def _delivered(g: Group) -> dict[str, dict[str, bytes]]:
    return {m: g.server.shares_for(m) for m in sorted(g.server.u2)}


def test_ciphertexts_swapped_between_recipients_fail_authentication() -> None:
    g = Group(10)
    g.to_keys()
    g.to_shares()
    inbox = _delivered(g)
    m = g.setup.members
    sender = m[5]
    swapped = dict(inbox[m[0]])
    swapped[sender] = inbox[m[1]][sender]  # meant for m[1]
    with pytest.raises(SecAggError, match="authentication"):
        g.members[m[0]].receive_shares(swapped)
    relabelled = dict(inbox[m[0]])
    relabelled[m[6]], relabelled[m[5]] = inbox[m[0]][m[5]], inbox[m[0]][m[6]]
    with pytest.raises(SecAggError, match="authentication"):
        g.members[m[0]].receive_shares(relabelled)
    flipped = dict(inbox[m[0]])
    ct = flipped[sender]
    flipped[sender] = ct[:20] + bytes([ct[20] ^ 0x40]) + ct[21:]
    with pytest.raises(SecAggError, match="authentication"):
        g.members[m[0]].receive_shares(flipped)
    # Nothing was kept by the failures: the genuine inbox is still accepted.
    g.members[m[0]].receive_shares(inbox[m[0]])


def test_ciphertexts_of_another_round_or_group_fail_authentication() -> None:
    # Even with the same key pairs, the HKDF info and the AAD name round and group.
    a, b = kx.generate_private(), kx.generate_private()

    def key(round_: int, group: str) -> bytes:
        return kx.agree(
            a, kx.public_bytes(b), purpose=kx.ENC_PURPOSE, round_=round_, group=group, a="u", b="v"
        )

    sealed = kx.seal(key(1, "cluster-0"), b"share", kx.aad(1, "cluster-0", "u", "v"))
    assert kx.open_sealed(key(1, "cluster-0"), sealed, kx.aad(1, "cluster-0", "u", "v"))
    for round_, group in ((2, "cluster-0"), (1, "cluster-1")):
        with pytest.raises(SecAggError, match="authentication"):
            kx.open_sealed(key(round_, group), sealed, kx.aad(round_, group, "u", "v"))
        with pytest.raises(SecAggError, match="authentication"):
            kx.open_sealed(key(1, "cluster-0"), sealed, kx.aad(round_, group, "u", "v"))


def test_ciphertexts_of_another_group_session_fail() -> None:
    # A replay from an earlier session of the same group: fresh keys per round, so the
    # stale ciphertexts cannot be opened.
    old = Group(10, round_=1)
    old.to_keys()
    old.to_shares()
    stale = _delivered(old)
    new = Group(10, round_=2)
    new.to_keys()
    new.to_shares()
    u = new.setup.members[0]
    with pytest.raises(SecAggError, match="authentication"):
        new.members[u].receive_shares(stale[u])
    new.members[u].receive_shares(new.server.shares_for(u))


def test_shares_from_a_non_neighbour_are_refused() -> None:
    g = Group(40)
    g.to_keys()
    g.to_shares()
    inbox = _delivered(g)
    u = g.setup.members[0]
    stranger = next(m for m in g.setup.members if m != u and m not in g.setup.neighbours(u))
    forged = dict(inbox[u])
    forged[stranger] = next(iter(inbox[stranger].values()))
    with pytest.raises(SecAggRefusedError, match="not a keyed neighbour"):
        g.members[u].receive_shares(forged)


def test_too_few_senders_refused_before_masking() -> None:
    g = Group(10)
    g.to_keys()
    g.to_shares()
    u = g.setup.members[0]
    inbox = g.server.shares_for(u)
    few = dict(list(inbox.items())[: g.setup.threshold - 2])
    with pytest.raises(SecAggRefusedError, match="neighbours sent shares"):
        g.members[u].receive_shares(few)


def test_tampered_unmask_share_is_detected_with_spare_shares() -> None:
    g = masked_group(10)
    request = g.server.unmask_request()
    first, *rest = request.survivors
    reply = g.members[first].unmask(request)
    owner = request.survivors[-1]
    x, y = shamir.decode_share(reply.b_shares[owner])
    bad = dict(reply.b_shares)
    bad[owner] = shamir.encode_share(x, (y + 1) % shamir.PRIME)
    g.server.add_unmask(first, UnmaskReply(s_sk_shares=reply.s_sk_shares, b_shares=bad))
    for member in rest:
        g.server.add_unmask(member, g.members[member].unmask(request))
    with pytest.raises(SecAggError, match="inconsistent"):
        g.server.result()
    assert g.server.stage == "failed"


def test_reply_with_another_holders_share_is_refused() -> None:
    g = masked_group(10)
    request = g.server.unmask_request()
    a, b = request.survivors[:2]
    reply_a = g.members[a].unmask(request)
    reply_b = g.members[b].unmask(request)
    g.server.add_unmask(a, reply_a)
    with pytest.raises(SecAggError, match="another holder"):
        g.server.add_unmask(b, UnmaskReply(s_sk_shares={}, b_shares=reply_a.b_shares))
    missing = dict(reply_b.b_shares)
    missing.popitem()
    with pytest.raises(SecAggError, match="wrong owners"):
        g.server.add_unmask(b, UnmaskReply(s_sk_shares={}, b_shares=missing))
    g.server.add_unmask(b, reply_b)


# --- the server's stage checks ---------------------------------------------------------------


def test_server_refuses_out_of_stage_non_member_and_repeated_messages() -> None:
    g = Group(10)
    s = g.server
    m = g.setup.members
    keys = {x: g.members[x].advertise() for x in m}
    assert s.stage == "keys"
    with pytest.raises(SecAggError, match="not a member"):
        s.add_keys("intruder", keys[m[0]])
    for x in m[:9]:
        s.add_keys(x, keys[x])
    with pytest.raises(SecAggError, match="already"):
        s.add_keys(m[0], keys[m[0]])
    with pytest.raises(SecAggError, match="another member"):
        s.add_keys(m[9], keys[m[0]])
    with pytest.raises(SecAggError, match="stage"):
        s.add_shares(m[0], {})
    with pytest.raises(SecAggError, match="stage"):
        s.add_masked(m[0], {"w": np.zeros(6, dtype=np.uint64)})
    with pytest.raises(SecAggError, match="stage"):
        s.result()

    shares0 = g.members[m[0]].share_keys(s.keys_for(m[0]))  # freezes U1
    assert s.stage == "shares" and s.u1 == set(m[:9])
    with pytest.raises(SecAggError, match="stage"):
        s.add_keys(m[9], keys[m[9]])  # late
    with pytest.raises(SecAggError, match="no secagg keys"):
        s.keys_for(m[9])
    with pytest.raises(SecAggError, match="each neighbour"):
        s.add_shares(m[0], dict(list(shares0.items())[1:]))
    with pytest.raises(SecAggError, match="malformed"):
        s.add_shares(m[0], {k: v[:-1] for k, v in shares0.items()})
    s.add_shares(m[0], shares0)
    with pytest.raises(SecAggError, match="already"):
        s.add_shares(m[0], shares0)
    with pytest.raises(SecAggError, match="no secagg keys"):
        s.add_shares(m[9], shares0)
    with pytest.raises(SecAggError, match="stage"):
        s.unmask_request()
    for x in m[1:9]:
        s.add_shares(x, g.members[x].share_keys(s.keys_for(x)))

    for x in m[:9]:
        g.members[x].receive_shares(s.shares_for(x))  # the first call freezes U2
    assert s.stage == "masked" and s.u2 == set(m[:9])
    with pytest.raises(SecAggError, match="stage"):
        s.add_shares(m[9], shares0)
    with pytest.raises(SecAggError, match="no secagg shares"):
        s.shares_for(m[9])
    with pytest.raises(SecAggError, match="uint64"):
        s.add_masked(m[0], {"w": np.zeros(6, dtype=np.int64)})
    with pytest.raises(SecAggError, match="shape"):
        s.add_masked(m[0], {"w": np.zeros(5, dtype=np.uint64)})
    with pytest.raises(SecAggError, match="names"):
        s.add_masked(m[0], {"v": np.zeros(6, dtype=np.uint64)})
    y0 = g.members[m[0]].mask(g.encoded(m[0]))
    s.add_masked(m[0], y0)
    with pytest.raises(SecAggError, match="already"):
        s.add_masked(m[0], y0)
    with pytest.raises(SecAggError, match="no secagg shares"):
        s.add_masked(m[9], y0)
    with pytest.raises(SecAggError, match="stage"):
        s.add_unmask(m[0], UnmaskReply({}, {}))
    for x in m[1:8]:
        s.add_masked(x, g.members[x].mask(g.encoded(x)))

    request = s.unmask_request()  # freezes U3; m[8] dropped during training
    assert s.stage == "unmask" and s.u3 == set(m[:8])
    assert request.dropped == (m[8],)
    assert s.unmask_request() == request
    with pytest.raises(SecAggError, match="stage"):
        s.add_masked(m[8], g.members[m[8]].mask(g.encoded(m[8])))
    with pytest.raises(SecAggError, match="no masked input"):
        s.add_unmask(m[8], UnmaskReply({}, {}))
    with pytest.raises(SecAggError, match="not a member"):
        s.add_unmask("intruder", UnmaskReply({}, {}))
    replies = {x: g.members[x].unmask(request) for x in m[:8]}
    for x in m[:8]:
        s.add_unmask(x, replies[x])
    with pytest.raises(SecAggError, match="already"):
        s.add_unmask(m[0], replies[m[0]])
    total = s.result()
    assert s.stage == "done"
    expected = sum((g.encoded(x)["w"] for x in m[:8]), np.zeros(6, dtype=np.uint64))
    assert np.array_equal(total["w"], expected)
    assert np.array_equal(s.result()["w"], expected)
    with pytest.raises(SecAggError, match="stage"):
        s.add_unmask(m[0], replies[m[0]])


def test_member_refuses_out_of_order_calls() -> None:
    g = Group(10)
    u = g.members[g.setup.members[0]]
    with pytest.raises(SecAggError, match="cannot share keys"):
        u.share_keys({})
    with pytest.raises(SecAggError, match="cannot receive shares"):
        u.receive_shares({})
    with pytest.raises(SecAggError, match="cannot mask"):
        u.mask(g.encoded(u.client_id))
    g.to_keys()
    g.to_shares()
    with pytest.raises(SecAggError, match="already shared"):
        u.advertise()
    u.receive_shares(g.server.shares_for(u.client_id))
    with pytest.raises(SecAggError, match="uint64"):
        u.mask({"w": np.zeros(6)})
    u.mask(g.encoded(u.client_id))
    with pytest.raises(SecAggError, match="cannot mask"):
        u.mask(g.encoded(u.client_id))  # a second masked input would leak a difference


def test_public_keys_are_validated() -> None:
    with pytest.raises(SecAggError):
        PublicKeys(c_pk=b"x" * 31, s_pk=b"y" * 32)
    with pytest.raises(SecAggError):
        PublicKeys(c_pk=b"x" * 32, s_pk=b"x" * 32)


def test_server_refuses_low_order_public_keys() -> None:
    g = Group(3)
    good = g.members["m00"].advertise()
    with pytest.raises(SecAggError, match="low-order"):
        g.server.add_keys("m00", PublicKeys(c_pk=bytes(32), s_pk=good.s_pk))
    with pytest.raises(SecAggError, match="low-order"):
        g.server.add_keys("m00", PublicKeys(c_pk=good.c_pk, s_pk=(1).to_bytes(32, "little")))
    g.server.add_keys("m00", good)


def test_closing_stages_explicitly() -> None:
    g = Group(10)
    g.to_keys(skip=["m09"])
    assert g.server.close_keys() == frozenset(g.setup.members[:9])
    assert g.server.close_keys() == frozenset(g.setup.members[:9])  # idempotent
    g.to_shares(skip=["m08"])
    assert g.server.close_shares() == frozenset(g.setup.members[:8])
    with pytest.raises(SecAggError, match="stage"):
        g.server.close_keys()
    short = Group(10)
    short.to_keys(skip=short.setup.members[: 10 - short.setup.min_survivors + 1])
    with pytest.raises(NotEnoughSharesError):
        short.server.close_keys()
    assert short.server.stage == "failed"

"""Secure aggregation end to end (plain objects, no network): members and a server.

The unmasked sum must equal the sum of the survivors' encoded inputs modulo 2^64 bit for
bit, with dropouts at every stage; too many dropouts end in NotEnoughSharesError and no
sum at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedprompt.errors import InvalidArgumentError
from fedprompt.secagg import (
    GroupSetup,
    Layout,
    NotEnoughSharesError,
    SecAggMember,
    SecAggRefusedError,
    SecAggServer,
    layout_of,
    secagg_plus_degree,
)

MAX_ABS = 4.0
SHAPES = {"global.prompt": (3, 5), "cluster.head": (7,), "secagg.weight.global": (1,)}


def ids(n: int) -> list[str]:
    return [f"silo-{i:03d}" for i in range(n)]


def make_layout() -> Layout:
    return layout_of({name: np.zeros(shape) for name, shape in SHAPES.items()})


def make_setup(
    n: int,
    *,
    round_: int = 3,
    seed: bytes | None = None,
    max_dropout: float = 0.3,
    sparse: bool = True,
) -> GroupSetup:
    return GroupSetup.create(
        round=round_,
        group="cluster-1",
        members=ids(n),
        layout=make_layout(),
        max_abs=MAX_ABS,
        seed=seed if seed is not None else bytes(range(32)),
        max_dropout=max_dropout,
        degree=secagg_plus_degree(n) if sparse else None,
    )


@dataclass
class Round:
    """A round driven stage by stage, with members dropping out where told."""

    setup: GroupSetup
    server: SecAggServer
    members: dict[str, SecAggMember]
    inputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    encoded: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def start(cls, n: int, *, seed: int = 0) -> Round:
        setup = make_setup(n)
        rng = np.random.default_rng(seed)
        rnd = cls(setup, SecAggServer(setup), {m: SecAggMember(m, setup) for m in setup.members})
        for m in setup.members:
            x = {name: rng.uniform(-MAX_ABS, MAX_ABS, shape) for name, shape in SHAPES.items()}
            rnd.inputs[m] = x
            rnd.encoded[m] = {k: setup.fixed_point.encode(v, max_abs=MAX_ABS) for k, v in x.items()}
        return rnd

    def keys(self, drop: Collection[str] = ()) -> None:
        for m, member in self.members.items():
            if m not in drop:
                self.server.add_keys(m, member.advertise())

    def shares(self, drop: Collection[str] = ()) -> None:
        for m in sorted(self.server.u1 - set(drop)):
            self.server.add_shares(m, self.members[m].share_keys(self.server.keys_for(m)))

    def masked(self, drop: Collection[str] = ()) -> None:
        for m in sorted(self.server.u2):
            self.members[m].receive_shares(self.server.shares_for(m))
        for m in sorted(self.server.u2 - set(drop)):
            self.server.add_masked(m, self.members[m].mask(self.encoded[m]))

    def unmask(self, drop: Collection[str] = ()) -> None:
        request = self.server.unmask_request()
        for m in request.survivors:
            if m not in drop:
                self.server.add_unmask(m, self.members[m].unmask(request))

    def expected(self) -> dict[str, np.ndarray]:
        total = {name: np.zeros(shape, dtype=np.uint64) for name, shape in SHAPES.items()}
        for m in self.server.u3:
            for name in total:
                total[name] += self.encoded[m][name]
        return total

    def run(
        self,
        *,
        after_keys: Collection[str] = (),
        after_shares: Collection[str] = (),
        training: Collection[str] = (),
        unmask: Collection[str] = (),
    ) -> dict[str, np.ndarray]:
        self.keys(after_keys)
        self.shares(after_shares)
        self.masked(training)
        self.unmask(unmask)
        return self.server.result()


def assert_exact(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(result) == set(expected)
    for name, total in expected.items():
        assert result[name].dtype == np.uint64
        assert np.array_equal(result[name], total), name


@pytest.mark.parametrize("n", [3, 10, 40])
def test_masks_cancel_bit_for_bit(n: int) -> None:
    rnd = Round.start(n, seed=n)
    result = rnd.run()
    assert rnd.server.u3 == set(rnd.setup.members)
    assert_exact(result, rnd.expected())
    assert rnd.server.stage == "done"


def test_sparse_graph_at_40_members() -> None:
    setup = make_setup(40)
    assert setup.degree < 39
    assert all(len(setup.neighbours(m)) == setup.degree for m in setup.members)


def test_masked_inputs_look_nothing_like_the_inputs() -> None:
    rnd = Round.start(10)
    rnd.keys()
    rnd.shares()
    for m in rnd.setup.members:
        rnd.members[m].receive_shares(rnd.server.shares_for(m))
    m = rnd.setup.members[0]
    masked = rnd.members[m].mask(rnd.encoded[m])
    for name, values in masked.items():
        assert not np.array_equal(values, rnd.encoded[m][name])


@pytest.mark.parametrize("n", [10, 40])
@pytest.mark.parametrize("stage", ["after_keys", "after_shares", "training", "unmask"])
def test_dropouts_at_each_stage_recover_the_survivors_sum(n: int, stage: str) -> None:
    rnd = Round.start(n, seed=7)
    members = rnd.setup.members
    drop = [members[i] for i in range(0, n, 5)][: n - rnd.setup.min_survivors]
    assert drop
    result = rnd.run(**{stage: drop})
    if stage == "unmask":
        assert rnd.server.u3 == set(members)
    else:
        assert rnd.server.u3 == set(members) - set(drop)
    assert_exact(result, rnd.expected())


def test_dropouts_at_every_stage_together() -> None:
    rnd = Round.start(40, seed=11)
    m = rnd.setup.members
    result = rnd.run(after_keys=[m[1]], after_shares=[m[9]], training=[m[17], m[30]], unmask=[m[5]])
    assert rnd.server.u3 == set(m) - {m[1], m[9], m[17], m[30]}
    assert_exact(result, rnd.expected())


def test_float_sum_within_rounding() -> None:
    rnd = Round.start(10, seed=3)
    result = rnd.run(training=[rnd.setup.members[2]])
    fp = rnd.setup.fixed_point
    n = len(rnd.server.u3)
    scale = Fraction(2**fp.fraction_bits)
    for name in SHAPES:
        # Exact arithmetic: each value is rounded once, by at most 2^-(f+1).
        exact = [
            sum((Fraction(float(rnd.inputs[m][name].flat[i])) for m in rnd.server.u3), Fraction(0))
            for i in range(result[name].size)
        ]
        decoded = [Fraction(int(v)) / scale for v in result[name].view(np.int64).flat]
        assert all(
            abs(d - e) <= Fraction(n, 2 ** (fp.fraction_bits + 1))
            for d, e in zip(decoded, exact, strict=True)
        )
        # Float decode: within n 2^-f plus float64's own rounding of the sum.
        plain = sum(rnd.inputs[m][name] for m in rnd.server.u3)
        tolerance = n * 2.0**-fp.fraction_bits + 8 * np.finfo(np.float64).eps * n * MAX_ABS
        assert np.max(np.abs(fp.decode(result[name]) - plain)) <= tolerance


@pytest.mark.parametrize("stage", ["after_keys", "after_shares", "training"])
def test_too_many_dropouts_skip_the_group(stage: str) -> None:
    rnd = Round.start(10, seed=5)
    drop = rnd.setup.members[: 10 - rnd.setup.min_survivors + 1]
    with pytest.raises(NotEnoughSharesError):
        rnd.run(**{stage: drop})
    assert rnd.server.stage == "failed"
    with pytest.raises(InvalidArgumentError):
        rnd.server.result()


def test_too_few_unmask_replies_raise_and_return_nothing() -> None:
    rnd = Round.start(10, seed=5)
    rnd.keys()
    rnd.shares()
    rnd.masked()
    request = rnd.server.unmask_request()
    for m in request.survivors[: rnd.setup.threshold - 1]:
        rnd.server.add_unmask(m, rnd.members[m].unmask(request))
    with pytest.raises(NotEnoughSharesError):
        rnd.server.result()
    assert rnd.server.stage == "failed"
    with pytest.raises(InvalidArgumentError):
        rnd.server.result()


def test_two_members_need_both() -> None:
    rnd = Round.start(2)
    assert (rnd.setup.degree, rnd.setup.threshold, rnd.setup.min_survivors) == (1, 2, 2)
    assert_exact(rnd.run(), rnd.expected())
    with pytest.raises(NotEnoughSharesError):
        Round.start(2).run(training=[ids(2)[0]])


def test_three_members_with_a_dropout_allowed() -> None:
    setup = GroupSetup.create(
        round=0, group="g", members=ids(3), layout=make_layout(), max_abs=MAX_ABS, max_dropout=0.4
    )
    assert (setup.degree, setup.threshold, setup.min_survivors) == (2, 2, 2)
    rnd = Round.start(3)
    rnd.setup = setup
    rnd.server = SecAggServer(setup)
    rnd.members = {m: SecAggMember(m, setup) for m in setup.members}
    result = rnd.run(training=[ids(3)[1]])
    assert rnd.server.u3 == {ids(3)[0], ids(3)[2]}
    assert_exact(result, rnd.expected())


def test_setup_fields_are_exactly_the_spec() -> None:
    setup = make_setup(5)
    assert [f.name for f in dataclasses.fields(setup)] == [
        "round",
        "group",
        "members",
        "seed",
        "degree",
        "threshold",
        "min_survivors",
        "layout",
        "fraction_bits",
    ]
    assert setup == make_setup(5)
    assert (
        GroupSetup.create(
            round=3,
            group="cluster-1",
            members=list(reversed(ids(5))),
            layout=make_layout(),
            max_abs=MAX_ABS,
            seed=bytes(range(32)),
        )
        == setup
    )
    with pytest.raises(InvalidArgumentError):
        GroupSetup.create(
            round=3, group="g", members=["a", "a", "b"], layout=make_layout(), max_abs=1.0
        )
    assert (
        len(
            GroupSetup.create(
                round=0, group="g", members=ids(3), layout=make_layout(), max_abs=1.0
            ).seed
        )
        == 32
    )


def _drive_with_refusals(rnd: Round, drops: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Run a round where members drop where told and refusing members count as dropped."""
    server = rnd.server
    for m, member in rnd.members.items():
        if m not in drops["keys"]:
            server.add_keys(m, member.advertise())
    for m in sorted(server.u1 - drops["shares"]):
        with contextlib.suppress(SecAggRefusedError):
            server.add_shares(m, rnd.members[m].share_keys(server.keys_for(m)))
    for m in sorted(server.u2 - drops["masked"]):
        try:
            rnd.members[m].receive_shares(server.shares_for(m))
        except SecAggRefusedError:
            continue
        server.add_masked(m, rnd.members[m].mask(rnd.encoded[m]))
    request = server.unmask_request()
    for m in request.survivors:
        if m not in drops["unmask"]:
            with contextlib.suppress(SecAggRefusedError):
                server.add_unmask(m, rnd.members[m].unmask(request))
    return server.result()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 30), data=st.data())
def test_random_dropouts_give_the_exact_sum_or_nothing(n: int, data: st.DataObject) -> None:
    rnd = Round.start(n, seed=n)
    stages = ("keys", "shares", "masked", "unmask")
    drops = {
        stage: set(data.draw(st.lists(st.sampled_from(ids(n)), max_size=max(1, n // 4))))
        for stage in stages
    }
    try:
        result = _drive_with_refusals(rnd, drops)
    except NotEnoughSharesError:
        assert rnd.server.stage == "failed"
        event("skipped")
        return
    event("unmasked")
    assert len(rnd.server.u3) >= rnd.setup.min_survivors
    assert_exact(result, rnd.expected())


def test_no_member_ever_hands_out_both_secrets_of_one_owner() -> None:
    rnd = Round.start(40, seed=13)
    m = rnd.setup.members
    rnd.keys([m[2]])
    rnd.shares([m[4]])
    rnd.masked([m[6], m[7]])
    request = rnd.server.unmask_request()
    s_owners: set[str] = set()
    b_owners: set[str] = set()
    for member in request.survivors:
        reply = rnd.members[member].unmask(request)
        s_owners |= set(reply.s_sk_shares)
        b_owners |= set(reply.b_shares)
        rnd.server.add_unmask(member, reply)
    assert s_owners <= {m[6], m[7]}
    assert b_owners <= set(request.survivors)
    assert not s_owners & b_owners
    assert_exact(rnd.server.result(), rnd.expected())


def test_degree_grows_with_the_tolerated_dropout() -> None:
    # 30 % random dropouts need more holders per secret than 10 % for the same skip rate
    dense = make_setup(100, sparse=False)
    assert dense.degree > make_setup(100, max_dropout=0.1, sparse=False).degree
    assert dense.degree > make_setup(100).degree == secagg_plus_degree(100)
    assert make_setup(40, sparse=False).degree == 39  # the complete graph


def test_cost_per_member_follows_the_degree() -> None:
    rnd = Round.start(100)
    assert rnd.setup.degree == 20
    rnd.keys()
    for member in rnd.setup.members[:5]:
        keys = rnd.server.keys_for(member)
        assert len(keys) == rnd.setup.degree + 1
        assert len(rnd.members[member].share_keys(keys)) == rnd.setup.degree


def test_masks_are_fresh_each_round() -> None:
    outputs = []
    for _ in range(2):
        rnd = Round.start(3, seed=1)
        rnd.keys()
        rnd.shares()
        for member in rnd.setup.members:
            rnd.members[member].receive_shares(rnd.server.shares_for(member))
        first = rnd.setup.members[0]
        outputs.append(rnd.members[first].mask(rnd.encoded[first]))
    for name in SHAPES:
        assert not np.array_equal(outputs[0][name], outputs[1][name])

"""Secure aggregation end to end (plain objects, no network): members and a server.

The unmasked sum must equal the sum of the survivors' encoded inputs modulo 2^64 bit for
bit, with dropouts at every stage; too many dropouts end in NotEnoughSharesError and no
sum at all.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt.secagg import (
    GroupSetup,
    Layout,
    NotEnoughSharesError,
    SecAggMember,
    SecAggServer,
    layout_of,
)

MAX_ABS = 4.0
SHAPES = {"global.prompt": (3, 5), "cluster.head": (7,), "secagg.weight.global": (1,)}


def ids(n: int) -> list[str]:
    return [f"silo-{i:03d}" for i in range(n)]


def make_layout() -> Layout:
    return layout_of({name: np.zeros(shape) for name, shape in SHAPES.items()})


def make_setup(n: int, *, round_: int = 3, seed: bytes | None = None) -> GroupSetup:
    return GroupSetup.create(
        round=round_,
        group="cluster-1",
        members=ids(n),
        layout=make_layout(),
        max_abs=MAX_ABS,
        seed=seed if seed is not None else bytes(range(32)),
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

"""Building blocks of secure aggregation: encoding, graph, Shamir, keys, masks."""

from __future__ import annotations

import math
import warnings
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprompt.errors import InvalidArgumentError
from fedprompt.secagg import (
    EncodingRangeError,
    FixedPoint,
    NotEnoughSharesError,
    SecAggError,
    degree_for_dropout,
    harary_neighbours,
    layout_of,
    min_survivors,
    prg,
    secagg_plus_degree,
    shamir,
    share_threshold,
)
from fedprompt.secagg import keys as kx

SEED = bytes(range(32))


# --- errors -------------------------------------------------------------------------


def test_errors_are_invalid_argument_errors() -> None:
    from fedprompt.secagg import SecAggRefusedError

    for cls in (SecAggRefusedError, NotEnoughSharesError, EncodingRangeError):
        assert issubclass(cls, SecAggError)
    assert issubclass(SecAggError, InvalidArgumentError)


# --- encoding -----------------------------------------------------------------------


def test_layout_is_sorted_with_shapes() -> None:
    layout = layout_of({"b": np.zeros((2, 3)), "a": np.zeros(4), "c": np.zeros(())})
    assert layout == (("a", (4,)), ("b", (2, 3)), ("c", ()))


@pytest.mark.parametrize(
    ("members", "max_abs"),
    [(1, 1.0), (10, 1.0), (100, 0.5), (3, 1e3), (1000, 7.3), (3, 1 / 3), (7, 1e-9), (1, 2.0**46)],
)
def test_for_sum_picks_the_largest_safe_fraction_bits(members: int, max_abs: float) -> None:
    f = FixedPoint.for_sum(members=members, max_abs=max_abs).fraction_bits
    bound = Fraction(max_abs) * members  # exact
    assert bound * Fraction(2) ** f <= 2**62
    assert bound * Fraction(2) ** (f + 1) > 2**62


def test_for_sum_at_a_power_of_two() -> None:
    assert FixedPoint.for_sum(members=4, max_abs=1.0).fraction_bits == 60
    assert FixedPoint.for_sum(members=1, max_abs=2.0**46).fraction_bits == 16


def test_for_sum_refuses_fewer_than_16_bits() -> None:
    with pytest.raises(EncodingRangeError, match="fraction bits"):
        FixedPoint.for_sum(members=1, max_abs=2.0**47)
    with pytest.raises(EncodingRangeError, match="minimum 16"):
        FixedPoint.for_sum(members=1000, max_abs=2.0**40)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_for_sum_refuses_bad_bounds(bad: float) -> None:
    with pytest.raises(EncodingRangeError):
        FixedPoint.for_sum(members=3, max_abs=bad)
    with pytest.raises(EncodingRangeError):
        FixedPoint.for_sum(members=0, max_abs=1.0)


def test_fixed_point_refuses_few_bits() -> None:
    with pytest.raises(EncodingRangeError):
        FixedPoint(15)


def test_encode_refuses_out_of_range_and_non_finite() -> None:
    fp = FixedPoint(40)
    with pytest.raises(EncodingRangeError, match="exceeds"):
        fp.encode(np.array([0.5, -1.5]), max_abs=1.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(EncodingRangeError, match="non-finite"):
            fp.encode(np.array([0.0, bad]), max_abs=1.0)
    with pytest.raises(EncodingRangeError, match="does not fit"):
        fp.encode(np.array([0.0]), max_abs=2.0**23)


def test_encode_keeps_the_bound_itself() -> None:
    fp = FixedPoint(20)
    out = fp.encode(np.array([1.0, -1.0]), max_abs=1.0)
    assert out.dtype == np.uint64
    assert fp.decode(out).tolist() == [1.0, -1.0]


def test_decode_refuses_non_uint64() -> None:
    with pytest.raises(SecAggError):
        FixedPoint(20).decode(np.zeros(3, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=4, max_size=4),
        min_size=1,
        max_size=50,
    )
)
def test_sum_of_encodings_wraps_and_decodes_exactly(values: list[list[float]]) -> None:
    n = len(values)
    fp = FixedPoint.for_sum(members=n, max_abs=3.0)
    total = np.zeros(4, dtype=np.uint64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # uint64 wrap-around must not warn
        for row in values:
            total += fp.encode(np.array(row), max_abs=3.0)
    exact = np.array([sum(col) for col in zip(*values, strict=True)])
    err = np.abs(fp.decode(total) - exact)
    assert np.all(err <= n * 2.0**-fp.fraction_bits + 1e-13 * n)


# --- graph --------------------------------------------------------------------------


def test_dropout_degree_keeps_rounds_recoverable() -> None:
    # the union bound over members: n · P[Bin(k, 1-p) < t] <= 1 %, checked by simulation
    rng = np.random.default_rng(0)
    for n, p in ((100, 0.3), (200, 0.1), (1000, 0.3)):
        k = degree_for_dropout(n, max_dropout=p)
        assert secagg_plus_degree(n) <= k < n - 1
        assert k % 2 == 0
        alive = rng.binomial(k, 1 - p, size=2_000_000)
        assert np.mean(alive < share_threshold(k)) * n <= 0.012
        smaller = k - 2  # the next sparser ring would not do (when above the privacy floor)
        if smaller >= secagg_plus_degree(n):
            alive = rng.binomial(smaller, 1 - p, size=2_000_000)
            assert np.mean(alive < share_threshold(smaller)) * n > 0.008
    assert (
        degree_for_dropout(1000, max_dropout=0.3) < 4 * degree_for_dropout(10, max_dropout=0.3) * 10
    )
    assert (
        degree_for_dropout(10_000, max_dropout=0.3) - degree_for_dropout(1000, max_dropout=0.3) < 40
    )
    with pytest.raises(SecAggError):
        degree_for_dropout(10, max_dropout=1.0)


def test_degree_grows_like_log_n() -> None:
    assert secagg_plus_degree(2) == 1
    assert [secagg_plus_degree(n) for n in (3, 10, 11)] == [2, 9, 10]
    assert secagg_plus_degree(12) == 11  # complete graph up to n = 12
    assert secagg_plus_degree(13) == 12
    assert secagg_plus_degree(100) == 20
    assert secagg_plus_degree(1000) == 30
    for n in (50, 200, 1000, 5000):
        k = secagg_plus_degree(n)
        assert k % 2 == 0 and k >= 3 * math.log2(n)


def _connected(graph: dict[str, tuple[str, ...]]) -> bool:
    start = next(iter(graph))
    seen = {start}
    queue = deque([start])
    while queue:
        for v in graph[queue.popleft()]:
            if v not in seen:
                seen.add(v)
                queue.append(v)
    return len(seen) == len(graph)


@pytest.mark.parametrize("n", [2, 3, 7, 11, 12, 40, 101, 1000])
def test_harary_graph_is_regular_symmetric_connected(n: int) -> None:
    members = [f"m{i}" for i in range(n)]
    k = secagg_plus_degree(n)
    graph = harary_neighbours(members, degree=k, seed=SEED)
    assert set(graph) == set(members)
    for m, neigh in graph.items():
        assert len(neigh) == k
        assert m not in neigh
        assert len(set(neigh)) == k
        assert all(m in graph[v] for v in neigh)
    assert _connected(graph)
    if n == 1000:
        assert k < 100


def test_harary_graph_is_deterministic_from_the_seed() -> None:
    members = [f"m{i}" for i in range(60)]
    k = secagg_plus_degree(60)
    a = harary_neighbours(members, degree=k, seed=SEED)
    b = harary_neighbours(list(reversed(members)), degree=k, seed=SEED)
    c = harary_neighbours(members, degree=k, seed=bytes(32))
    assert a == b
    assert a != c


def test_harary_refuses_bad_input() -> None:
    with pytest.raises(SecAggError):
        harary_neighbours(["a", "b", "c", "d", "e"], degree=3, seed=SEED)
    with pytest.raises(SecAggError):
        harary_neighbours(["a", "a", "b"], degree=2, seed=SEED)
    with pytest.raises(SecAggError):
        harary_neighbours(["a", "b"], degree=1, seed=b"short")


def test_threshold_is_a_strict_majority_of_holders() -> None:
    for k in range(1, 200):
        t = share_threshold(k)
        assert t >= 2
        assert 2 * t > k + 1  # two disjoint sets of t holders cannot exist
        assert t <= k + 1
    assert share_threshold(1) == 2
    assert share_threshold(2) == 2
    assert share_threshold(16) == 9


def test_min_survivors() -> None:
    assert min_survivors(10, 6) == 7
    assert min_survivors(10, 8) == 8
    assert min_survivors(100, 11) == 70
    assert min_survivors(3, 2, max_dropout=0.0) == 3
    with pytest.raises(SecAggError):
        min_survivors(10, 6, max_dropout=1.0)


# --- Shamir ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(2, 12),
    data=st.data(),
)
def test_any_threshold_shares_reconstruct(secret: bytes, holders: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, holders))
    xs = data.draw(st.lists(st.integers(1, 5000), min_size=holders, max_size=holders, unique=True))
    shares = shamir.split(secret, xs=xs, threshold=t)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=holders, unique=True))
    assert shamir.combine([shares[x] for x in subset], threshold=t) == secret
    if t > 1:
        fewer = subset[: t - 1]
        with pytest.raises(NotEnoughSharesError, match=f"threshold {t}"):
            shamir.combine([shares[x] for x in fewer], threshold=t)


def test_shamir_duplicates_do_not_count_twice() -> None:
    shares = shamir.split(SEED, xs=[1, 2, 3], threshold=2)
    with pytest.raises(NotEnoughSharesError):
        shamir.combine([shares[1], shares[1]], threshold=2)


def test_shamir_detects_a_tampered_extra_share() -> None:
    shares = shamir.split(SEED, xs=[1, 2, 3, 4], threshold=2)
    x, y = shamir.decode_share(shares[4])
    forged = shamir.encode_share(x, (y + 1) % shamir.PRIME)
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir.combine([shares[1], shares[2], forged], threshold=2)


def test_shamir_refuses_malformed_shares() -> None:
    with pytest.raises(SecAggError):
        shamir.combine([b"\x00" * 5], threshold=1)
    with pytest.raises(SecAggError):
        shamir.combine([shamir.encode_share(0, 5)], threshold=1)
    with pytest.raises(SecAggError):
        shamir.split(b"short", xs=[1, 2], threshold=2)
    with pytest.raises(SecAggError):
        shamir.split(SEED, xs=[1, 1], threshold=2)
    with pytest.raises(SecAggError):
        shamir.split(SEED, xs=[1, 2], threshold=3)


def test_t_minus_one_shares_say_nothing_about_the_secret() -> None:
    # Two different secrets can have identical t-1 shares (perfect hiding): with t = 2,
    # one share (x, y) is consistent with every secret.
    share = shamir.split(SEED, xs=[1, 2], threshold=2)[1]
    _, y = shamir.decode_share(share)
    other = bytes(32)
    slope = (y - int.from_bytes(other, "big")) % shamir.PRIME
    second = shamir.encode_share(2, (int.from_bytes(other, "big") + 2 * slope) % shamir.PRIME)
    assert shamir.combine([share, second], threshold=2) == other


# --- keys and masks -------------------------------------------------------------------


def test_pair_keys_agree_and_differ_by_purpose_round_group() -> None:
    a, b = kx.generate_private(), kx.generate_private()
    pa, pb = kx.public_bytes(a), kx.public_bytes(b)
    k1 = kx.agree(a, pb, purpose=kx.MASK_PURPOSE, round_=1, group="g", a="u", b="v")
    k2 = kx.agree(b, pa, purpose=kx.MASK_PURPOSE, round_=1, group="g", a="v", b="u")
    assert k1 == k2 and len(k1) == 32
    others = {
        kx.agree(a, pb, purpose=kx.ENC_PURPOSE, round_=1, group="g", a="u", b="v"),
        kx.agree(a, pb, purpose=kx.MASK_PURPOSE, round_=2, group="g", a="u", b="v"),
        kx.agree(a, pb, purpose=kx.MASK_PURPOSE, round_=1, group="h", a="u", b="v"),
    }
    assert k1 not in others and len(others) == 3


def test_low_order_public_key_is_refused() -> None:
    with pytest.raises(SecAggError):
        kx.agree(
            kx.generate_private(), bytes(32), purpose="mask", round_=1, group="g", a="u", b="v"
        )


def test_seal_binds_key_and_associated_data() -> None:
    key = bytes(range(32))
    sealed = kx.seal(key, b"hello", b"1|g|u|v")
    assert kx.open_sealed(key, sealed, b"1|g|u|v") == b"hello"
    with pytest.raises(SecAggError, match="authentication"):
        kx.open_sealed(key, sealed, b"1|g|u|w")
    with pytest.raises(SecAggError, match="authentication"):
        kx.open_sealed(bytes(32), sealed, b"1|g|u|v")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecAggError, match="authentication"):
        kx.open_sealed(key, flipped, b"1|g|u|v")


def test_prg_is_deterministic_uint64_and_seed_dependent() -> None:
    a = prg.expand(SEED, 1000)
    assert a.dtype == np.uint64 and a.shape == (1000,)
    assert np.array_equal(a, prg.expand(SEED, 1000))
    assert np.array_equal(a[:10], prg.expand(SEED, 10))
    assert not np.array_equal(a, prg.expand(bytes(32), 1000))
    assert prg.expand(SEED, 0).shape == (0,)
    # Roughly uniform bits: mean of the top bit near 1/2.
    assert 0.4 < float(np.mean(a >> np.uint64(63))) < 0.6
    with pytest.raises(SecAggError):
        prg.expand(b"short", 4)

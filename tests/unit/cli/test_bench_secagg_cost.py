"""``bench.secagg_cost`` at a tiny size: its figures are consistent (no timing thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.secagg_cost import (
    CaseResult,
    fpl_text_shapes,
    main,
    run_case,
    skip_rate,
)
from fedprompt.secagg import GroupSetup, layout_of

TINY = {"prompt.global": (2, 4), "head.bias": (3,)}


def _case(members: int, dropout: float = 0.0) -> CaseResult:
    # run_case asserts the unmasked sum equals the plain fixed-point sum bit for bit
    return run_case("tiny", TINY, members=members, dropout=dropout)


def test_bytes_grow_with_members_and_the_sum_is_exact() -> None:
    small, large = _case(4), _case(8)
    assert small.completed and large.completed
    assert small.max_decode_error <= 4 * 2.0 ** -(small.fraction_bits + 1) + 1e-9
    assert small.plain_upload == large.plain_upload
    # the masked payload has the same layout whatever the group size
    assert small.member_sent["masked"] == large.member_sent["masked"]
    assert large.member_sent["shares"] > small.member_sent["shares"]
    assert large.member_recv["total"] > small.member_recv["total"]
    assert large.coord_recv > small.coord_recv and large.coord_sent > small.coord_sent
    for r in (small, large):
        parts = ("keys", "shares", "masked", "unmask")
        assert r.member_sent["total"] == pytest.approx(sum(r.member_sent[p] for p in parts))
        assert r.member_sent["keys"] == 64  # two raw X25519 public keys
        assert r.expansion == r.member_sent["total"] / r.plain_upload > 1
        assert r.coord_recv >= r.members * r.member_sent["keys"]
        assert all(s >= 0 for s in (*r.member_s.values(), *r.coord_s.values()))


def test_dropouts_are_recovered_and_cost_unmask_bytes() -> None:
    full, lossy = _case(8), _case(8, dropout=0.25)
    assert lossy.dropped == 2 and lossy.completed
    # survivors reveal the dropped members' s_sk shares on top of the b shares
    assert lossy.member_sent["unmask"] > 0 and full.member_sent["unmask"] > 0
    assert lossy.coord_recv < full.coord_recv  # two masked payloads never arrive


def test_fpl_text_shapes_and_the_cli_prints_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    shapes = fpl_text_shapes(16)
    assert shapes["prompt.global"] == (8, 16) and shapes["head.bias"] == (8,)
    assert main(["--members", "3", "--dropouts", "0", "--large-floats", "0", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| plain |" in out and "| secagg |" in out and "1/1 rounds reconstructed" in out


def test_skip_rate_counts_drop_sets_below_the_threshold() -> None:
    members = [f"m{i}" for i in range(8)]
    layout = layout_of({"x": np.zeros(2)})
    setup = GroupSetup.create(round=1, group="g", members=members, layout=layout, max_abs=1.0)
    rng = np.random.default_rng(0)
    assert setup.degree == 7  # complete graph: every holder set is the whole group
    survivable = len(members) - max(setup.threshold, setup.min_survivors)
    assert skip_rate(setup, 0, trials=50, rng=rng) == 0.0
    assert skip_rate(setup, survivable, trials=50, rng=rng) == 0.0
    assert skip_rate(setup, survivable + 1, trials=50, rng=rng) == 1.0


def test_a_round_short_of_survivors_is_skipped_not_unmasked() -> None:
    # 4 of 8 survive, under min_survivors: members refuse, the bench checks it expected that
    lost = _case(8, dropout=0.5)
    assert not lost.completed and lost.rounds_completed == 0
    assert lost.skip_rate is None and lost.min_survivors > 4

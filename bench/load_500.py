"""Load bench: 500 concurrent light clients, one coordinator process, 20 rounds.

Every client is a real gRPC client (its own channel and TCP connection) that speaks the whole
protocol (Join, StreamTasks with the model inline, UploadUpdate of a random delta with its
training metrics, ReportMetrics of the evaluation) but
trains nothing (``bench/light_clients.py``). The bench prints, per round, the coordinator's
resident memory (RSS) when the round's last evaluation came in, and the round's wall time;
then whether every round completed, the errors, and how much RSS grew after warm-up.

    make bench-load                          # 500 clients, 20 rounds (a few minutes on 2 cores)
    .venv/bin/python -m bench.load_500 --clients 50 --rounds 5     # a quick look

Transport: plaintext loopback (``tls.insecure``); the light-client harness opens plain
channels. The exit code is 0 only when all rounds completed and no client saw an error.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.light_clients import CoordinatorProcess, run_light_clients, tensor_spec_for_bytes

MIB = 1024**2


class RssSampler:
    """Samples a process's RSS every ``interval_s`` seconds in a thread."""

    def __init__(self, coord: CoordinatorProcess, interval_s: float = 0.1) -> None:
        self._coord = coord
        self._interval = interval_s
        self.times: list[float] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._coord.rss_bytes()
            except OSError:
                return
            self.times.append(time.monotonic())
            self.rss.append(value)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> int:
        """The last sample taken at or before ``t`` (the first one if none)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.rss[max(i, 0)]


def _completed_rounds(db_path: Path) -> tuple[list[int], list[tuple[int, str]]]:
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT round, status FROM rounds ORDER BY round, attempt").fetchall()
    finally:
        db.close()
    return [r for r, s in rows if s == "completed"], [(r, s) for r, s in rows if s != "completed"]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print its figures; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--update-bytes", type=int, default=32_000, help="delta size per client")
    p.add_argument("--warmup-rounds", type=int, default=3, help="rounds before RSS must be flat")
    p.add_argument("--timeout-s", type=float, default=1800.0)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    _raise_fd_limit()
    spec = tensor_spec_for_bytes(args.update_bytes)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="load-500-") as tmp:
        state = Path(tmp)
        with CoordinatorProcess.start(
            state,
            rounds=args.rounds,
            expected_clients=args.clients,
            config={"tls": {"insecure": True}},
        ) as coord:
            with RssSampler(coord) as sampler:
                stats = asyncio.run(
                    run_light_clients(
                        coord.address,
                        args.clients,
                        args.rounds,
                        spec,
                        timeout_s=args.timeout_s,
                    )
                )
            peak = coord.peak_rss_bytes()
            log_tail = coord.log_tail(20)
        completed, failed = _completed_rounds(state / "state" / "state.sqlite3")
    wall = time.monotonic() - started

    rounds = sorted(stats.round_done_at)
    per_round = []
    previous = stats.started_at
    print(f"{args.clients} light clients, {args.rounds} rounds, delta {args.update_bytes} B each")
    print(f"{'round':>5} {'wall s':>8} {'coordinator RSS MiB':>20}")
    for r in rounds:
        t = stats.round_done_at[r]
        rss = sampler.at(t)
        per_round.append({"round": r, "seconds": t - previous, "rss_mib": rss / MIB})
        print(f"{r:>5} {t - previous:>8.2f} {rss / MIB:>20.1f}")
        previous = t
    warm = [x["rss_mib"] for x in per_round if x["round"] > args.warmup_rounds]
    growth = (warm[-1] - warm[0]) if len(warm) >= 2 else float("nan")
    ok = stats.ok and completed == list(range(1, args.rounds + 1))
    print(
        f"rounds completed: {len(completed)}/{args.rounds}; failed attempts: {len(failed)}; "
        f"client errors: {len(stats.errors)}; finished clients: {stats.finished}/{args.clients}"
    )
    if warm:
        print(
            f"RSS after warm-up (round {args.warmup_rounds + 1} -> {rounds[-1]}): "
            f"{warm[0]:.1f} -> {warm[-1]:.1f} MiB (growth {growth:+.1f} MiB); "
            f"min {min(warm):.1f}, max {max(warm):.1f}; peak {peak / MIB:.1f} MiB"
        )
    print(
        f"bytes up {stats.bytes_up / MIB:.1f} MiB, down {stats.bytes_down / MIB:.1f} MiB; wall {wall:.1f} s"
    )
    for rpc, (med, mx) in stats.latency_summary().items():
        print(f"  {rpc:14s} median {med:8.2f} ms  max {mx:8.2f} ms")
    if stats.errors:
        print("first errors:", *stats.errors[:5], sep="\n  ")
    if not ok:
        print("coordinator log tail:\n" + log_tail, file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "clients": args.clients,
                    "rounds": args.rounds,
                    "completed_rounds": len(completed),
                    "failed_attempts": len(failed),
                    "errors": stats.errors,
                    "per_round": per_round,
                    "rss_growth_after_warmup_mib": growth,
                    "peak_rss_mib": peak / MIB,
                    "wall_seconds": wall,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

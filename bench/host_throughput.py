"""Training throughput of hosted agents: batched (shared passes) against sequential.

Usage: ``.venv/bin/python -m bench.host_throughput [--agents 6 50] [--steps 10]
[--batch-size 16] [--max-length 64] [--repeats 3] [--device cpu|cuda|auto]
[--task text|vision]``

For each agent count N, N silos of the bundled drug-review task are generated (6: the
specialised clinics; more: ``--scenario many-small``, 18 reviews each, 8 beyond 24 silos;
``--task vision``: the rotated-digit silos, 100 images each, 60 beyond 24), and N real
:class:`~fedprompt_client_agent.runtime.SiloRuntime` s (``fpl``'s segmented soft prompt on the
shared frozen all-MiniLM-L6-v2) are hosted in this process, as ``fedprompt_client_agent.host``
does. One "round" is what the agents do when a TRAIN task reaches all of them: N threads call
``train`` at once (``--steps`` AdamW steps each) and then ``evaluate`` (test and val splits)
at once, through :class:`~fedprompt_client_agent.hosted_training.HostedTraining`:

* batched: the open tasks train together, one backbone pass over all silos' batches per step;
* sequential: the same worker runs every silo alone, one after another (today's path before
  batching, and the path of LoRA, full fine-tuning and DP-SGD silos).

The two are timed alternately ``--repeats`` times after one warm-up round each. Printed per N:
training examples/s (examples seen / wall seconds of the train calls), evaluated examples/s,
round seconds, and the speed-up of batched over sequential (medians). Both modes run on the
same runtimes (the learning does not change the cost); that the two paths learn the same is
what ``tests/unit/client_agent/training/test_multi_silo.py`` checks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.data.silo_files import silo_folders_below
from fedprompt_client_agent.hosted_training import HostedRuntime, HostedTraining
from fedprompt_client_agent.runtime import SiloRuntime
from fedprompt_client_agent.tools import make_silos
from fedprompt_client_agent.training.multi_silo import DEFAULT_MAX_PASS_EXAMPLES

#: Examples per silo of ``many-small`` beyond 24 silos (the bundled tasks have 436 reviews of
#: their 8 conditions and 5,000 digit images).
_LARGE_FEDERATION_SILO_SIZE = {"text": "8", "vision": "60"}


def _make_silos(n: int, out: Path, task: str) -> list[Path]:
    argv = ["--out", str(out), "--num-silos", str(n), "--seed", "0", "--task", task]
    if n > 6:
        argv += ["--scenario", "many-small"]
        if n > 24:
            argv += ["--silo-size", _LARGE_FEDERATION_SILO_SIZE[task]]
    if make_silos.main(argv) != 0:
        raise SystemExit(f"could not generate {n} silos")
    return silo_folders_below(out)


def _all_at_once(calls: list[Callable[[], dict[str, float]]]) -> list[dict[str, float]]:
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in out):
        raise RuntimeError("a hosted call failed (see the log)")
    return out


def _round(agents: list[HostedRuntime], settings: TrainSettings) -> dict[str, float]:
    started = time.perf_counter()
    trained = _all_at_once([lambda a=a: a.train(settings) for a in agents])
    train_s = time.perf_counter() - started
    mid = time.perf_counter()
    evaluated = _all_at_once([a.evaluate for a in agents])
    eval_s = time.perf_counter() - mid
    examples = sum(m["examples_seen"] for m in trained)
    eval_examples = sum(m.get("num_examples", 0) + m.get("val_num_examples", 0) for m in evaluated)
    return {
        "train_eps": examples / train_s,
        "eval_eps": eval_examples / eval_s,
        "round_s": train_s + eval_s,
    }


def measure(n: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median figures of the batched and sequential modes for ``n`` hosted agents."""
    with tempfile.TemporaryDirectory(prefix="host-throughput-") as tmp:
        silos = _make_silos(n, Path(tmp) / "silos", args.task)
        runtimes = [
            SiloRuntime(
                ClientAgentConfig.model_validate(
                    {
                        "client_id": silo.name,
                        "data_dir": silo,
                        "state_dir": Path(tmp) / "state" / silo.name,
                        "device": args.device,
                        "max_length": args.max_length,
                        "strategy": "fpl",
                    }
                )
            )
            for silo in silos
        ]
        settings = TrainSettings(
            local_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=0.03,
            head_learning_rate=0.003,
        )
        workers = {
            mode: HostedTraining(
                expected=n,
                batched=(mode == "batched"),
                gather_s=0.2,
                max_pass_examples=args.max_pass_examples,
            )
            for mode in ("batched", "sequential")
        }
        agents = {mode: [HostedRuntime(rt, w) for rt in runtimes] for mode, w in workers.items()}
        figures: dict[str, list[dict[str, float]]] = {mode: [] for mode in workers}
        try:
            for mode in workers:
                _round(agents[mode], settings)  # warm-up
            for _ in range(args.repeats):
                for mode in workers:
                    figures[mode].append(_round(agents[mode], settings))
        finally:
            for w in workers.values():
                w.close()
    return {
        mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for mode, runs in figures.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, nargs="+", default=[6, 50])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--task", default="text", choices=["text", "vision"])
    p.add_argument("--max-pass-examples", type=int, default=DEFAULT_MAX_PASS_EXAMPLES)
    args = p.parse_args()
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    print(
        f"{args.task}, device {device}, torch threads {torch.get_num_threads()}, {args.steps} steps x batch "
        f"{args.batch_size}, max_length {args.max_length}, at most {args.max_pass_examples} "
        f"examples per shared pass, median of {args.repeats}"
    )
    print("agents | mode       | train ex/s | eval ex/s | round s | train speed-up")
    for n in args.agents:
        result = measure(n, args)
        base = result["sequential"]
        for mode, r in result.items():
            speedup = r["train_eps"] / base["train_eps"]
            print(
                f"{n:6d} | {mode:10s} | {r['train_eps']:10.1f} | {r['eval_eps']:9.1f} | "
                f"{r['round_s']:7.2f} | {speedup:.2f}x"
            )


if __name__ == "__main__":
    main()

"""``fedprompt``: command line of the fedprompt federation (``fedprompt up`` runs a demo)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedprompt.compression import Compression
from fedprompt.strategies import STRATEGY_NAMES, TASKS, StrategyName, strategies_help
from fedprompt_cli.bench_plan import (
    METHOD,
    compression_plan,
    full_plan,
    gpu_plan,
    lr_grid_plan,
    quick_plan,
    scenario_plan,
    tiny_plan,
)
from fedprompt_cli.silo_gate import BAD_SILOS, checked_data_root
from fedprompt_cli.up import UpOptions, run_up


def build_parser() -> argparse.ArgumentParser:
    """The ``fedprompt`` argument parser."""
    parser = argparse.ArgumentParser(prog="fedprompt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run a local federation on loopback and print the results")
    up.add_argument("--clients", type=int, default=4, help="client agents (silos), default 4")
    up.add_argument("--rounds", type=int, default=5, help="federated rounds, default 5")
    up.add_argument("--local-steps", type=int, default=15, help="local steps per round")
    up.add_argument("--batch-size", type=int, default=16)
    up.add_argument("--max-length", type=int, default=96, help="tokens per example")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    up.add_argument("--run-dir", type=Path, help="default: runs/<timestamp>")
    up.add_argument("--model-dir", type=Path, help="local Hugging Face model folder")
    up.add_argument("--data-root", type=Path, help="folder of silo folders (your own data)")
    up.add_argument("--timeout-s", type=float, default=1800.0)
    up.add_argument("--torch-threads", type=int, default=1, help="torch threads per client")
    up.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=StrategyName.FPL.value,
        help=f"federated strategy (default: %(default)s): {strategies_help()}",
    )
    up.add_argument(
        "--task", choices=TASKS, default="text", help="bundled task (--data-root: read from it)"
    )
    up.add_argument("--learning-rate", type=float, help="default depends on strategy and task")
    up.add_argument("--head-learning-rate", type=float)
    up.add_argument("--contrastive-weight", type=float, help=f"λ of the client InfoNCE ({METHOD})")
    up.add_argument(
        "--server-weighting",
        choices=["contrastive", "mean"],
        help=f"{METHOD}'s cluster weights: contrastive alignment (default) or mean (an ablation)",
    )
    up.add_argument(
        "--server-optimizer",
        help="the coordinator's server optimizer: sgd (default), or adam, yogi, adagrad "
        "(FedAdam, FedYogi, FedAdagrad; these need --server-lr)",
    )
    up.add_argument("--server-lr", type=float, help="η of the server optimizer (sgd: 1)")
    up.add_argument("--proximal-mu", type=float, help="FedProx's μ of the clients (0: off)")
    up.add_argument(
        "--personalize-steps",
        type=int,
        help="steps of the clients' final personalization pass of their local segment and head "
        "at every evaluation (0: none)",
    )
    up.add_argument(
        "--refine-after-rounds",
        type=int,
        help="cluster refinement: rounds of update alignment with another cluster that move "
        "a silo there (0: off)",
    )
    up.add_argument(
        "--refine-margin",
        type=float,
        help="cluster refinement: cosine margin over the silo's own cluster",
    )
    up.add_argument("--n-global", type=int, help="global prompt segment of every client (0: none)")
    up.add_argument("--n-local", type=int, help="local prompt segment of every client (0: none)")
    up.add_argument(
        "--no-clustering",
        action="store_true",
        help="no clusterer: every client in one cluster (an ablation)",
    )
    up.add_argument("--dp-epsilon", type=float, help="client-level DP-FedAvg with target ε")
    up.add_argument("--dp-noise-multiplier", type=float, help="client-level DP-FedAvg z")
    up.add_argument("--dp-sgd-epsilon", type=float, help="record-level DP-SGD target ε (text)")
    up.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="secure aggregation inside each cluster (SecAgg+): the coordinator sees only sums",
    )
    up.add_argument("--max-images", type=int, help="cap on digit images (vision)")
    up.add_argument(
        "--upload-compression",
        choices=[c.value for c in Compression],
        help="lossy compression of the clients' uploaded deltas (default: none)",
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC between the processes (default: mutual TLS with fresh certs)",
    )
    up.add_argument(
        "--clients-per-process",
        type=int,
        default=1,
        help="client agents hosted per process (default 1; more share one torch import, one "
        "copy of the frozen model, and train their open tasks together)",
    )
    up.add_argument(
        "--sequential-hosts",
        action="store_true",
        help="hosted agents train one after another instead of together (for comparisons)",
    )
    certs = sub.add_parser(
        "certs",
        help="create a federation CA and certificates for the services, silos and operator",
        description="Create (or extend) a federation CA and one certificate per role: the "
        "coordinator and the clusterer (server auth, and client auth for their own calls and "
        "health probes), each --silo "
        "(client auth only: it cannot serve TLS) and, with --operator, the operator (client "
        "auth only). A silo certificate shows GetStatus only its own record and the "
        "federation's aggregates; the operator certificate shows everything. Silo ids that "
        "name the CA, a service, the operator, localhost, an IP address or a --san are "
        "refused.",
    )
    certs.add_argument("--out", type=Path, required=True, help="folder for the PEM files")
    certs.add_argument(
        "--silo", action="append", default=[], metavar="ID", help="a silo's client id (repeat)"
    )
    certs.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="extra DNS name or IP of the service certificates (repeat)",
    )
    certs.add_argument(
        "--operator",
        action="store_true",
        help="also write operator.crt/.key: client-auth only, the full GetStatus view "
        "(fedprompt up and status tools use it)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity of leaf certificates")
    certs.add_argument("--force", action="store_true", help="reissue existing leaf certificates")
    shard = sub.add_parser(
        "shard-silos",
        help="lay out silos and their certificates as one shard per pod (the silo chart's "
        "simulation mode)",
        description="Copy the silo folders of --silos and their certificates from --certs "
        "into <out>/shard-<i>/silos/<id>/ and <out>/shard-<i>/certs/{ca.crt,<id>.crt,<id>.key} "
        "(never ca.key): balanced shards of at most --per-pod silos, sorted by name, one per "
        "pod of the silo chart's StatefulSet (simulation.replicas, simulation.clientsPerPod). "
        "Everything is checked first; --out must not exist.",
    )
    shard.add_argument("--silos", type=Path, required=True, help="folder of silo folders")
    shard.add_argument(
        "--certs", type=Path, required=True, help="folder of `fedprompt certs` (every silo's)"
    )
    shard.add_argument("--per-pod", type=int, required=True, help="most silos one pod hosts")
    shard.add_argument(
        "--replicas", type=int, help="pods (default: the fewest that hold every silo)"
    )
    shard.add_argument("--out", type=Path, required=True, help="new folder for the shards")
    bench = sub.add_parser("bench", help="run the evaluation plan and write reports/<tag>/")
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="few rounds and steps (< 15 min)")
    mode.add_argument("--tiny", action="store_true", help="smallest plan (tests)")
    mode.add_argument(
        "--gpu", action="store_true", help="10 rounds x 10 steps on a CUDA machine (gpu plan)"
    )
    mode.add_argument(
        "--compression",
        action="store_true",
        help=f"{METHOD} with exact, fp16 and int8 uploads, 5 rounds x 10 steps (about 1 h on 2 cores)",
    )
    mode.add_argument(
        "--scenarios",
        action="store_true",
        help="the full plan plus many small clinics, every hard scenario on two seeds and "
        f"every {METHOD} ablation on misleading metadata and the concept shift (118 runs; "
        "with --merge reports/full only its 52 extra runs, about 75 min on 2 cores); the GPU "
        f"plan holds the whole scenario x {METHOD} ablation matrix",
    )
    mode.add_argument(
        "--lr-grid",
        action="store_true",
        help="the prompt strategies' learning rates chosen on validation: the default x 1/3, "
        "1, 3 on the first seed, the winner on the others (with --merge reports/full: 16 "
        "tuning runs, about 17 min on 2 cores, plus the winners that are not the default)",
    )
    bench.add_argument("--tag", help="report folder name under --reports (default: the mode)")
    bench.add_argument("--reports", type=Path, default=Path("reports"))
    bench.add_argument("--work-dir", type=Path, help="run folders (default: <report>/work)")
    bench.add_argument("--seeds", type=int, nargs="+", help="override the plan's seeds")
    bench.add_argument("--silos", type=int, help="override the plan's silos per task (>= 2)")
    bench.add_argument("--strategies", nargs="+", help="only these strategies of the plan")
    bench.add_argument("--tasks", nargs="+", help="only these tasks of the plan (text, vision)")
    bench.add_argument(
        "--data-root",
        type=Path,
        help="your own silo folders (text or image; the task is read from them): the same "
        "plan, stages and report on them, every seed on the same silos; checked first",
    )
    bench.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="report folders of other bench processes whose finished runs count as done",
    )
    bench.add_argument(
        "--report-only", action="store_true", help="run nothing; report the finished runs"
    )
    bench.add_argument(
        "--skip-privacy", action="store_true", help="leave out the privacy stage (split runs)"
    )
    bench.add_argument(
        "--privacy-only", action="store_true", help="only the privacy stage (plans without a grid)"
    )
    bench.add_argument(
        "--skip-compression",
        action="store_true",
        help="leave out the upload-compression stage (split runs)",
    )
    bench.add_argument(
        "--compression-only",
        action="store_true",
        help="only the upload-compression stage (plans without a grid; with --privacy-only: both)",
    )
    bench.add_argument("--note", default="", help="a sentence for the report's first paragraph")
    bench.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC inside each run (no certs)"
    )
    return parser


def run_certs(args: argparse.Namespace, console: Console) -> int:
    """``fedprompt certs``: write the CA and certificates; returns the exit code."""
    from fedprompt_cli.certs import CertError, write_certs

    if args.days < 1:
        console.print("[red]--days must be at least 1[/]")
        return 2
    try:
        written = write_certs(
            args.out,
            silos=args.silo,
            extra_sans=args.san,
            operator=args.operator,
            force=args.force,
            days=args.days,
        )
    except CertError as exc:
        console.print(f"[red]fedprompt certs[/]: {exc}")
        return 2
    for path in written:
        console.print(f"wrote {path}")
    if not written:
        console.print(f"nothing new in {args.out} (use --force to reissue)")
    return 0


def run_shard_silos(args: argparse.Namespace, console: Console) -> int:
    """``fedprompt shard-silos``: write the shards; returns the exit code."""
    from fedprompt_cli.shard_silos import ShardError, write_shards

    try:
        plan = write_shards(
            silos=args.silos,
            certs=args.certs,
            out=args.out,
            per_pod=args.per_pod,
            replicas=args.replicas,
        )
    except (ShardError, OSError) as exc:
        console.print(f"[red]fedprompt shard-silos[/]: {escape(str(exc))}", soft_wrap=True)
        return 2
    console.print(
        f"wrote {plan.replicas} shards of {plan.silos} silos (at most {plan.largest} per pod) "
        f"to {args.out}; install the silo chart with simulation.replicas={plan.replicas} and "
        f"simulation.clientsPerPod={plan.largest}",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def _bench(args: argparse.Namespace, console: Console) -> int:
    from fedprompt_cli.bench import plan_with_overrides, run_bench

    data = None
    if args.data_root is not None:
        data = checked_data_root(args.data_root, console)
        if data is None:
            return BAD_SILOS

    plan = (
        tiny_plan()
        if args.tiny
        else quick_plan()
        if args.quick
        else gpu_plan()
        if args.gpu
        else compression_plan()
        if args.compression
        else scenario_plan()
        if args.scenarios
        else lr_grid_plan()
        if args.lr_grid
        else full_plan()
    )
    try:
        plan = plan_with_overrides(
            plan,
            seeds=tuple(args.seeds) if args.seeds else None,
            clients=args.silos,
            tasks=tuple(args.tasks) if args.tasks else None,
            skip_privacy=args.skip_privacy,
            skip_compression=args.skip_compression,
            strategies=tuple(args.strategies) if args.strategies else None,
            insecure=args.insecure,
            data_root=None if data is None else (args.data_root, data.task or "", len(data.silos)),
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    out = args.reports / (args.tag or plan.mode)
    command = "fedprompt " + " ".join(sys.argv[1:]) if sys.argv[1:] else "fedprompt bench"
    return run_bench(
        plan,
        out,
        console,
        work=args.work_dir,
        command=command,
        merge=tuple(args.merge),
        report_only=args.report_only,
        note=args.note,
        privacy_only=args.privacy_only,
        compression_only=args.compression_only,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedprompt`` command."""
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.command == "certs":
        return run_certs(args, console)
    if args.command == "shard-silos":
        return run_shard_silos(args, console)
    if args.command == "up":
        if args.clients < 1 or args.rounds < 1:
            console.print("[red]--clients and --rounds must be at least 1[/]")
            return 2
        task = args.task
        if args.data_root is not None:  # checked before anything starts; the task is theirs
            data = checked_data_root(args.data_root, console, needed=args.clients)
            if data is None:
                return BAD_SILOS
            task = data.task or task
        run_dir = args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        options = UpOptions(
            clients=args.clients,
            rounds=args.rounds,
            local_steps=args.local_steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            device=args.device,
            run_dir=run_dir,
            model_dir=args.model_dir,
            data_root=args.data_root,
            timeout_s=args.timeout_s,
            torch_threads=args.torch_threads,
            strategy=args.strategy,
            task=task,
            learning_rate=args.learning_rate,
            head_learning_rate=args.head_learning_rate,
            contrastive_weight=args.contrastive_weight,
            server_weighting=args.server_weighting,
            server_optimizer=args.server_optimizer,
            server_lr=args.server_lr,
            proximal_mu=args.proximal_mu,
            personalize_steps=args.personalize_steps,
            refine_after_rounds=args.refine_after_rounds,
            refine_margin=args.refine_margin,
            n_global=args.n_global,
            n_local=args.n_local,
            clustering=not args.no_clustering,
            dp_epsilon=args.dp_epsilon,
            dp_noise_multiplier=args.dp_noise_multiplier,
            dp_sgd_epsilon=args.dp_sgd_epsilon,
            max_images=args.max_images,
            insecure=args.insecure,
            clients_per_process=max(1, args.clients_per_process),
            sequential_hosts=args.sequential_hosts,
            upload_compression=args.upload_compression,
            secure_aggregation=args.secure_aggregation,
        )
        return run_up(options, console)
    if args.command == "bench":
        return _bench(args, console)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

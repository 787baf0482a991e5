"""``fedprompt``: command line of the fedprompt federation (``fedprompt up`` runs a demo)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

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
        choices=["local", "fedavg", "clustered", "fpl", "lora-fedavg", "full-fedavg"],
        default="fpl",
        help="federated strategy (default: fpl, the full method)",
    )
    up.add_argument("--task", choices=["text", "vision"], default="text", help="bundled task")
    up.add_argument("--learning-rate", type=float, help="default depends on strategy and task")
    up.add_argument("--head-learning-rate", type=float)
    up.add_argument("--contrastive-weight", type=float, help="λ of the client InfoNCE (fpl)")
    up.add_argument("--dp-epsilon", type=float, help="client-level DP-FedAvg with target ε")
    up.add_argument("--dp-noise-multiplier", type=float, help="client-level DP-FedAvg z")
    up.add_argument("--dp-sgd-epsilon", type=float, help="record-level DP-SGD target ε (text)")
    up.add_argument("--max-images", type=int, help="cap on digit images (vision)")
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC between the processes (default: mutual TLS with fresh certs)",
    )
    certs = sub.add_parser(
        "certs", help="create a federation CA and certificates for the services and silos"
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
    certs.add_argument("--days", type=int, default=365, help="validity of leaf certificates")
    certs.add_argument("--force", action="store_true", help="reissue existing leaf certificates")
    return parser


def run_certs(args: argparse.Namespace, console: Console) -> int:
    """``fedprompt certs``: write the CA and certificates; returns the exit code."""
    from fedprompt_cli.certs import CertError, write_certs

    if args.days < 1:
        console.print("[red]--days must be at least 1[/]")
        return 2
    try:
        written = write_certs(
            args.out, silos=args.silo, extra_sans=args.san, force=args.force, days=args.days
        )
    except CertError as exc:
        console.print(f"[red]fedprompt certs[/]: {exc}")
        return 2
    for path in written:
        console.print(f"wrote {path}")
    if not written:
        console.print(f"nothing new in {args.out} (use --force to reissue)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedprompt`` command."""
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.command == "certs":
        return run_certs(args, console)
    if args.command == "up":
        if args.clients < 1 or args.rounds < 1:
            console.print("[red]--clients and --rounds must be at least 1[/]")
            return 2
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
            task=args.task,
            learning_rate=args.learning_rate,
            head_learning_rate=args.head_learning_rate,
            contrastive_weight=args.contrastive_weight,
            dp_epsilon=args.dp_epsilon,
            dp_noise_multiplier=args.dp_noise_multiplier,
            dp_sgd_epsilon=args.dp_sgd_epsilon,
            max_images=args.max_images,
            insecure=args.insecure,
        )
        return run_up(options, console)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

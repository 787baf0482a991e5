"""Several client agents in one process (benchmarks and demos on small machines).

``python -m fedprompt_client_agent.host --coordinator H:P --silo-dir A --silo-dir B ...``
starts one :class:`~fedprompt_client_agent.agent.ClientAgent` per silo folder. Each agent
is still its own gRPC client (own channel, own client id = the silo folder's name), with
its own data, model, personal state (``--state-root/<id>``) and DP-SGD accountant; only
the Python interpreter and the imported libraries are shared, which saves the start-up
time and memory of one torch process per silo. Bytes are counted on the wire as usual.

Silos whose model is a soft prompt on a frozen backbone share one copy of the backbone,
and their training and evaluation run on one worker
(:class:`~fedprompt_client_agent.hosted_training.HostedTraining`): the tasks that are open
at the same time train together, one backbone pass over all their batches, each silo with
its own prompt, head, optimizer and data order; the result equals training each alone.
LoRA, full fine-tuning and DP-SGD silos run on the same worker one after another.
``--sequential`` runs every silo alone (for comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from fedprompt.compression import Compression
from fedprompt.config import ConfigError, load_config
from fedprompt.logs import configure_logging
from fedprompt.tls import COORDINATOR_IDENTITY, TlsError, channel_credentials, expected_server_name
from fedprompt_client_agent.agent import ClientAgent, LearningRuntime
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.data.silo_files import silo_folders_below
from fedprompt_client_agent.training.multi_silo import DEFAULT_MAX_PASS_EXAMPLES

logger = logging.getLogger("fedprompt_client_agent.host")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags shared by every hosted agent, plus the list of silo folders."""
    p = argparse.ArgumentParser(prog="fedprompt-client-host", description=__doc__)
    p.add_argument("--coordinator", required=True, help="coordinator host:port")
    p.add_argument("--silo-dir", action="append", default=[], type=Path, help="repeatable")
    p.add_argument(
        "--silo-root",
        type=Path,
        help="a folder of silo folders: each sub-folder with a train file is one hosted silo",
    )
    p.add_argument("--state-root", required=True, type=Path, help="state folder per silo below")
    p.add_argument("--model-dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-length", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--strategy")
    p.add_argument("--n-global", type=int, help="global prompt segment (0: none; an ablation)")
    p.add_argument("--n-cluster", type=int, help="cluster prompt segment size")
    p.add_argument("--n-local", type=int, help="local prompt segment (0: none; an ablation)")
    p.add_argument("--dp-sgd-epsilon", type=float)
    p.add_argument("--dp-sgd-total-steps", type=int)
    p.add_argument(
        "--upload-compression",
        choices=[c.value for c in Compression],
        help="lossy compression of every hosted agent's uploaded deltas",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="train and evaluate every silo alone, one after another (no shared passes)",
    )
    p.add_argument(
        "--max-pass-examples",
        type=int,
        default=DEFAULT_MAX_PASS_EXAMPLES,
        help="most training examples in one shared backbone pass (bounds memory)",
    )
    p.add_argument("--log-level")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls-dir",
        type=Path,
        help="folder of `fedprompt certs`: ca.crt and <client-id>.crt/.key per hosted silo",
    )
    tls.add_argument("--insecure", action="store_true", help="plaintext gRPC (logs a warning)")
    return p.parse_args(argv)


def _tls_overrides(args: argparse.Namespace, client_id: str) -> dict[str, object]:
    """Each hosted silo presents its own certificate; ``--insecure`` turns TLS off."""
    if args.tls_dir is None:
        return {"tls.insecure": True} if args.insecure else {}
    return {
        "tls.cert": args.tls_dir / f"{client_id}.crt",
        "tls.key": args.tls_dir / f"{client_id}.key",
        "tls.ca": args.tls_dir / "ca.crt",
    }


def silo_dirs_of(args: argparse.Namespace) -> list[Path]:
    """The hosted silo folders: every ``--silo-dir``, then the silos below ``--silo-root``."""
    dirs = list(args.silo_dir)
    if args.silo_root is not None:
        try:
            found = silo_folders_below(args.silo_root)
        except FileNotFoundError as exc:
            raise ConfigError(f"--silo-root: {exc}") from exc
        if not found:
            raise ConfigError(f"--silo-root {args.silo_root}: no silo folders below it")
        dirs.extend(found)
    if not dirs:
        raise ConfigError("give at least one --silo-dir or a --silo-root")
    if args.max_pass_examples < 1:
        raise ConfigError(f"--max-pass-examples must be >= 1, got {args.max_pass_examples}")
    return dirs


def configs_of(args: argparse.Namespace) -> list[ClientAgentConfig]:
    """One validated agent config per silo folder (client id = folder name)."""
    silo_dirs = silo_dirs_of(args)
    names = [d.name for d in silo_dirs]
    if len(set(names)) != len(names):
        raise ConfigError(f"silo folder names must be distinct client ids, got {names}")
    return [
        load_config(
            ClientAgentConfig,
            yaml_path=None,
            env_prefix="FEDPROMPT_CLIENT_",
            overrides={
                "client_id": silo.name,
                "coordinator": args.coordinator,
                "data_dir": silo,
                "state_dir": args.state_root / silo.name,
                "model_dir": args.model_dir,
                "device": args.device,
                "max_length": args.max_length,
                "seed": args.seed,
                "torch_threads": args.torch_threads,
                "strategy": args.strategy,
                "n_global": args.n_global,
                "n_cluster": args.n_cluster,
                "n_local": args.n_local,
                "dp_sgd_target_epsilon": args.dp_sgd_epsilon,
                "dp_sgd_total_steps": args.dp_sgd_total_steps,
                "upload_compression": args.upload_compression,
                "log_level": args.log_level,
                **_tls_overrides(args, silo.name),
            },
        )
        for silo in silo_dirs
    ]


async def run(
    configs: list[ClientAgentConfig],
    credentials: list[grpc.ChannelCredentials | None],
    *,
    batched: bool = True,
    max_pass_examples: int = DEFAULT_MAX_PASS_EXAMPLES,
) -> int:
    """Build every runtime (one after the other), then run all agents until finished."""
    from fedprompt_client_agent.hosted_training import HostedRuntime, HostedTraining
    from fedprompt_client_agent.runtime import SiloRuntime

    loop = asyncio.get_running_loop()
    # every agent waits for its training in a thread of its own (plus a few for the rest)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=len(configs) + 8))
    worker = HostedTraining(
        expected=len(configs), batched=batched, max_pass_examples=max_pass_examples
    )
    runtimes: list[LearningRuntime] = []
    for config in configs:
        runtime = await asyncio.to_thread(SiloRuntime, config)
        runtimes.append(HostedRuntime(runtime, worker))
    agents = [
        ClientAgent(
            rt,
            coordinator=c.coordinator,
            max_reconnect_s=c.max_reconnect_s,
            upload_compression=c.upload_compression,
            credentials=cred,
            server_name=expected_server_name(c.tls, service=COORDINATOR_IDENTITY),
        )
        for rt, c, cred in zip(runtimes, configs, credentials, strict=True)
    ]
    main_task = asyncio.ensure_future(asyncio.gather(*(a.run() for a in agents)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        await main_task
    except asyncio.CancelledError:
        logger.info("stopped by signal")
    finally:
        await asyncio.to_thread(worker.close)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m fedprompt_client_agent.host``."""
    args = parse_args(argv)
    try:
        configs = configs_of(args)
    except ConfigError as exc:
        print(f"fedprompt-client-host: {exc}", file=sys.stderr)
        return 2
    configure_logging(configs[0].log_level, service="client-host")
    try:  # before torch is imported: a missing certificate fails in a moment
        credentials = [channel_credentials(c.tls, role=f"client {c.client_id}") for c in configs]
    except TlsError as exc:
        logger.error("%s", exc)
        return 2
    try:
        return asyncio.run(
            run(
                configs,
                credentials,
                batched=not args.sequential,
                max_pass_examples=args.max_pass_examples,
            )
        )
    except grpc.aio.AioRpcError as exc:
        logger.error("coordinator refused: %s: %s", exc.code().name, exc.details())
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

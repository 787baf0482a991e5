"""Several client agents in one process (benchmarks and demos on small machines).

``python -m fedprompt_client_agent.host --coordinator H:P --silo-dir A --silo-dir B ...``
starts one :class:`~fedprompt_client_agent.agent.ClientAgent` per silo folder. Each agent
is still its own gRPC client (own channel, own client id = the silo folder's name), with
its own data, model, personal state (``--state-root/<id>``) and DP-SGD accountant; only
the Python interpreter and the imported libraries are shared, which saves the start-up
time and memory of one torch process per silo. Bytes are counted on the wire as usual.

Local training of the hosted agents is serialised by one lock: the trainers seed torch's
process-wide RNG around each call, so two concurrent calls would race for it and runs
would stop being reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from fedprompt.compression import Compression
from fedprompt.config import ConfigError, load_config
from fedprompt.logs import configure_logging
from fedprompt.tls import COORDINATOR_IDENTITY, TlsError, channel_credentials, expected_server_name
from fedprompt.v1 import common_pb2
from fedprompt_client_agent.agent import ClientAgent, LearningRuntime, TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig

if TYPE_CHECKING:
    from fedprompt_client_agent.runtime import SiloRuntime

logger = logging.getLogger("fedprompt_client_agent.host")


class SerialisedRuntime:
    """A runtime whose ``train`` and ``evaluate`` hold a lock shared with its siblings."""

    def __init__(self, runtime: SiloRuntime, lock: threading.Lock) -> None:
        self._runtime = runtime
        self._lock = lock
        self.client_id: str = runtime.client_id
        self.num_train_examples: int = runtime.num_train_examples
        self.metadata: Mapping[str, object] = runtime.metadata
        self.capabilities: common_pb2.ClientCapabilities = runtime.capabilities

    def shared_state(self) -> dict[str, np.ndarray]:
        """The travelling tensors of the wrapped runtime."""
        return self._runtime.shared_state()

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Install the coordinator's tensors."""
        self._runtime.load_shared_state(tensors)

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Train under the shared lock (torch's global RNG is seeded per call)."""
        with self._lock:
            return self._runtime.train(settings)

    def evaluate(self) -> dict[str, float]:
        """Evaluate under the shared lock."""
        with self._lock:
            return self._runtime.evaluate()

    def save_personal(self) -> None:
        """Persist the personal state."""
        self._runtime.save_personal()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags shared by every hosted agent, plus the list of silo folders."""
    p = argparse.ArgumentParser(prog="fedprompt-client-host", description=__doc__)
    p.add_argument("--coordinator", required=True, help="coordinator host:port")
    p.add_argument("--silo-dir", action="append", required=True, type=Path, help="repeatable")
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


def configs_of(args: argparse.Namespace) -> list[ClientAgentConfig]:
    """One validated agent config per silo folder (client id = folder name)."""
    names = [d.name for d in args.silo_dir]
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
        for silo in args.silo_dir
    ]


async def run(
    configs: list[ClientAgentConfig], credentials: list[grpc.ChannelCredentials | None]
) -> int:
    """Build every runtime (one after the other), then run all agents until finished."""
    from fedprompt_client_agent.runtime import SiloRuntime

    lock = threading.Lock()
    runtimes: list[LearningRuntime] = []
    for config in configs:
        runtime = await asyncio.to_thread(SiloRuntime, config)
        runtimes.append(SerialisedRuntime(runtime, lock))
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        await main_task
    except asyncio.CancelledError:
        logger.info("stopped by signal")
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
        return asyncio.run(run(configs, credentials))
    except grpc.aio.AioRpcError as exc:
        logger.error("coordinator refused: %s: %s", exc.code().name, exc.details())
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

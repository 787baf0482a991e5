"""``fedprompt-client-agent``: wiring only (config, runtime, agent loop, signals)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import grpc

from fedprompt.compression import Compression
from fedprompt.config import ConfigError, load_config
from fedprompt.logs import configure_logging
from fedprompt.strategies import STRATEGY_NAMES
from fedprompt.telemetry import serve_metrics
from fedprompt.tls import (
    COORDINATOR_IDENTITY,
    TlsError,
    add_tls_arguments,
    channel_credentials,
    expected_server_name,
    tls_overrides,
)
from fedprompt_client_agent.config import ClientAgentConfig

logger = logging.getLogger("fedprompt_client_agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags; each overrides the YAML config and environment."""
    p = argparse.ArgumentParser(prog="fedprompt-client-agent", description=__doc__)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--client-id")
    p.add_argument("--coordinator", help="coordinator host:port")
    p.add_argument("--data-dir", help="silo folder (train/val/test + metadata.json)")
    p.add_argument("--state-dir", help="where the personal prompt is kept")
    p.add_argument("--model-dir", help="local Hugging Face model folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--n-global", type=int)
    p.add_argument("--n-cluster", type=int)
    p.add_argument("--n-local", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--strategy", help=", ".join(STRATEGY_NAMES))
    p.add_argument("--modality", choices=["auto", "text", "image"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--dp-sgd-noise-multiplier", type=float, help="record-level DP-SGD σ")
    p.add_argument("--dp-sgd-epsilon", type=float, help="record-level DP-SGD target ε")
    p.add_argument("--dp-sgd-total-steps", type=int, help="planned local steps of the run")
    p.add_argument("--dp-sgd-max-grad-norm", type=float)
    p.add_argument(
        "--upload-compression",
        choices=[c.value for c in Compression],
        help="lossy compression of uploaded deltas (none, fp16, int8)",
    )
    p.add_argument("--log-level")
    add_tls_arguments(p)
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: none)")
    p.add_argument("--metrics-host", help="address of the /metrics endpoint")
    return p.parse_args(argv)


async def run(config: ClientAgentConfig) -> int:
    """Build the runtime (in a thread: loading the model is slow) and run the agent."""
    # certificates first: a TLS misconfiguration fails before torch is even imported
    credentials = channel_credentials(config.tls, role=f"client {config.client_id}")
    from fedprompt_client_agent.agent import ClientAgent
    from fedprompt_client_agent.metrics import ClientMetrics
    from fedprompt_client_agent.runtime import SiloRuntime

    metrics = ClientMetrics()
    metrics_server = serve_metrics(
        metrics.registry, host=config.metrics_host, port=config.metrics_port
    )
    runtime = await asyncio.to_thread(SiloRuntime, config)
    agent = ClientAgent(
        runtime,
        coordinator=config.coordinator,
        max_reconnect_s=config.max_reconnect_s,
        upload_compression=config.upload_compression,
        credentials=credentials,
        server_name=expected_server_name(config.tls, service=COORDINATOR_IDENTITY),
        metrics=metrics,
    )
    main_task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        await main_task
    except asyncio.CancelledError:
        logger.info("stopped by signal")
        return 0
    finally:
        if metrics_server is not None:
            metrics_server.close()
    return 0


def config_of(args: argparse.Namespace) -> ClientAgentConfig:
    """The agent's validated config: YAML file, then environment, then these flags."""
    return load_config(
        ClientAgentConfig,
        yaml_path=args.config,
        env_prefix="FEDPROMPT_CLIENT_",
        overrides={
            "client_id": args.client_id,
            "coordinator": args.coordinator,
            "data_dir": args.data_dir,
            "state_dir": args.state_dir,
            "model_dir": args.model_dir,
            "device": args.device,
            "n_global": args.n_global,
            "n_cluster": args.n_cluster,
            "n_local": args.n_local,
            "max_length": args.max_length,
            "seed": args.seed,
            "torch_threads": args.torch_threads,
            "strategy": args.strategy,
            "modality": args.modality,
            "image_size": args.image_size,
            "dp_sgd_noise_multiplier": args.dp_sgd_noise_multiplier,
            "dp_sgd_target_epsilon": args.dp_sgd_epsilon,
            "dp_sgd_total_steps": args.dp_sgd_total_steps,
            "dp_sgd_max_grad_norm": args.dp_sgd_max_grad_norm,
            "upload_compression": args.upload_compression,
            "log_level": args.log_level,
            **tls_overrides(args),
            "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedprompt-client-agent``."""
    args = parse_args(argv)
    try:
        config = config_of(args)
    except ConfigError as exc:
        print(f"fedprompt-client-agent: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, service=config.client_id)
    try:
        return asyncio.run(run(config))
    except grpc.aio.AioRpcError as exc:
        logger.error("coordinator refused: %s: %s", exc.code().name, exc.details())
        return 1
    except TlsError as exc:
        logger.error("%s", exc)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``fedprompt-coordinator``: wiring only (config, stores, federation, server, signals).

Exit status: 0 after a clean stop (SIGTERM/SIGINT, or the last round with
``--exit-when-done``); 2 for a configuration or TLS error; 3 when a round failed with an
unexpected error (logged with its traceback; the coordinator reported NOT_SERVING for
``round_failure_exit_delay_s`` first): its supervisor restarts it and it resumes after the
last completed round; 4 when the state dir failed its start-up check (a corrupt snapshot,
a database that lost committed rounds): a restart does not help, an operator must act (the
message says how).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sqlite3
import sys
from collections.abc import Mapping

import grpc

from fedprompt.config import ConfigError, load_config
from fedprompt.logs import configure_logging
from fedprompt.server import ServerHandle, announce_port, start_server, stop_event_on_signals
from fedprompt.strategies import strategies_help
from fedprompt.telemetry import serve_metrics
from fedprompt.tls import (
    TlsError,
    add_tls_arguments,
    channel_credentials,
    server_credentials,
    tls_overrides,
)
from fedprompt_coordinator.aggregation.server_optimizer import SERVER_OPTIMIZERS
from fedprompt_coordinator.clustering_backend import make_clustering_backend
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.federation import Federation, RoundFailedError
from fedprompt_coordinator.identity import IdentityInterceptor
from fedprompt_coordinator.metrics import CoordinatorMetrics
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.servicer import CoordinatorServicer, add_coordinator_servicer_to_server
from fedprompt_coordinator.state_check import StateIntegrityError
from fedprompt_coordinator.state_store import StateStore, make_state_store
from fedprompt_coordinator.traffic import TrafficInterceptor

logger = logging.getLogger("fedprompt_coordinator")

#: Exit status after a round failed with an unexpected error: restart me.
EXIT_ROUND_FAILED = 3
#: Exit status when the state dir failed its start-up check: an operator must act.
EXIT_STATE_INVALID = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags; each overrides the YAML config and environment."""
    p = argparse.ArgumentParser(prog="fedprompt-coordinator", description=__doc__)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--listen", help="host:port (port 0 picks a free one)")
    p.add_argument("--state-dir", help="folder for the SQLite DB and tensor files")
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-clients", type=int)
    p.add_argument("--expected-clients", type=int)
    p.add_argument("--clusterer", help="clusterer host:port")
    p.add_argument("--local-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--round-deadline-s", type=float)
    p.add_argument("--strategy", help=strategies_help())
    p.add_argument("--learning-rate", type=float, help="client prompt (or adapter) learning rate")
    p.add_argument("--head-learning-rate", type=float)
    p.add_argument("--contrastive-weight", type=float, help="λ of the client InfoNCE term")
    p.add_argument(
        "--proximal-mu",
        type=float,
        help="μ of FedProx's client proximal term over the uploaded tensors (0: off, default)",
    )
    p.add_argument(
        "--personalize-steps",
        type=int,
        help="optimizer steps of the clients' final personalization pass of their local "
        "segment and head at every evaluation (0: none, default)",
    )
    p.add_argument(
        "--refine-after-rounds",
        type=int,
        help="cluster refinement: rounds of update alignment with another cluster that move a "
        "member there (0: off, default; needs --clusterer)",
    )
    p.add_argument(
        "--refine-margin",
        type=float,
        help="cluster refinement: how much higher (cosine) another cluster's alignment must be "
        "than the member's own for a round to count (default 0.25)",
    )
    p.add_argument(
        "--server-weighting",
        choices=["contrastive", "mean"],
        help="fpl's cluster weights: contrastive alignment, or mean (FedAvg's; an ablation)",
    )
    p.add_argument(
        "--server-optimizer",
        choices=list(SERVER_OPTIMIZERS),
        help="how each level's aggregated delta is applied: sgd (default), or FedAdam, "
        "FedYogi, FedAdagrad (adam, yogi, adagrad: need --server-lr)",
    )
    p.add_argument("--server-lr", type=float, help="η of the server optimizer (sgd: 1)")
    p.add_argument("--dp-epsilon", type=float, help="enable DP-FedAvg with this target ε")
    p.add_argument("--dp-noise-multiplier", type=float, help="enable DP-FedAvg with this z")
    p.add_argument("--dp-clip-norm", type=float, help="S of DP-FedAvg")
    p.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="aggregate each cluster securely (SecAgg+): the coordinator sees only sums",
    )
    p.add_argument("--exit-when-done", action="store_true", help="stop after the last round")
    p.add_argument("--log-level")
    add_tls_arguments(p)
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: none)")
    p.add_argument("--metrics-host", help="address of the /metrics endpoint")
    return p.parse_args(argv)


async def start_coordinator_server(
    config: CoordinatorConfig,
    federation: Federation,
    *,
    credentials: grpc.ServerCredentials | None,
) -> ServerHandle:
    """Serve ``federation`` on ``config.listen`` as the ``fedprompt-coordinator`` process does.

    The Coordinator service with its interceptors (identity, traffic) and the stream limits
    of ``config.limits`` (keepalive of every connection, idle timeout of uploads).
    """
    return await start_server(
        register=lambda s: add_coordinator_servicer_to_server(CoordinatorServicer(federation), s),
        service_names=["fedprompt.v1.Coordinator"],
        address=config.listen,
        interceptors=[IdentityInterceptor(), TrafficInterceptor(federation.traffic)],
        credentials=credentials,
        keepalive_time_s=config.limits.keepalive_time_s,
        keepalive_timeout_s=config.limits.keepalive_timeout_s,
        stream_idle_timeout_s=config.limits.upload_idle_timeout_s,
    )


def open_federation(
    config: CoordinatorConfig,
    *,
    clustering_credentials: grpc.ChannelCredentials | None = None,
    metrics: CoordinatorMetrics | None = None,
) -> tuple[StateStore, Federation]:
    """Open the state dir (database and snapshots, checked) and build the federation on it.

    The caller closes the returned store when the federation is done.

    Raises
    ------
    StateIntegrityError
        When the database cannot be opened or the state dir fails its start-up check (the
        store is closed first).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    db_path = config.state_dir / "state.sqlite3"
    try:
        state = make_state_store(db_path)
    except sqlite3.DatabaseError as exc:
        raise StateIntegrityError(
            f"cannot open the state database {db_path}: {exc}; restore the state dir from a "
            f"backup, or move {config.state_dir} away to start a new federation"
        ) from exc
    try:
        federation = Federation(
            config=config,
            state=state,
            models=ModelStore(config.state_dir / "models"),
            clustering=make_clustering_backend(
                config.clustering, credentials=clustering_credentials
            ),
            metrics=metrics,
        )
    except BaseException:
        state.close()
        raise
    return state, federation


async def serve(config: CoordinatorConfig, *, exit_when_done: bool) -> int:
    """Serve until SIGTERM/SIGINT (or, with ``exit_when_done``, until the last round).

    Returns the exit status: 0, or :data:`EXIT_ROUND_FAILED` when the round loop stopped
    with an error (health NOT_SERVING, then exit after ``round_failure_exit_delay_s`` or a
    signal).

    Raises
    ------
    StateIntegrityError
        When the state dir fails its start-up check (before anything is served).
    """
    server_creds = server_credentials(config.tls, role="coordinator")
    clusterer_creds = (
        channel_credentials(config.tls, role="coordinator -> clusterer channel")
        if config.clustering.address
        else None
    )
    state, federation = open_federation(
        config, clustering_credentials=clusterer_creds, metrics=CoordinatorMetrics()
    )
    metrics_server = serve_metrics(
        federation.metrics.registry, host=config.metrics_host, port=config.metrics_port
    )
    handle = await start_coordinator_server(config, federation, credentials=server_creds)
    announce_port(handle)
    stop = stop_event_on_signals()
    rounds = asyncio.create_task(federation.run(), name="rounds")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    status = 0
    await asyncio.wait({stopper, rounds}, return_when=asyncio.FIRST_COMPLETED)
    if rounds.done() and not rounds.cancelled():
        failure = rounds.exception()
        if failure is not None:
            status = EXIT_ROUND_FAILED
            await _fail_loudly(failure, handle, federation, stop, config)
        elif exit_when_done:
            await asyncio.sleep(1.0)  # let clients read their FINISHED task
        else:
            await stopper  # the federation is done; keep answering GetStatus until stopped
    rounds.cancel()
    stopper.cancel()
    await handle.stop(grace=2.0)
    if metrics_server is not None:
        metrics_server.close()
    state.close()
    logger.info("coordinator stopped (exit status %d)", status)
    return status


async def _fail_loudly(
    failure: BaseException,
    handle: ServerHandle,
    federation: Federation,
    stop: asyncio.Event,
    config: CoordinatorConfig,
) -> None:
    """Report the stopped round loop (log, health, metrics), then wait before exiting."""
    if isinstance(failure, RoundFailedError):
        detail = failure.failure.reason  # logged with its traceback by the federation
    else:
        logger.error("the round loop stopped unexpectedly", exc_info=failure)
        detail = f"{type(failure).__name__}: {failure}"
    federation.metrics.serving.set(0)
    await handle.set_serving(False)
    logger.error(
        "round loop stopped (%s); health is NOT_SERVING; the coordinator exits with status %d "
        "in %.0f s (or at SIGTERM) so that its supervisor restarts it from the last completed "
        "round",
        detail,
        EXIT_ROUND_FAILED,
        config.round_failure_exit_delay_s,
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(config.round_failure_exit_delay_s):
            await stop.wait()


def config_from_args(
    args: argparse.Namespace, *, environ: Mapping[str, str] | None = None
) -> CoordinatorConfig:
    """The configuration of the flags, over the YAML file and ``FEDPROMPT_COORDINATOR_*``.

    Raises
    ------
    ConfigError
        If the merged values do not validate.
    """
    return load_config(
        CoordinatorConfig,
        yaml_path=args.config,
        env_prefix="FEDPROMPT_COORDINATOR_",
        overrides={
            "listen": args.listen,
            "state_dir": args.state_dir,
            "rounds": args.rounds,
            "min_clients": args.min_clients,
            "expected_clients": args.expected_clients,
            "clustering.address": args.clusterer,
            "clustering.refine_after_rounds": args.refine_after_rounds,
            "clustering.refine_margin": args.refine_margin,
            "training.local_steps": args.local_steps,
            "training.batch_size": args.batch_size,
            "training.learning_rate": args.learning_rate,
            "training.head_learning_rate": args.head_learning_rate,
            "training.proximal_mu": args.proximal_mu,
            "evaluation.personalize_steps": args.personalize_steps,
            "strategy": args.strategy,
            "contrastive.weight": args.contrastive_weight,
            "contrastive.server_weighting": args.server_weighting,
            "aggregation.server_optimizer.name": args.server_optimizer,
            "aggregation.server_optimizer.lr": args.server_lr,
            "privacy.enabled": (
                True if args.dp_epsilon is not None or args.dp_noise_multiplier else None
            ),
            "privacy.target_epsilon": args.dp_epsilon,
            "privacy.noise_multiplier": args.dp_noise_multiplier,
            "privacy.clip_norm": args.dp_clip_norm,
            "round_deadline_s": args.round_deadline_s,
            "secure_aggregation.enabled": True if args.secure_aggregation else None,
            "log_level": args.log_level,
            **tls_overrides(args),
            "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
        },
        environ=environ,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedprompt-coordinator``."""
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fedprompt-coordinator: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, service="coordinator")
    try:
        return asyncio.run(serve(config, exit_when_done=args.exit_when_done))
    except TlsError as exc:
        logger.error("%s", exc)
        return 2
    except StateIntegrityError as exc:
        logger.error("state dir %s failed its start-up check: %s", config.state_dir, exc)
        return EXIT_STATE_INVALID


if __name__ == "__main__":
    raise SystemExit(main())

"""``fedprompt up``: a whole federation on loopback, as separate processes, with live progress.

Starts the clusterer, the coordinator and N client agents (each on its own silo of the
bundled medical-text task), follows the coordinator's status until the last round is done,
prints per-client results and writes ``summary.json`` into the run folder. Ctrl-C stops
every process it started; a child that fails makes it stop the rest and exit non-zero with
the child's error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fedprompt.server import TARGET_NAME_OVERRIDE, channel_options
from fedprompt.status_pages import read_full_status
from fedprompt.strategies import StrategyName, strategy_spec
from fedprompt.tls import COORDINATOR_IDENTITY, OPERATOR_IDENTITY
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import (
    Child,
    ChildFailedError,
    console_script,
    interrupt_guard,
    stop_all,
)
from fedprompt_cli.report import bytes_table, client_table, rounds_table, summarize


@dataclass(frozen=True)
class UpOptions:
    """Settings of a local federation run."""

    clients: int
    rounds: int
    local_steps: int
    batch_size: int
    max_length: int
    seed: int
    device: str
    run_dir: Path
    model_dir: Path | None
    data_root: Path | None
    timeout_s: float
    torch_threads: int
    strategy: str = StrategyName.FPL
    task: str = "text"
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    contrastive_weight: float | None = None
    dp_epsilon: float | None = None
    dp_noise_multiplier: float | None = None
    dp_sgd_epsilon: float | None = None
    max_images: int | None = None
    insecure: bool = False
    #: Client agents per process (1: one process per silo; more: one torch import shared).
    clients_per_process: int = 1
    #: Hosted agents train one after another instead of in shared passes.
    sequential_hosts: bool = False
    #: Lossy compression of the clients' uploaded deltas (none, fp16, int8; None: their
    #: config's, ``none`` unless the environment says otherwise).
    upload_compression: str | None = None
    #: fpl's cluster weights (``contrastive`` or ``mean``; None: the coordinator's default).
    server_weighting: str | None = None
    #: The coordinator's server optimizer (``sgd``, ``adam``, ``yogi``, ``adagrad``) and its
    #: η (None: the coordinator's default, plain sgd with η = 1).
    server_optimizer: str | None = None
    server_lr: float | None = None
    #: μ of FedProx's client proximal term (None: the coordinator's default, 0: off).
    proximal_mu: float | None = None
    #: Steps of the clients' final personalization pass of their local segment and head at
    #: every evaluation (None: the coordinator's default, 0: none).
    personalize_steps: int | None = None
    #: Cluster refinement's rounds of update alignment that move a member (None: the
    #: coordinator's default, 0: off; needs clustering).
    refine_after_rounds: int | None = None
    #: Cluster refinement's margin of cosine over the member's own cluster (None: the
    #: coordinator's default).
    refine_margin: float | None = None
    #: Prompt segment sizes of every client agent (0: no such segment; None: the model's
    #: default, 8/4/4 virtual tokens for text, 2/1/1 ring pixels for images).
    n_global: int | None = None
    n_cluster: int | None = None
    n_local: int | None = None
    #: Start the clusterer and group clients by their metadata (False: every client in one
    #: cluster, the coordinator without a clusterer).
    clustering: bool = True
    #: Secure aggregation inside each cluster (``--secure-aggregation`` of the coordinator).
    secure_aggregation: bool = False

    def coordinator_flags(self) -> list[str]:
        """Strategy, learning-rate, fpl, server-optimizer and privacy flags of the coordinator."""
        lr = self.learning_rate
        if lr is None:
            lr = strategy_spec(self.strategy).learning_rate(self.task)
        flags = ["--strategy", self.strategy, "--learning-rate", str(lr)]
        optional = {
            "--head-learning-rate": self.head_learning_rate,
            "--contrastive-weight": self.contrastive_weight,
            "--server-weighting": self.server_weighting,
            "--server-optimizer": self.server_optimizer,
            "--server-lr": self.server_lr,
            "--proximal-mu": self.proximal_mu,
            "--personalize-steps": self.personalize_steps,
            "--refine-after-rounds": self.refine_after_rounds,
            "--refine-margin": self.refine_margin,
            "--dp-epsilon": self.dp_epsilon,
            "--dp-noise-multiplier": self.dp_noise_multiplier,
        }
        for flag, value in optional.items():
            if value is not None:
                flags += [flag, str(value)]
        if self.secure_aggregation:
            flags.append("--secure-aggregation")
        return flags

    def clusterer_flags(self, port: int | None) -> list[str]:
        """The coordinator's ``--clusterer`` (none without clustering: one cluster)."""
        if not self.clustering or port is None:
            return []
        return ["--clusterer", f"127.0.0.1:{port}"]

    def client_flags(self) -> list[str]:
        """Strategy, prompt layout, record-level DP and upload-compression flags of every
        client agent."""
        flags = ["--strategy", self.strategy]
        segments = {"--n-global": self.n_global, "--n-cluster": self.n_cluster}
        for flag, size in {**segments, "--n-local": self.n_local}.items():
            if size is not None:
                flags += [flag, str(size)]
        if self.dp_sgd_epsilon is not None:
            flags += [
                "--dp-sgd-epsilon", str(self.dp_sgd_epsilon),
                "--dp-sgd-total-steps", str(self.rounds * self.local_steps),
            ]  # fmt: skip
        if self.upload_compression is not None:
            flags += ["--upload-compression", self.upload_compression]
        return flags


def _tls_flags(certs: Path | None, name: str) -> list[str]:
    """``--tls-*`` flags of the process ``name`` (its cert is ``<name>.crt``), or --insecure."""
    if certs is None:
        return ["--insecure"]
    return [
        "--tls-cert", str(certs / f"{name}.crt"),
        "--tls-key", str(certs / f"{name}.key"),
        "--tls-ca", str(certs / "ca.crt"),
    ]  # fmt: skip


def _make_certs(options: UpOptions, silos: list[Path], console: Console) -> Path | None:
    """A fresh CA and certificates for this run in ``<run-dir>/certs`` (None: --insecure)."""
    if options.insecure:
        console.print("[yellow]--insecure: the processes talk plaintext gRPC[/]")
        return None
    from fedprompt_cli.certs import CertError, write_certs

    out = options.run_dir / "certs"
    try:
        write_certs(out, silos=[s.name for s in silos], operator=True)
    except CertError as exc:
        raise ChildFailedError(f"cannot create certificates: {exc}") from None
    console.print(f"mutual TLS: certificates of this run in {out}")
    return out


def _status_channel(port: int, certs: Path | None) -> grpc.Channel:
    """The launcher's own channel to the coordinator, as the operator (the full status view).

    It presents the operator certificate and checks that the server is the coordinator
    (its certificate's name), as the client agents do.
    """
    target = f"127.0.0.1:{port}"
    if certs is None:
        return grpc.insecure_channel(target, options=channel_options())
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{OPERATOR_IDENTITY}.key").read_bytes(),
        certificate_chain=(certs / f"{OPERATOR_IDENTITY}.crt").read_bytes(),
    )
    options = [*channel_options(), (TARGET_NAME_OVERRIDE, COORDINATOR_IDENTITY)]
    return grpc.secure_channel(target, credentials, options=options)


def _free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_hosts(
    options: UpOptions, silos: list[Path], port: int, logs: Path, certs: Path | None
) -> list[Child]:
    """Start the client agents ``clients_per_process`` at a time in shared host processes."""
    hosts = []
    per = options.clients_per_process
    for index in range(0, len(silos), per):
        group = silos[index : index + per]
        argv = [
            sys.executable, "-m", "fedprompt_client_agent.host",
            "--coordinator", f"127.0.0.1:{port}",
            "--state-root", str(options.run_dir / "clients"),
            "--device", options.device,
            "--max-length", str(options.max_length),
            "--seed", str(options.seed),
            "--torch-threads", str(options.torch_threads),
            *options.client_flags(),
            *(["--insecure"] if certs is None else ["--tls-dir", str(certs)]),
            *(["--sequential"] if options.sequential_hosts else []),
        ]  # fmt: skip
        for silo in group:
            argv += ["--silo-dir", str(silo)]
        if options.model_dir is not None:
            argv += ["--model-dir", str(options.model_dir)]
        child = Child(f"client-host-{index // per}", argv, logs / f"client-host-{index // per}.log")
        child.start()
        hosts.append(child)
    return hosts


def _phase_name(phase: common_pb2.RoundPhase.ValueType) -> str:
    return common_pb2.RoundPhase.Name(phase).removeprefix("ROUND_PHASE_").lower()


def _silo_dirs(options: UpOptions, console: Console) -> list[Path]:
    if options.data_root is not None:
        silos = sorted(
            p
            for p in options.data_root.iterdir()
            if not p.name.startswith(".") and (p / "metadata.json").exists()
        )
        if len(silos) < options.clients:
            raise ChildFailedError(
                f"{options.data_root} holds {len(silos)} silo folders, {options.clients} needed"
            )
        return silos[: options.clients]
    out = options.run_dir / "silos"
    what = "drug-review" if options.task == "text" else "rotated-digits"
    console.print(f"[bold]making {options.clients} silos[/] of the {what} task in {out}")
    argv = [
        console_script("fedprompt-make-silos"),
        "--task", options.task,
        "--num-silos", str(options.clients),
        "--seed", str(options.seed),
        "--out", str(out),
    ]  # fmt: skip
    if options.max_images is not None:
        argv += ["--max-images", str(options.max_images)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ChildFailedError(f"fedprompt-make-silos failed:\n{proc.stdout}{proc.stderr}")
    console.print(proc.stdout.rstrip())
    return sorted(p for p in out.iterdir() if (p / "metadata.json").exists())


def _progress(status: coordinator_pb2.GetStatusResponse, started: float) -> Table:
    table = Table(
        title=(
            f"round {status.current_round}/{status.total_rounds} - phase "
            f"{_phase_name(status.phase)} - {status.completed_rounds} completed - "
            f"strategy {status.strategy} - ε {status.epsilon:.2f} - "
            f"{time.monotonic() - started:.0f} s"
        )
    )
    for col in ("client", "cluster", "connected", "last eval acc"):
        table.add_column(col)
    last_eval: dict[str, float] = {}
    for r in status.rounds:
        for record in r.clients:
            if "accuracy" in record.eval_metrics:
                last_eval[record.client_id] = record.eval_metrics["accuracy"]
    clients = list(status.clients)
    shown = clients if len(clients) <= PROGRESS_ROWS else clients[: PROGRESS_ROWS - 1]
    for client in shown:
        acc = last_eval.get(client.client_id)
        table.add_row(
            client.client_id,
            str(client.cluster_id),
            "yes" if client.connected else "no",
            "-" if acc is None else f"{100 * acc:.1f}%",
        )
    if len(shown) < len(clients):  # one summary row: a live table must fit the terminal
        rest = clients[len(shown) :]
        accs = [last_eval[c.client_id] for c in rest if c.client_id in last_eval]
        table.add_row(
            f"... {len(rest)} more",
            f"{len({c.cluster_id for c in rest})} clusters",
            f"{sum(c.connected for c in rest)}/{len(rest)}",
            "-"
            if not accs
            else f"mean {100 * sum(accs) / len(accs):.1f}%, min {100 * min(accs):.1f}%",
        )
    return table


#: Most rows of the live progress table (more clients: the rest in one summary row).
PROGRESS_ROWS = 20


def memory_table(children: list[Child]) -> Table:
    """Peak resident memory (``VmHWM``) of every started process, as sampled during the run."""
    table = Table(title="peak memory per process (resident, sampled every 0.5 s)")
    table.add_column("process")
    table.add_column("peak RSS", justify="right")
    for child in children:
        peak = child.peak_rss_bytes
        table.add_row(child.name, "-" if peak is None else f"{peak / 2**20:,.0f} MiB")
    return table


#: Exit code of an interrupted run (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def run_up(options: UpOptions, console: Console) -> int:
    """Run the federation; returns the process exit code."""
    options.run_dir.mkdir(parents=True, exist_ok=True)
    logs = options.run_dir / "logs"
    children: list[Child] = []
    started = time.monotonic()
    try:
        with interrupt_guard(children, "interrupted: stopping every process started"):
            return _run_federation(options, console, children, logs, started)
    except ChildFailedError as exc:
        console.print(f"[bold red]federation failed[/]: {exc}")
        return 1
    except grpc.RpcError as exc:
        console.print(f"[bold red]coordinator unreachable[/]: {exc}")
        for child in children:
            console.print(f"--- {child.name} ---\n{child.log_tail(10)}")
        return 1
    except KeyboardInterrupt:  # the guard said so on stderr
        return INTERRUPTED
    finally:
        stop_all(children)


def _run_federation(
    options: UpOptions, console: Console, children: list[Child], logs: Path, started: float
) -> int:
    """Start every process (appended to ``children`` as they start) and follow the rounds."""
    channel: grpc.Channel | None = None
    try:
        silos = _silo_dirs(options, console)
        certs = _make_certs(options, silos, console)
        clusterer: Child | None = None
        if options.clustering:
            clusterer = Child(
                "clusterer",
                [
                    console_script("fedprompt-clusterer"),
                    "--listen",
                    "127.0.0.1:0",
                    *_tls_flags(certs, "clusterer"),
                ],
                logs / "clusterer.log",
            )
            clusterer.start()
            children.append(clusterer)
        # Host processes import torch and build their models while the servers start; they
        # dial a port chosen now (and retry until the coordinator listens on it).
        hosted = options.clients_per_process > 1
        wanted_port = _free_port() if hosted else 0
        clients = _start_hosts(options, silos, wanted_port, logs, certs) if hosted else []
        children.extend(clients)
        clusterer_port = clusterer.wait_for_port() if clusterer is not None else None
        clustering = options.clusterer_flags(clusterer_port)
        coordinator = Child(
            "coordinator",
            [
                console_script("fedprompt-coordinator"),
                "--listen", f"127.0.0.1:{wanted_port}",
                "--state-dir", str(options.run_dir / "coordinator"),
                "--rounds", str(options.rounds),
                "--min-clients", str(min(2, options.clients)),
                "--expected-clients", str(options.clients),
                *clustering,
                "--local-steps", str(options.local_steps),
                "--batch-size", str(options.batch_size),
                *options.coordinator_flags(),
                *_tls_flags(certs, "coordinator"),
            ],
            logs / "coordinator.log",
        )  # fmt: skip
        coordinator.start()
        children.append(coordinator)
        port = coordinator.wait_for_port()
        for silo in silos if not hosted else []:
            argv = [
                console_script("fedprompt-client-agent"),
                "--client-id", silo.name,
                "--coordinator", f"127.0.0.1:{port}",
                "--data-dir", str(silo),
                "--state-dir", str(options.run_dir / "clients" / silo.name),
                "--device", options.device,
                "--max-length", str(options.max_length),
                "--seed", str(options.seed),
                "--torch-threads", str(options.torch_threads),
                *options.client_flags(),
                *_tls_flags(certs, silo.name),
            ]  # fmt: skip
            if options.model_dir is not None:
                argv += ["--model-dir", str(options.model_dir)]
            child = Child(silo.name, argv, logs / f"{silo.name}.log")
            child.start()
            children.append(child)
            clients.append(child)
        clients_up = len(silos)
        (options.run_dir / "pids.json").write_text(
            json.dumps({c.name: c.pid for c in children}, indent=2, sort_keys=True)
        )
        where = (
            f"clusterer 127.0.0.1:{clusterer_port}"
            if clusterer_port is not None
            else "no clusterer (one cluster)"
        )
        console.print(
            f"[bold]federation up[/]: coordinator 127.0.0.1:{port}, {where}, {clients_up} "
            f"clients in {len(clients)} processes; logs in {logs}"
        )
        channel = _status_channel(port, certs)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        deadline = time.monotonic() + options.timeout_s
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        with Live(_progress(status, started), console=console, refresh_per_second=4) as live:
            while True:
                for child in children:
                    child.sample_memory()
                    child.check()
                    if child.poll() == 0 and child in (clusterer, coordinator):
                        raise ChildFailedError(f"{child.name} exited early:\n{child.log_tail()}")
                status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
                live.update(_progress(status, started))
                if (
                    status.completed_rounds >= options.rounds
                    and status.phase == common_pb2.ROUND_PHASE_DONE
                ):
                    break
                if time.monotonic() > deadline:
                    raise ChildFailedError(
                        f"federation did not finish in {options.timeout_s:.0f} s"
                    )
                time.sleep(0.5)
        for child in clients:
            assert child.process is not None
            try:
                child.process.wait(60)
            except subprocess.TimeoutExpired:
                raise ChildFailedError(f"{child.name} did not exit after the last round") from None
            child.check()
        status = read_full_status(lambda r: stub.GetStatus(r, timeout=10))  # every page
        summary = summarize(status)
        summary["wall_seconds"] = time.monotonic() - started
        summary["peak_rss_bytes"] = {
            c.name: c.peak_rss_bytes for c in children if c.peak_rss_bytes is not None
        }
        (options.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        console.print(rounds_table(summary))
        console.print(Group(client_table(summary), bytes_table(summary), memory_table(children)))
        if status.stop_reason:
            console.print(f"[yellow]stopped early[/]: {status.stop_reason}")
        if status.epsilon > 0:
            levels = ", ".join(f"{k} ε={v:.3f}" for k, v in sorted(status.epsilon_by_level.items()))
            console.print(
                f"client-level privacy: ε={status.epsilon:.3f} at δ={status.delta:g}"
                + (f" (all levels composed; each alone: {levels})" if levels else "")
            )
        console.print(
            f"[bold green]done[/]: {summary['completed_rounds']} rounds in "
            f"{summary['wall_seconds']:.1f} s; summary in {options.run_dir / 'summary.json'}"
        )
        return 0
    finally:
        if channel is not None:
            channel.close()

"""Typed configuration of the clusterer process.

It is loaded with :func:`fedprompt.config.load_config`; sources, later ones winning: the
model's defaults, a YAML file, environment variables ``<ENV_PREFIX><FIELD>`` (e.g.
``FEDPROMPT_CLUSTERER_LISTEN``), explicit overrides (CLI flags).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedprompt.config import LogLevel
from fedprompt.tls import TlsConfig

#: Prefix of the clusterer's environment variables.
ENV_PREFIX = "FEDPROMPT_CLUSTERER_"
#: Default bound of the members of one streamed clustering request (the memory it may take).
DEFAULT_MAX_MEMBERS = 1_000_000


class ClustererConfig(BaseModel):
    """Settings of one clusterer process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = Field(
        default="127.0.0.1:50052",
        min_length=3,
        description="host:port the gRPC server binds; port 0 picks a free port.",
    )
    log_level: LogLevel = Field(
        default=LogLevel.INFO, description="Least severe log level that is written."
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: none)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the /metrics endpoint binds (0.0.0.0 in containers).",
    )
    shutdown_grace_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long running calls may finish after SIGTERM/SIGINT.",
    )

    max_members: int = Field(
        default=DEFAULT_MAX_MEMBERS,
        ge=1,
        description="Most members one streamed clustering request (ClusterStream) may carry; "
        "more are refused with RESOURCE_EXHAUSTED before any clustering.",
    )

    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="Certificate, key and CA (mutual TLS), or insecure: true for plaintext.",
    )
    allowed_peers: tuple[str, ...] = Field(
        default=("coordinator",),
        description="Certificate CNs that may call the clusterer (the coordinator's only).",
    )

    @field_validator("listen")
    @classmethod
    def _has_port(cls, value: str) -> str:
        """Require ``host:port`` with a numeric port."""
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("must be host:port, e.g. 127.0.0.1:50052")
        return value


def listen_port(listen: str) -> int:
    """Return the port part of a ``host:port`` address."""
    return int(listen.rpartition(":")[2])

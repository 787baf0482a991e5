"""Typed configuration of a client agent."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedprompt.compression import Compression
from fedprompt.config import LogLevel
from fedprompt.strategies import StrategyName
from fedprompt.tls import TlsConfig


class DeviceChoice(enum.StrEnum):
    """Where the frozen model runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Modality(enum.StrEnum):
    """What the silo's data is; ``auto`` looks for ``train.npz`` (images) in the data folder."""

    AUTO = "auto"
    TEXT = "text"
    IMAGE = "image"


class ClientAgentConfig(BaseModel):
    """Everything one silo's agent needs. Data and personal prompt stay in this silo."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(..., description="This silo's id in the federation.")
    coordinator: str = Field("127.0.0.1:50051", description="Coordinator host:port (dial out).")
    data_dir: Path = Field(..., description="Silo folder: train/val/test files + metadata.json.")
    state_dir: Path = Field(Path("client-state"), description="Where the personal prompt is kept.")
    model_dir: Path | None = Field(
        None, description="Local Hugging Face model folder; default: the bundled all-MiniLM-L6-v2."
    )
    device: DeviceChoice = Field(DeviceChoice.AUTO, description="auto picks CUDA when present.")
    strategy: StrategyName = Field(
        StrategyName.FPL, description="Federated strategy; must match the coordinator's."
    )
    modality: Modality = Field(Modality.AUTO, description="text, image, or auto-detect.")
    n_global: int | None = Field(
        None,
        ge=0,
        description="Global segment: virtual tokens (text, default 8) or ring pixels "
        "(image, default 2).",
    )
    n_cluster: int | None = Field(
        None, ge=0, description="Cluster segment size (text default 4, image default 1)."
    )
    n_local: int | None = Field(
        None, ge=0, description="Local, never-sent segment size (text default 4, image default 1)."
    )
    image_size: int = Field(32, ge=8, description="Images are resized to this side (image).")
    dp_sgd_noise_multiplier: float | None = Field(
        None, ge=0, description="Record-level DP-SGD (Opacus) with this σ."
    )
    dp_sgd_target_epsilon: float | None = Field(
        None, gt=0, description="Record-level DP-SGD calibrated to this ε over dp_sgd_total_steps."
    )
    dp_sgd_total_steps: int | None = Field(
        None, ge=1, description="Planned local steps of the whole run (rounds × local steps)."
    )
    dp_sgd_max_grad_norm: float = Field(1.0, gt=0, description="DP-SGD per-example clip C.")
    max_length: int = Field(128, ge=8, description="Token limit of one example.")
    upload_compression: Compression = Field(
        Compression.NONE,
        description="Lossy compression of uploaded deltas: none, fp16 or int8 (blockwise).",
    )
    seed: int = Field(0, description="Seed of prompt initialisation and data order.")
    text_column: str = Field("text", description="Text column of the silo's files.")
    label_column: str = Field("label", description="Label column of the silo's files.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads, if set.")
    max_reconnect_s: float = Field(
        300.0, gt=0, description="Give up when the coordinator stays unreachable this long."
    )
    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="This silo's certificate (its CN must be client_id), key and the "
        "federation CA; or insecure: true for plaintext.",
    )
    log_level: LogLevel = Field(LogLevel.INFO, description="Python logging level.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: none)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the /metrics endpoint binds (0.0.0.0 in containers)."
    )

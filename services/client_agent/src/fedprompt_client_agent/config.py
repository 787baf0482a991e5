"""Typed configuration of a client agent."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedprompt.config import LogLevel


class DeviceChoice(enum.StrEnum):
    """Where the frozen model runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


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
    n_global: int = Field(8, ge=0, description="Virtual tokens of the global prompt segment.")
    n_cluster: int = Field(4, ge=0, description="Virtual tokens of the cluster prompt segment.")
    n_local: int = Field(4, ge=0, description="Virtual tokens of the local (never sent) segment.")
    max_length: int = Field(128, ge=8, description="Token limit of one example.")
    seed: int = Field(0, description="Seed of prompt initialisation and data order.")
    text_column: str = Field("text", description="Text column of the silo's files.")
    label_column: str = Field("label", description="Label column of the silo's files.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads, if set.")
    max_reconnect_s: float = Field(
        300.0, gt=0, description="Give up when the coordinator stays unreachable this long."
    )
    log_level: LogLevel = Field(LogLevel.INFO, description="Python logging level.")

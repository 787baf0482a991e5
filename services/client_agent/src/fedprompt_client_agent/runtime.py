"""The learning side of a client agent: frozen model + segmented peft prompt + local data.

:class:`PromptTuningRuntime` implements :class:`~fedprompt_client_agent.agent.LearningRuntime`
with :class:`~fedprompt_client_agent.model.PromptClassifier` and
:class:`~fedprompt_client_agent.trainer.LocalTrainer`. The personal prompt (every segment
and the head) is kept in ``state_dir``; the local segment never leaves the silo.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fedprompt.v1 import common_pb2
from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_client_agent.data import SiloData, load_silo_dir
from fedprompt_client_agent.model import (
    PromptClassifier,
    PromptSpec,
    build_prompt_classifier,
    default_model_dir,
)
from fedprompt_client_agent.trainer import LocalTrainer, SplitName, TrainConfig

logger = logging.getLogger(__name__)

PERSONAL_PROMPT_FILE = "personal_prompt.safetensors"


def model_fingerprint(
    model_dir: Path, *, labels: tuple[str, ...], spec: PromptSpec, kind: str
) -> str:
    """A short hash that equal models, prompt layouts and label sets share.

    Built from the model folder's ``config.json``, the backbone kind, the prompt segment
    lengths and the ordered label names; the federation refuses members that differ.
    """
    h = hashlib.sha256()
    config_file = model_dir / "config.json"
    h.update(config_file.read_bytes() if config_file.exists() else model_dir.name.encode())
    h.update(
        json.dumps(
            {
                "kind": kind,
                "labels": list(labels),
                "segments": [spec.n_global, spec.n_cluster, spec.n_local],
            }
        ).encode()
    )
    return h.hexdigest()[:16]


class PromptTuningRuntime:
    """One silo's model and data, as the agent loop needs them."""

    def __init__(self, config: ClientAgentConfig) -> None:
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.client_id = config.client_id
        self.silo: SiloData = load_silo_dir(
            config.data_dir, text_column=config.text_column, label_column=config.label_column
        )
        self.num_train_examples = len(self.silo.train)
        self.metadata: Mapping[str, object] = self.silo.metadata
        model_dir = config.model_dir or default_model_dir()
        spec = PromptSpec(
            n_global=config.n_global, n_cluster=config.n_cluster, n_local=config.n_local
        )
        self.model: PromptClassifier
        self.model, tokenizer = build_prompt_classifier(
            model_dir,
            num_labels=self.silo.num_labels,
            spec=spec,
            seed=config.seed,
            device=config.device.value,
        )
        self.trainer = LocalTrainer(
            self.model,
            tokenizer,
            self.silo,
            TrainConfig(steps=1, max_length=config.max_length, seed=config.seed),
        )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._personal_path = config.state_dir / PERSONAL_PROMPT_FILE
        if self._personal_path.exists():
            self.model.load_personal(self._personal_path)
            logger.info("restored the personal prompt from %s", self._personal_path)
        self.capabilities = common_pb2.ClientCapabilities(
            device=str(self.model.device),
            model_name=Path(model_dir).name,
            model_fingerprint=model_fingerprint(
                Path(model_dir), labels=self.silo.labels, spec=spec, kind=self.model.kind.value
            ),
            trainable_tensors=sorted(self.model.shared_state()),
        )
        logger.info(
            "silo %s: %d train / %d val / %d test examples, %d labels, device %s",
            self.silo.name,
            len(self.silo.train),
            len(self.silo.val),
            len(self.silo.test),
            self.silo.num_labels,
            self.model.device,
        )

    def shared_state(self) -> dict[str, np.ndarray]:
        """The travelling tensors (global and cluster segments, head)."""
        return self.model.shared_state()

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Install the coordinator's tensors; the local segment is untouched."""
        self.model.load_shared_state(tensors)

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Run the task's local steps with its learning rates."""
        self.trainer.update_config(
            steps=settings.local_steps,
            batch_size=settings.batch_size,
            lr=settings.learning_rate,
            head_lr=settings.head_learning_rate,
        )
        result = self.trainer.train()
        return {
            "loss": result.mean_loss,
            "steps": float(result.steps),
            "examples_seen": float(result.examples_seen),
            "seconds": result.seconds,
            "step_seconds": result.step_seconds_mean,
        }

    def evaluate(self) -> dict[str, float]:
        """Accuracy, macro-F1 and loss on the held-out test split (and on val, prefixed)."""
        out: dict[str, float] = {}
        splits: tuple[tuple[SplitName, str], ...] = (("test", ""), ("val", "val_"))
        for split, prefix in splits:
            if not self.silo.split(split):
                continue
            r = self.trainer.evaluate(split)
            out.update(
                {
                    f"{prefix}accuracy": r.accuracy,
                    f"{prefix}macro_f1": r.macro_f1,
                    f"{prefix}loss": r.loss,
                    f"{prefix}num_examples": float(r.num_examples),
                }
            )
        return out

    def save_personal(self) -> None:
        """Write the personal prompt atomically into the silo's state folder."""
        self.model.save_personal(self._personal_path)

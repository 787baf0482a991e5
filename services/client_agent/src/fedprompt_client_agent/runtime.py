"""The learning side of a client agent: a frozen model, its adaptation, and the silo's data.

:class:`SiloRuntime` implements :class:`~fedprompt_client_agent.agent.LearningRuntime` for
every strategy and both modalities:

- text (CSV/JSONL silos): a local Hugging Face model with a segmented peft soft prompt
  (``local``, ``fedavg``, ``clustered``, ``fpl``), LoRA adapters (``lora-fedavg``) or full
  fine-tuning (``full-fedavg``), plus a linear head;
- images (``.npz`` silos): frozen EfficientNet-Lite0 with a ring-segmented visual prompt,
  LoRA adapters or full fine-tuning, plus a linear head.

The personal state (every segment and the head) is kept in ``state_dir``; the local segment
never leaves the silo. Optional record-level DP-SGD (Opacus) reports the silo's ε.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fedprompt.strategies import PROMPT_STRATEGIES, StrategyName
from fedprompt.v1 import common_pb2
from fedprompt_client_agent.agent import TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig, Modality
from fedprompt_client_agent.state_io import atomic_write
from fedprompt_client_agent.training.contrastive_loss import make_info_nce_loss
from fedprompt_client_agent.training.trainer import EvalResult, TrainConfig, TrainResult

logger = logging.getLogger(__name__)

PERSONAL_PROMPT_FILE = "personal_prompt.safetensors"
DP_SGD_STATE_FILE = "dp_sgd_accountant.json"


class AdaptedModel(Protocol):
    """The state API every adapted model (prompt, LoRA, full) offers."""

    @property
    def device(self) -> torch.device: ...

    def shared_state(self) -> dict[str, np.ndarray]: ...

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None: ...

    def save_personal(self, path: str | Path) -> Path: ...

    def load_personal(self, path: str | Path) -> None: ...


class Trainer(Protocol):
    """What :class:`SiloRuntime` needs from a text or image trainer."""

    def update_config(self, **changes: Any) -> TrainConfig: ...

    def train(
        self, *, steps: int | None = None, extra_loss: Callable[[Any], torch.Tensor] | None = None
    ) -> TrainResult: ...

    def evaluate(self, split: Any = "val") -> EvalResult: ...


def detect_modality(config: ClientAgentConfig) -> Modality:
    """Images when the silo folder has ``train.npz``, else text (unless configured)."""
    if config.modality is not Modality.AUTO:
        return config.modality
    return Modality.IMAGE if (config.data_dir / "train.npz").exists() else Modality.TEXT


def model_fingerprint(source: Path, parts: Mapping[str, object]) -> str:
    """A short hash that equal models, adaptations, prompt layouts and label sets share.

    Built from the model's ``config.json`` (or the weights file's name and size) and the
    given parts (modality, strategy, segment sizes, labels); the federation refuses members
    whose fingerprint differs.
    """
    h = hashlib.sha256()
    config_file = source / "config.json" if source.is_dir() else None
    if config_file is not None and config_file.exists():
        h.update(config_file.read_bytes())
    else:
        h.update(source.name.encode())
        if source.is_file():
            h.update(str(source.stat().st_size).encode())
    h.update(json.dumps(dict(parts), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class SiloRuntime:
    """One silo's model and data, as the agent loop needs them."""

    def __init__(self, config: ClientAgentConfig) -> None:
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.client_id = config.client_id
        self.strategy = StrategyName(config.strategy)
        self.modality = detect_modality(config)
        self._dp_sgd = (
            config.dp_sgd_noise_multiplier is not None or config.dp_sgd_target_epsilon is not None
        )
        parts: dict[str, object] = {
            "modality": self.modality.value,
            "strategy": self.strategy.value,
        }
        if self.modality is Modality.IMAGE:
            source = self._build_image(config, parts)
        else:
            source = self._build_text(config, parts)
        self.num_train_examples = len(self._splits["train"])
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._personal_path = config.state_dir / PERSONAL_PROMPT_FILE
        self._dp_state_path = config.state_dir / DP_SGD_STATE_FILE
        if self._personal_path.exists():
            self.model.load_personal(self._personal_path)
            logger.info("restored the personal state from %s", self._personal_path)
        if self._dp_sgd and self._dp_state_path.exists():
            self.trainer.load_state_dict(json.loads(self._dp_state_path.read_text()))  # type: ignore[attr-defined]
            logger.info("restored the DP-SGD accountant (ε=%.3f)", self._dp_epsilon())
        self.capabilities = common_pb2.ClientCapabilities(
            device=str(self.model.device),
            model_name=source.name,
            model_fingerprint=model_fingerprint(source, parts),
            trainable_tensors=sorted(self.shared_state()),
            strategy=self.strategy.value,
        )
        logger.info(
            "silo %s (%s, %s): %d train / %d val / %d test examples, %d labels, device %s",
            self.silo_name,
            self.modality.value,
            self.strategy.value,
            self.num_train_examples,
            len(self._splits["val"]),
            len(self._splits["test"]),
            len(self.labels),
            self.model.device,
        )

    # ------------------------------------------------------------------ builders

    def _build_text(self, config: ClientAgentConfig, parts: dict[str, object]) -> Path:
        from fedprompt_client_agent.data.text_silos import load_silo_dir
        from fedprompt_client_agent.model import (
            PromptSpec,
            build_prompt_classifier,
            default_model_dir,
        )
        from fedprompt_client_agent.training.trainer import LocalTrainer

        silo = load_silo_dir(
            config.data_dir, text_column=config.text_column, label_column=config.label_column
        )
        self._set_silo(silo.name, silo.labels, silo.metadata, silo.train, silo.val, silo.test)
        model_dir = Path(config.model_dir or default_model_dir())
        tokenizer: Any
        model: Any
        if self.strategy in PROMPT_STRATEGIES:
            spec = PromptSpec(
                n_global=8 if config.n_global is None else config.n_global,
                n_cluster=4 if config.n_cluster is None else config.n_cluster,
                n_local=4 if config.n_local is None else config.n_local,
            )
            parts["segments"] = [spec.n_global, spec.n_cluster, spec.n_local]
            model, tokenizer = build_prompt_classifier(
                model_dir,
                num_labels=silo.num_labels,
                spec=spec,
                seed=config.seed,
                device=config.device.value,
            )
        else:
            from fedprompt_client_agent.adapters import build_full_classifier, build_lora_classifier

            build = (
                build_lora_classifier
                if self.strategy is StrategyName.LORA_FEDAVG
                else build_full_classifier
            )
            model, tokenizer = build(
                model_dir, num_labels=silo.num_labels, seed=config.seed, device=config.device.value
            )
        parts.update(labels=list(silo.labels), max_length=config.max_length)
        self.model: AdaptedModel = model
        train_config = TrainConfig(steps=1, max_length=config.max_length, seed=config.seed)
        if self._dp_sgd:
            from fedprompt_client_agent.training.dp_sgd import DPLocalTrainer, DPSGDConfig

            dp = DPSGDConfig(
                noise_multiplier=config.dp_sgd_noise_multiplier,
                target_epsilon=config.dp_sgd_target_epsilon,
                total_steps=config.dp_sgd_total_steps,
                max_grad_norm=config.dp_sgd_max_grad_norm,
            )
            self.trainer: Trainer = DPLocalTrainer(model, tokenizer, silo, train_config, dp=dp)
        else:
            self.trainer = LocalTrainer(model, tokenizer, silo, train_config)
        return model_dir

    def _build_image(self, config: ClientAgentConfig, parts: dict[str, object]) -> Path:
        from fedprompt_client_agent.data.image_silos import load_image_silo_dir
        from fedprompt_client_agent.efficientnet_lite import default_weights_path
        from fedprompt_client_agent.training.vision_trainer import VisionTrainer
        from fedprompt_client_agent.vision_model import (
            VisualPromptSpec,
            build_visual_prompt_classifier,
        )

        if self._dp_sgd:
            raise ValueError("record-level DP-SGD is available for text silos only")
        silo = load_image_silo_dir(config.data_dir)
        self._set_silo(silo.name, silo.labels, silo.metadata, silo.train, silo.val, silo.test)
        weights = Path(config.model_dir or default_weights_path())
        if self.strategy in PROMPT_STRATEGIES:
            spec = VisualPromptSpec(
                image_size=config.image_size,
                n_global=2 if config.n_global is None else config.n_global,
                n_cluster=1 if config.n_cluster is None else config.n_cluster,
                n_local=1 if config.n_local is None else config.n_local,
            )
            parts["segments"] = [spec.n_global, spec.n_cluster, spec.n_local]
            model: Any = build_visual_prompt_classifier(
                weights, num_labels=silo.num_labels, spec=spec, seed=config.seed,
                device=config.device.value,
            )  # fmt: skip
        else:
            from fedprompt_client_agent.adapters import build_vision_adapter_classifier

            model = build_vision_adapter_classifier(
                weights,
                num_labels=silo.num_labels,
                mode="lora" if self.strategy is StrategyName.LORA_FEDAVG else "full",
                image_size=config.image_size,
                seed=config.seed,
                device=config.device.value,
            )
        parts.update(labels=list(silo.labels), image_size=config.image_size)
        self.model = model
        self.trainer = VisionTrainer(model, silo, TrainConfig(steps=1, seed=config.seed))
        return weights

    def _set_silo(
        self,
        name: str,
        labels: tuple[str, ...],
        metadata: Mapping[str, object],
        train: Any,
        val: Any,
        test: Any,
    ) -> None:
        self.silo_name = name
        self.labels = labels
        self.metadata: Mapping[str, object] = metadata
        self._splits: dict[str, Any] = {"train": train, "val": val, "test": test}

    # ------------------------------------------------------------------ LearningRuntime

    def shared_state(self) -> dict[str, np.ndarray]:
        """The travelling tensors; none for ``local`` (each silo trains alone)."""
        if self.strategy is StrategyName.LOCAL:
            return {}
        return self.model.shared_state()

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Install the coordinator's tensors; the local segment is untouched."""
        if tensors:
            self.model.load_shared_state(tensors)

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Run the task's local steps (with the InfoNCE term when the task asks for it)."""
        self.trainer.update_config(
            steps=settings.local_steps,
            batch_size=settings.batch_size,
            lr=settings.learning_rate,
            head_lr=settings.head_learning_rate,
        )
        extra: Callable[[nn.Module], torch.Tensor] | None = make_info_nce_loss(
            weight=settings.contrastive_weight,
            temperature=settings.contrastive_temperature,
            own=settings.cluster_id,
            centroids=settings.centroids,
        )
        result = self.trainer.train(extra_loss=extra)
        metrics = {
            "loss": result.mean_loss,
            "steps": float(result.steps),
            "examples_seen": float(result.examples_seen),
            "seconds": result.seconds,
            "step_seconds": result.step_seconds_mean,
        }
        if self._dp_sgd:
            metrics["dp_sgd_epsilon"] = self._dp_epsilon()
            metrics["dp_sgd_delta"] = float(self.trainer.delta)  # type: ignore[attr-defined]
            state = self.trainer.state_dict()  # type: ignore[attr-defined]
            atomic_write(self._dp_state_path, json.dumps(state).encode())
        return metrics

    def _dp_epsilon(self) -> float:
        return float(self.trainer.epsilon())  # type: ignore[attr-defined]

    def evaluate(self) -> dict[str, float]:
        """Accuracy, macro-F1 and loss on the held-out test split (and on val, prefixed)."""
        out: dict[str, float] = {}
        for split, prefix in (("test", ""), ("val", "val_")):
            if len(self._splits[split]) == 0:
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
        """Write the personal state atomically into the silo's state folder."""
        self.model.save_personal(self._personal_path)

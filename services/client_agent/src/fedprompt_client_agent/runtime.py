"""The learning side of a client agent: a frozen model, its adaptation, and the silo's data.

:class:`SiloRuntime` implements :class:`~fedprompt_client_agent.agent.LearningRuntime` for
every strategy and both modalities. The strategy (``fedprompt.strategies``) names the model
family the silo trains (a segmented soft prompt, LoRA adapters or full fine-tuning, each
with a linear head) and whether anything travels; the silo's data names the modality:

- text (CSV/JSONL silos): a local Hugging Face model;
- images (``.npz`` silos): frozen EfficientNet-Lite0 (the prompt is a ring-segmented
  visual prompt in input space).

The model comes from the model-family registry (:mod:`fedprompt_client_agent.models`);
reading the silo and choosing the trainer are the only modality-specific parts
(:data:`MODALITIES`). The personal state (every segment and the head) is kept in
``state_dir``; the local segment never leaves the silo. Optional record-level DP-SGD
(Opacus) reports the silo's ε.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from fedprompt.files import atomic_write
from fedprompt.strategies import strategy_spec
from fedprompt.v1 import common_pb2
from fedprompt_client_agent.agent import PersonalizeSettings, TrainSettings
from fedprompt_client_agent.config import ClientAgentConfig, Modality
from fedprompt_client_agent.data.image_silos import load_image_silo_dir
from fedprompt_client_agent.data.text_silos import load_silo_dir
from fedprompt_client_agent.models import registry
from fedprompt_client_agent.models.backbone import default_model_dir
from fedprompt_client_agent.models.efficientnet_lite import default_weights_path
from fedprompt_client_agent.training.contrastive_loss import make_info_nce_loss
from fedprompt_client_agent.training.personalization import PersonalCopy, personal_copy
from fedprompt_client_agent.training.proximal import make_proximal_loss
from fedprompt_client_agent.training.trainer import (
    BaseTrainer,
    EvalResult,
    LocalTrainer,
    SplitName,
    TextModel,
    TrainConfig,
    TrainResult,
    sum_extra_losses,
)
from fedprompt_client_agent.training.vision_trainer import VisionModel, VisionTrainer

logger = logging.getLogger(__name__)

PERSONAL_PROMPT_FILE = "personal_prompt.safetensors"
#: The splits an evaluation reports, with the prefix of their metrics.
EVALUATED_SPLITS: Mapping[str, str] = {"test": "", "val": "val_"}
DP_SGD_STATE_FILE = "dp_sgd_accountant.json"


class Trainer(Protocol):
    """What :class:`SiloRuntime` needs from a text or image trainer."""

    def update_config(self, **changes: Any) -> TrainConfig: ...

    def train(
        self, *, steps: int | None = None, extra_loss: Callable[[Any], torch.Tensor] | None = None
    ) -> TrainResult: ...

    def evaluate(self, split: Any = "val") -> EvalResult: ...


class Silo(Protocol):
    """What the runtime reads from a text or image silo."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def metadata(self) -> Mapping[str, object]: ...

    @property
    def num_labels(self) -> int: ...

    @property
    def train(self) -> Any: ...

    @property
    def val(self) -> Any: ...

    @property
    def test(self) -> Any: ...


def dp_sgd_requested(config: ClientAgentConfig) -> bool:
    """Whether the config asks for record-level DP-SGD (a noise multiplier or a target ε)."""
    return config.dp_sgd_noise_multiplier is not None or config.dp_sgd_target_epsilon is not None


def _text_trainer(built: registry.BuiltModel, silo: Any, config: ClientAgentConfig) -> Trainer:
    """The text trainer: DP-SGD when the config asks for it, else plain AdamW steps."""
    model = cast(TextModel, built.model)  # every text family has the trainer's API
    train_config = TrainConfig(steps=1, max_length=config.max_length, seed=config.seed)
    if dp_sgd_requested(config):
        # imported here: Opacus costs seconds of start-up that silos without DP-SGD skip
        from fedprompt_client_agent.training.dp_sgd import DPLocalTrainer, DPSGDConfig

        dp = DPSGDConfig(
            noise_multiplier=config.dp_sgd_noise_multiplier,
            target_epsilon=config.dp_sgd_target_epsilon,
            total_steps=config.dp_sgd_total_steps,
            max_grad_norm=config.dp_sgd_max_grad_norm,
        )
        return DPLocalTrainer(model, built.tokenizer, silo, train_config, dp=dp)
    return LocalTrainer(model, built.tokenizer, silo, train_config)


def _image_trainer(built: registry.BuiltModel, silo: Any, config: ClientAgentConfig) -> Trainer:
    """The image trainer (any image model: visual prompt, LoRA, full)."""
    model = cast(VisionModel, built.model)  # every image family has the trainer's API
    return VisionTrainer(model, silo, TrainConfig(steps=1, seed=config.seed))


@dataclass(frozen=True)
class ModalityIO:
    """How the runtime reads one modality's silo and trains its models.

    Attributes
    ----------
    load_silo
        Reads the silo folder of the config.
    default_source
        The bundled frozen model when the config names none (a folder or a weights file).
    make_trainer
        The trainer of a built model on the silo.
    fingerprint_parts
        Settings of this modality that two compatible clients share.
    supports_dp_sgd
        Whether record-level DP-SGD is available.
    """

    load_silo: Callable[[ClientAgentConfig], Silo]
    default_source: Callable[[], Path]
    make_trainer: Callable[[registry.BuiltModel, Any, ClientAgentConfig], Trainer]
    fingerprint_parts: Callable[[ClientAgentConfig], dict[str, object]]
    supports_dp_sgd: bool


#: The modality-specific parts of a runtime, by modality.
MODALITIES: Mapping[Modality, ModalityIO] = {
    Modality.TEXT: ModalityIO(
        load_silo=lambda c: load_silo_dir(
            c.data_dir, text_column=c.text_column, label_column=c.label_column
        ),
        default_source=default_model_dir,
        make_trainer=_text_trainer,
        fingerprint_parts=lambda c: {"max_length": c.max_length},
        supports_dp_sgd=True,
    ),
    Modality.IMAGE: ModalityIO(
        load_silo=lambda c: load_image_silo_dir(c.data_dir),
        default_source=default_weights_path,
        make_trainer=_image_trainer,
        fingerprint_parts=lambda c: {"image_size": c.image_size},
        supports_dp_sgd=False,
    ),
}


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
        self._spec = strategy_spec(config.strategy)
        self.strategy = self._spec.name
        self.modality = detect_modality(config)
        self._dp_sgd = dp_sgd_requested(config)
        parts: dict[str, object] = {
            "modality": self.modality.value,
            "strategy": self.strategy.value,
        }
        source = self._build(config, parts)
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

    def _build(self, config: ClientAgentConfig, parts: dict[str, object]) -> Path:
        """Read the silo, build the strategy's model family for it and its trainer."""
        io = MODALITIES[self.modality]
        if self._dp_sgd and not io.supports_dp_sgd:
            supported = ", ".join(m.value for m, each in MODALITIES.items() if each.supports_dp_sgd)
            raise ValueError(f"record-level DP-SGD is available for {supported} silos only")
        silo = io.load_silo(config)
        self._set_silo(silo)
        source = Path(config.model_dir or io.default_source())
        build = registry.model_builder(self.modality, self._spec.family)
        built = build(
            registry.ModelRequest(
                source=source,
                num_labels=silo.num_labels,
                seed=config.seed,
                device=config.device.value,
                image_size=config.image_size,
                n_global=config.n_global,
                n_cluster=config.n_cluster,
                n_local=config.n_local,
                # DP-SGD silos keep their own copy: Opacus hooks the model it wraps
                share_backbone=not self._dp_sgd,
            )
        )
        parts.update(built.fingerprint_parts)
        parts.update(labels=list(silo.labels), **io.fingerprint_parts(config))
        self.model: registry.AdaptedModel = built.model
        self.trainer: Trainer = io.make_trainer(built, silo, config)
        return source

    def _set_silo(self, silo: Silo) -> None:
        self.silo_name = silo.name
        self.labels = silo.labels
        self.metadata: Mapping[str, object] = silo.metadata
        self._splits: dict[str, Any] = {"train": silo.train, "val": silo.val, "test": silo.test}

    # ------------------------------------------------------------------ LearningRuntime

    def shared_state(self) -> dict[str, np.ndarray]:
        """The travelling tensors; none when the strategy shares none (``local``)."""
        if not self._spec.shares_tensors:
            return {}
        return self.model.shared_state()

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Install the coordinator's tensors; the local segment is untouched."""
        if tensors:
            self.model.load_shared_state(tensors)

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Run the task's local steps (with the InfoNCE and proximal terms it asks for)."""
        extra = self.configure_training(settings)
        return self.training_metrics(self.trainer.train(extra_loss=extra))

    def configure_training(
        self, settings: TrainSettings
    ) -> Callable[[nn.Module], torch.Tensor] | None:
        """Apply a task's steps and learning rates to the trainer; return its extra loss.

        Called right before training, after the round-start model was loaded (evaluating it
        in between changes nothing): the proximal term copies θ₀ here.

        Parameters
        ----------
        settings : TrainSettings
            The TRAIN task's settings.

        Returns
        -------
        callable or None
            The InfoNCE term of the cluster segment plus FedProx's proximal term over the
            uploaded tensors, each when the task asks for it; None when it asks for neither.

        Raises
        ------
        ValueError
            If a setting is out of range, or the task uploads a tensor this model does not
            share (with μ > 0).
        """
        self.trainer.update_config(
            steps=settings.local_steps,
            batch_size=settings.batch_size,
            lr=settings.learning_rate,
            head_lr=settings.head_learning_rate,
        )
        info_nce = make_info_nce_loss(
            weight=settings.contrastive_weight,
            temperature=settings.contrastive_temperature,
            own=settings.cluster_id,
            centroids=settings.centroids,
        )
        uploaded = settings.uploaded_tensors
        if uploaded is None:
            uploaded = tuple(self.model.shared_tensors()) if self._spec.shares_tensors else ()
        proximal = make_proximal_loss(self.model, mu=settings.proximal_mu, names=uploaded)
        return sum_extra_losses(info_nce, proximal)

    def training_metrics(self, result: TrainResult) -> dict[str, float]:
        """The metrics a TRAIN task reports (and the DP-SGD accountant, saved), from its result.

        Parameters
        ----------
        result : TrainResult
            What the trainer did this round.

        Returns
        -------
        dict
            Loss, steps, examples seen, timings (and ε, δ of DP-SGD silos).
        """
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

    def evaluation_splits(self) -> list[str]:
        """The splits an evaluation measures: test, then val, each when not empty."""
        return [split for split in EVALUATED_SPLITS if len(self._splits[split]) > 0]

    def evaluation_metrics(self, results: Mapping[str, EvalResult]) -> dict[str, float]:
        """Report metrics from the results per split (``val`` ones prefixed ``val_``).

        Parameters
        ----------
        results : mapping
            ``EvalResult`` by split name.

        Returns
        -------
        dict
            ``accuracy``, ``macro_f1``, ``loss``, ``num_examples`` (test) and ``val_...``.
        """
        out: dict[str, float] = {}
        for split, r in results.items():
            prefix = EVALUATED_SPLITS[split]
            out.update(
                {
                    f"{prefix}accuracy": r.accuracy,
                    f"{prefix}macro_f1": r.macro_f1,
                    f"{prefix}loss": r.loss,
                    f"{prefix}num_examples": float(r.num_examples),
                }
            )
        return out

    def evaluate(self) -> dict[str, float]:
        """Accuracy, macro-F1 and loss on the held-out test split (and on val, prefixed)."""
        splits = self.evaluation_splits()
        return self.evaluation_metrics({split: self.trainer.evaluate(split) for split in splits})

    @contextlib.contextmanager
    def personal_copy(self, settings: PersonalizeSettings) -> Iterator[PersonalCopy]:
        """A copy of the model for a personalization pass, its trainer configured for it.

        Only the copy's local segment and head train (:mod:`~fedprompt_client_agent.training.
        personalization`); on exit the live model is as it was.

        Parameters
        ----------
        settings : PersonalizeSettings
            The EVALUATE task's pass.

        Yields
        ------
        PersonalCopy
            The copy; its trainer runs ``settings.steps`` steps at the task's batch size and
            learning rates.

        Raises
        ------
        ValueError
            If the trainer refuses a setting, or the model has nothing to personalize.
        """
        trainer = self.trainer
        if not isinstance(trainer, BaseTrainer):
            raise TypeError(f"{type(trainer).__name__} cannot run a personalization pass")
        with personal_copy(trainer) as personal:
            personal.trainer.update_config(
                steps=settings.steps,
                batch_size=settings.batch_size,
                lr=settings.learning_rate,
                head_lr=settings.head_learning_rate,
            )
            yield personal

    def personalization_metrics(
        self, result: TrainResult, evaluated: Mapping[str, EvalResult]
    ) -> dict[str, float]:
        """What a personalized evaluation reports: the copy's metrics and the pass's own.

        Parameters
        ----------
        result : TrainResult
            The pass.
        evaluated : mapping
            The copy's ``EvalResult`` by split, after the pass.

        Returns
        -------
        dict
            ``evaluation_metrics(evaluated)`` with ``personalize_steps``,
            ``personalize_loss`` (mean objective of the pass) and ``personalize_seconds``.
        """
        metrics = self.evaluation_metrics(evaluated)
        metrics.update(
            {
                "personalize_steps": float(result.steps),
                "personalize_loss": result.mean_loss,
                "personalize_seconds": result.seconds,
            }
        )
        return metrics

    def personalized_evaluate(self, settings: PersonalizeSettings) -> dict[str, float]:
        """Evaluate a copy of the model after a personalization pass of its local segment and head.

        The pass trains on the silo's training split, without Opacus also for a DP-SGD silo
        (its accountant and ε are untouched); nothing of it is kept or uploaded.

        Parameters
        ----------
        settings : PersonalizeSettings
            The EVALUATE task's pass.

        Returns
        -------
        dict
            The copy's metrics keyed as ``evaluate``'s, with the pass's
            (:meth:`personalization_metrics`).

        Raises
        ------
        ValueError
            If a setting is refused.
        FloatingPointError
            If the pass's objective becomes NaN or infinite.
        """
        with self.personal_copy(settings) as personal:
            result = personal.trainer.train()
            personal.restore_frozen()
            splits = self.evaluation_splits()
            evaluated = {
                split: personal.trainer.evaluate(cast(SplitName, split)) for split in splits
            }
        return self.personalization_metrics(result, evaluated)

    def save_personal(self) -> None:
        """Write the personal state atomically into the silo's state folder."""
        self.model.save_personal(self._personal_path)

"""Local training and evaluation of a ``VisualPromptClassifier`` on one image silo.

The image counterpart of :class:`~fedprompt_client_agent.trainer.LocalTrainer`,
with the same API and result types. Each split is converted once to a float
tensor at the model's inner image size (``spec.image_size``, 32x32 by default),
so a step costs one backbone pass on the prompted canvas. Training runs a fixed
number of AdamW steps over the rings (``lr``) and the head (``head_lr``),
cycling through seeded shuffles of the training set; the sampler position
carries over from one ``train`` call (one federated round) to the next.
``TrainConfig.max_length`` (a token budget) has no meaning here and is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)

from fedprompt_client_agent.trainer import (
    EvalResult,
    SplitName,
    TrainConfig,
    TrainResult,
    macro_f1,
)
from fedprompt_client_agent.vision_data import ImageSiloData
from fedprompt_client_agent.vision_model import VisualPromptClassifier, images_to_tensor

__all__ = ["VisionExtraLoss", "VisionTrainer"]

logger = logging.getLogger(__name__)

VisionExtraLoss = Callable[[VisualPromptClassifier], torch.Tensor]


class VisionTrainer:
    """Trains and evaluates a ``VisualPromptClassifier`` on one image silo's splits.

    Parameters
    ----------
    model : VisualPromptClassifier
        The model; only its rings and head are updated.
    silo : ImageSiloData
        The silo; its label set must match ``model.num_labels``.
    config : TrainConfig
        Hyper-parameters (``max_length`` is ignored).

    Raises
    ------
    ValueError
        If the label counts differ or the training split is empty.
    """

    def __init__(
        self, model: VisualPromptClassifier, silo: ImageSiloData, config: TrainConfig
    ) -> None:
        if silo.num_labels != model.num_labels:
            raise ValueError(
                f"silo {silo.name} has {silo.num_labels} labels, the model's head has {model.num_labels}"
            )
        if len(silo.train) == 0:
            raise ValueError(f"silo {silo.name} has no training examples")
        self.model = model
        self.silo = silo
        self.config = config
        size = model.spec.image_size
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in ("train", "val", "test"):
            split = silo.split(name)
            self._splits[name] = (
                images_to_tensor(split.images, size=size),
                torch.from_numpy(np.array(split.labels, dtype=np.int64)),
            )
        self._order_rng = np.random.default_rng(config.seed)
        self._queue: deque[int] = deque()
        self._calls = 0

    def update_config(self, **changes: object) -> TrainConfig:
        """Replace some hyper-parameters (e.g. per-round steps and learning rates), validated.

        Parameters
        ----------
        **changes
            ``TrainConfig`` fields and their new values.

        Returns
        -------
        TrainConfig
            The new configuration, also stored on the trainer.

        Raises
        ------
        pydantic.ValidationError
            If a field is unknown or a value is out of range.
        """
        config = TrainConfig.model_validate({**self.config.model_dump(), **changes})
        self.config = config
        return config

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Create a fresh AdamW with the prompt and head parameter groups.

        Returns
        -------
        torch.optim.Optimizer
            AdamW: the rings at ``lr``, the head at ``head_lr``.
        """
        groups = [
            {"params": self.model.prompt_parameters(), "lr": self.config.lr},
            {"params": self.model.head_parameters(), "lr": self.config.head_lr},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def train(
        self, *, steps: int | None = None, extra_loss: VisionExtraLoss | None = None
    ) -> TrainResult:
        """Run a fixed number of optimizer steps on the training split.

        A fresh AdamW is built for every call (one call per federated round, after
        the coordinator's tensors were loaded); the batch order continues where the
        previous call stopped. The backbone stays in eval mode throughout.

        Parameters
        ----------
        steps : int, optional
            Number of steps; defaults to ``config.steps``.
        extra_loss : callable, optional
            Called with the model at every step; its scalar result is added to
            the cross-entropy (e.g. the contrastive cluster-prompt term).

        Returns
        -------
        TrainResult
            Steps, examples seen, mean objective and timings.

        Raises
        ------
        ValueError
            If ``steps`` < 1.
        FloatingPointError
            If the objective becomes NaN or infinite.
        """
        n_steps = self.config.steps if steps is None else steps
        if n_steps < 1:
            raise ValueError(f"steps must be >= 1, got {n_steps}")
        batch_size = min(self.config.batch_size, len(self._splits["train"][1]))
        optimizer = self.build_optimizer()
        self.model.train()
        losses: list[float] = []
        step_times: list[float] = []
        started = time.perf_counter()
        with _seeded_torch_rng(self._next_call_seed(), self.model.device):
            for step in range(n_steps):
                step_start = time.perf_counter()
                losses.append(self._step(optimizer, batch_size, extra_loss, step=step))
                step_times.append(time.perf_counter() - step_start)
        seconds = time.perf_counter() - started
        result = TrainResult(
            steps=n_steps,
            examples_seen=n_steps * batch_size,
            mean_loss=float(np.mean(losses)),
            seconds=seconds,
            step_seconds_mean=float(np.mean(step_times)),
        )
        logger.info(
            "silo %s: %d steps, mean loss %.4f, %.3f s/step",
            self.silo.name,
            result.steps,
            result.mean_loss,
            result.step_seconds_mean,
        )
        return result

    def evaluate(self, split: SplitName = "val") -> EvalResult:
        """Measure accuracy, macro-F1 and loss on a split, without gradients.

        Parameters
        ----------
        split : {"train", "val", "test"}
            The split to evaluate.

        Returns
        -------
        EvalResult
            The metrics.

        Raises
        ------
        ValueError
            If the split is unknown or empty.
        """
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
        images, labels = self._splits[split]
        if len(labels) == 0:
            raise ValueError(f"silo {self.silo.name}: split {split!r} is empty")
        was_training = self.model.training
        self.model.eval()
        try:
            predictions, loss_sum = self._predict(images, labels)
        finally:
            self.model.train(was_training)
        targets = labels.numpy()
        return EvalResult(
            accuracy=float(np.mean(predictions == targets)),
            macro_f1=macro_f1(targets, predictions),
            loss=loss_sum / len(targets),
            num_examples=len(targets),
        )

    # ----------------------------------------------------------------- internals

    def _step(
        self,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        extra_loss: VisionExtraLoss | None,
        *,
        step: int,
    ) -> float:
        """One optimizer step on the next batch; returns the objective."""
        indices = torch.from_numpy(self._next_indices(batch_size))
        images, labels = self._splits["train"]
        device = self.model.device
        logits = self.model(images[indices].to(device))
        loss = F.cross_entropy(logits, labels[indices].to(device))
        if extra_loss is not None:
            loss = loss + extra_loss(self.model)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"silo {self.silo.name}: non-finite loss {value} at step {step}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return value

    def _predict(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, float]:
        """Predict a whole split in batches; returns predictions and summed loss."""
        predictions = np.empty(len(labels), dtype=np.int64)
        loss_sum = 0.0
        device = self.model.device
        with torch.no_grad():
            for start in range(0, len(labels), self.config.eval_batch_size):
                stop = start + self.config.eval_batch_size
                logits = self.model(images[start:stop].to(device))
                targets = labels[start:stop].to(device)
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                predictions[start:stop] = logits.argmax(dim=-1).cpu().numpy()
        return predictions, loss_sum

    def _next_indices(self, batch_size: int) -> np.ndarray:
        """Take the next training indices from an endless stream of seeded shuffles."""
        n = len(self._splits["train"][1])
        while len(self._queue) < batch_size:
            self._queue.extend(int(i) for i in self._order_rng.permutation(n))
        return np.array([self._queue.popleft() for _ in range(batch_size)], dtype=np.int64)

    def _next_call_seed(self) -> int:
        """Derive this call's torch seed from the config seed and a call counter."""
        self._calls += 1
        return self.config.seed * 1_000_003 + self._calls


@contextlib.contextmanager
def _seeded_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's RNG, seed the fork, and restore the caller's RNG state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

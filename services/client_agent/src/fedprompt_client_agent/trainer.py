"""Local training and evaluation of a ``PromptClassifier`` on one silo's data.

Each split is tokenised once (truncated, unpadded); batches are padded on the
right to their own longest text. Training runs a fixed number of AdamW steps
over the prompt table (``lr``) and the head (``head_lr``), cycling through
seeded shuffles of the training set; the sampler position carries over from
one ``train`` call (one federated round) to the next.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from pydantic import BaseModel, ConfigDict, Field

from fedprompt_client_agent.data import SiloData, TextExample
from fedprompt_client_agent.model import PromptClassifier, Tokenizer

__all__ = [
    "EvalResult",
    "ExtraLoss",
    "LocalTrainer",
    "SplitName",
    "TrainConfig",
    "TrainResult",
    "macro_f1",
]

logger = logging.getLogger(__name__)

SplitName = Literal["train", "val", "test"]
ExtraLoss = Callable[[PromptClassifier], torch.Tensor]


class TrainConfig(BaseModel):
    """Hyper-parameters of local training.

    Attributes
    ----------
    steps : int
        Optimizer steps per ``train`` call (one federated round).
    batch_size : int
        Training examples per step (capped at the training-set size).
    lr : float
        AdamW learning rate of the prompt table.
    head_lr : float
        AdamW learning rate of the classification head.
    max_length : int
        Token budget per text (the prompt comes on top); longer texts are truncated.
    seed : int
        Seed of the batch order and of dropout.
    weight_decay : float
        AdamW weight decay, for prompt and head alike.
    eval_batch_size : int
        Examples per forward pass in ``evaluate``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(ge=1, description="optimizer steps per train() call")
    batch_size: int = Field(default=16, ge=1, description="training examples per step")
    lr: float = Field(default=3e-2, gt=0, description="AdamW learning rate of the prompt")
    head_lr: float = Field(default=3e-3, gt=0, description="AdamW learning rate of the head")
    max_length: int = Field(default=128, ge=2, description="max tokens per text, prompt excluded")
    seed: int = Field(default=0, ge=0, description="seed of batch order and dropout")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay")
    eval_batch_size: int = Field(default=64, ge=1, description="examples per evaluation batch")


@dataclass(frozen=True)
class TrainResult:
    """What one ``train`` call did.

    Attributes
    ----------
    steps : int
        Optimizer steps taken.
    examples_seen : int
        Training examples processed (with repetition across epochs).
    mean_loss : float
        Mean training objective over the steps (cross-entropy, plus the extra
        loss when one was given).
    seconds : float
        Wall-clock time of the whole call.
    step_seconds_mean : float
        Mean wall-clock time of one step.
    """

    steps: int
    examples_seen: int
    mean_loss: float
    seconds: float
    step_seconds_mean: float


@dataclass(frozen=True)
class EvalResult:
    """Metrics of the model on one split.

    Attributes
    ----------
    accuracy : float
        Fraction of correct predictions.
    macro_f1 : float
        Unweighted mean F1 over the labels present in the targets or predictions.
    loss : float
        Mean cross-entropy.
    num_examples : int
        Size of the split.
    """

    accuracy: float
    macro_f1: float
    loss: float
    num_examples: int


@dataclass(frozen=True)
class _EncodedSplit:
    """A tokenised split: unpadded token ids and label ids."""

    input_ids: tuple[tuple[int, ...], ...]
    labels: np.ndarray

    def __len__(self) -> int:
        """Number of examples in the split."""
        return len(self.input_ids)


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Compute the macro-averaged F1 score with numpy.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        Target and predicted class ids, same length.

    Returns
    -------
    float
        Mean of per-class F1 over the classes that occur in ``y_true`` or
        ``y_pred`` (scikit-learn's default label set); a class that is
        predicted but never true, or true but never predicted, scores 0.
        Returns ``nan`` for empty inputs.
    """
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {true.shape} vs {pred.shape}")
    if true.size == 0:
        return math.nan
    scores = []
    for label in np.union1d(true, pred):
        tp = int(np.sum((true == label) & (pred == label)))
        fp = int(np.sum((true != label) & (pred == label)))
        fn = int(np.sum((true == label) & (pred != label)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


class LocalTrainer:
    """Trains and evaluates a ``PromptClassifier`` on one silo's splits.

    Parameters
    ----------
    model : PromptClassifier
        The model; only its prompt table and head are updated.
    tokenizer : transformers tokenizer
        The backbone's tokenizer (from ``load_backbone``).
    silo : SiloData
        The silo; its label set must match ``model.num_labels``.
    config : TrainConfig
        Hyper-parameters.

    Raises
    ------
    ValueError
        If the label counts differ or the training split is empty.
    """

    def __init__(
        self, model: PromptClassifier, tokenizer: Tokenizer, silo: SiloData, config: TrainConfig
    ) -> None:
        if silo.num_labels != model.num_labels:
            raise ValueError(
                f"silo {silo.name} has {silo.num_labels} labels, the model's head has {model.num_labels}"
            )
        if not silo.train:
            raise ValueError(f"silo {silo.name} has no training examples")
        self.model = model
        self.silo = silo
        self.config = config
        self.max_length = _effective_max_length(config.max_length, model.max_text_tokens)
        self._pad_id = int(tokenizer.pad_token_id)
        self._splits = {
            name: _encode(tokenizer, silo.split(name), max_length=self.max_length)
            for name in ("train", "val", "test")
        }
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
        ValueError
            If ``max_length`` changes: the splits are tokenised once, at construction.
        """
        config = TrainConfig.model_validate({**self.config.model_dump(), **changes})
        if config.max_length != self.config.max_length:
            raise ValueError("max_length is fixed when the trainer is built; create a new trainer")
        self.config = config
        return config

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Create a fresh AdamW with the prompt and head parameter groups.

        Returns
        -------
        torch.optim.Optimizer
            AdamW: the prompt table at ``lr``, the head at ``head_lr``.
        """
        groups = [
            {"params": self.model.prompt_parameters(), "lr": self.config.lr},
            {"params": self.model.head_parameters(), "lr": self.config.head_lr},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def train(
        self, *, steps: int | None = None, extra_loss: ExtraLoss | None = None
    ) -> TrainResult:
        """Run a fixed number of optimizer steps on the training split.

        A fresh AdamW is built for every call (one call per federated round, after
        the coordinator's tensors were loaded); the batch order continues where the
        previous call stopped. Dropout is seeded per call from ``config.seed``.

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
        batch_size = min(self.config.batch_size, len(self._splits["train"]))
        optimizer = self.build_optimizer()
        self.model.train()
        losses: list[float] = []
        step_times: list[float] = []
        started = time.perf_counter()
        with _seeded_torch_rng(self._next_dropout_seed(), self.model.device):
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
        encoded = self._splits[split]
        if len(encoded) == 0:
            raise ValueError(f"silo {self.silo.name}: split {split!r} is empty")
        was_training = self.model.training
        self.model.eval()
        try:
            predictions, loss_sum = self._predict(encoded)
        finally:
            self.model.train(was_training)
        return EvalResult(
            accuracy=float(np.mean(predictions == encoded.labels)),
            macro_f1=macro_f1(encoded.labels, predictions),
            loss=loss_sum / len(encoded),
            num_examples=len(encoded),
        )

    # ----------------------------------------------------------------- internals

    def _step(
        self,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        extra_loss: ExtraLoss | None,
        *,
        step: int,
    ) -> float:
        """One optimizer step on the next batch; returns the objective."""
        indices = self._next_indices(batch_size)
        input_ids, mask, labels = self._collate(self._splits["train"], indices)
        logits = self.model(input_ids, mask)
        loss = F.cross_entropy(logits, labels)
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

    def _predict(self, encoded: _EncodedSplit) -> tuple[np.ndarray, float]:
        """Predict a whole split in length-sorted batches; returns predictions and summed loss."""
        order = np.argsort([len(ids) for ids in encoded.input_ids], kind="stable")
        predictions = np.empty(len(encoded), dtype=np.int64)
        loss_sum = 0.0
        with torch.no_grad():
            for start in range(0, len(order), self.config.eval_batch_size):
                chunk = order[start : start + self.config.eval_batch_size]
                input_ids, mask, labels = self._collate(encoded, chunk)
                logits = self.model(input_ids, mask)
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                predictions[chunk] = logits.argmax(dim=-1).cpu().numpy()
        return predictions, loss_sum

    def _next_indices(self, batch_size: int) -> np.ndarray:
        """Take the next training indices from an endless stream of seeded shuffles."""
        n = len(self._splits["train"])
        while len(self._queue) < batch_size:
            self._queue.extend(int(i) for i in self._order_rng.permutation(n))
        return np.array([self._queue.popleft() for _ in range(batch_size)], dtype=np.int64)

    def _collate(
        self, encoded: _EncodedSplit, indices: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad the selected texts to the longest one and move them to the model's device."""
        rows = [encoded.input_ids[i] for i in indices]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        labels = torch.from_numpy(encoded.labels[indices])
        device = self.model.device
        return ids.to(device), mask.to(device), labels.to(device)

    def _next_dropout_seed(self) -> int:
        """Derive this call's dropout seed from the config seed and a call counter."""
        self._calls += 1
        return self.config.seed * 1_000_003 + self._calls


@contextlib.contextmanager
def _seeded_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's RNG, seed the fork, and restore the caller's RNG state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _effective_max_length(requested: int, model_limit: int | None) -> int:
    """Cap the text length so that prompt plus text fit the backbone's positions."""
    if model_limit is None or requested <= model_limit:
        return requested
    if model_limit < 2:
        raise ValueError(f"the prompt leaves only {model_limit} positions for text")
    logger.warning(
        "max_length %d exceeds what fits next to the prompt; using %d", requested, model_limit
    )
    return model_limit


def _encode(
    tokenizer: Tokenizer, examples: Sequence[TextExample], *, max_length: int
) -> _EncodedSplit:
    """Tokenise a split once: truncated, unpadded ids plus the label array."""
    if not examples:
        return _EncodedSplit(input_ids=(), labels=np.zeros(0, dtype=np.int64))
    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length)
    return _EncodedSplit(
        input_ids=tuple(tuple(int(t) for t in ids) for ids in encoded["input_ids"]),
        labels=np.array([ex.label for ex in examples], dtype=np.int64),
    )

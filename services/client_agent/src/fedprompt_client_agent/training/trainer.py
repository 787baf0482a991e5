"""Local training and evaluation of an adapted model on one silo's data.

``BaseTrainer`` owns the loop that every modality shares: a fixed number of AdamW
steps over the model's two parameter groups (``prompt_parameters`` at ``lr``,
``head_parameters`` at ``head_lr``), cycling through seeded shuffles of the training
set (the sampler position carries over from one ``train`` call, one federated round,
to the next), an optional extra loss, the non-finite check, and evaluation with
accuracy, macro-F1 and loss. Subclasses only prepare the splits and build batches.

``LocalTrainer`` is the text trainer: each split is tokenised once (truncated,
unpadded); batches are padded on the right to their own longest text. Any model with
the ``TextModel`` API trains with it (soft prompt, LoRA, full fine-tuning).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from pydantic import BaseModel, ConfigDict, Field

from fedprompt_client_agent.data.silo_files import SPLIT_NAMES
from fedprompt_client_agent.data.text_silos import SiloData, TextExample
from fedprompt_client_agent.models.backbone import Tokenizer

__all__ = [
    "BaseTrainer",
    "EvalResult",
    "ExtraLoss",
    "LocalTrainer",
    "SplitName",
    "TextModel",
    "TrainConfig",
    "TrainResult",
    "TrainableModel",
    "evaluation_result",
    "macro_f1",
    "seeded_torch_rng",
    "sum_extra_losses",
]

logger = logging.getLogger(__name__)

SplitName = Literal["train", "val", "test"]


class TrainableModel(Protocol):
    """What a trainer needs from a model: two parameter groups, a device and a forward.

    ``PromptClassifier``, ``VisualPromptClassifier``, ``LoraClassifier`` and
    ``FullFinetuneClassifier`` all have it.
    """

    @property
    def num_labels(self) -> int:
        """Number of classes of the head."""
        ...

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        ...

    @property
    def training(self) -> bool:
        """Whether the model is in training mode."""
        ...

    def train(self, mode: bool = True) -> object:
        """Set training (True) or evaluation (False) mode."""
        ...

    def eval(self) -> object:
        """Set evaluation mode."""
        ...

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the adapted parameters (the ``lr`` group)."""
        ...

    def head_parameters(self) -> list[torch.Tensor]:
        """Return the head parameters (the ``head_lr`` group)."""
        ...

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Return ``[batch, num_labels]`` logits."""
        ...


class TextModel(TrainableModel, Protocol):
    """A model over right-padded token ids: ``model(input_ids, attention_mask)``."""

    @property
    def max_text_tokens(self) -> int | None:
        """Longest tokenised text the model takes (``None``: no limit)."""
        ...


class _Silo(Protocol):
    """What ``BaseTrainer`` reads from a text or image silo."""

    @property
    def name(self) -> str:
        """Silo name, for messages."""
        ...

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        ...

    @property
    def train(self) -> Sized:
        """The training split."""
        ...


ModelT = TypeVar("ModelT", bound=TrainableModel)
_M = TypeVar("_M")
ExtraLoss = Callable[[TextModel], torch.Tensor]


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


class BaseTrainer(abc.ABC, Generic[ModelT]):
    """The training and evaluation loop shared by the text and image trainers.

    Subclasses prepare their splits after calling ``__init__`` and implement
    ``_split_size`` and ``_batch`` (and optionally ``_eval_order``).

    Parameters
    ----------
    model : TrainableModel
        The model; only its ``prompt_parameters`` and ``head_parameters`` are updated.
    silo : text or image silo
        The silo; its label set must match ``model.num_labels``.
    config : TrainConfig
        Hyper-parameters.

    Raises
    ------
    ValueError
        If the label counts differ or the training split is empty.
    """

    def __init__(self, model: ModelT, silo: _Silo, config: TrainConfig) -> None:
        if silo.num_labels != model.num_labels:
            raise ValueError(
                f"silo {silo.name} has {silo.num_labels} labels, the model's head has {model.num_labels}"
            )
        if len(silo.train) == 0:
            raise ValueError(f"silo {silo.name} has no training examples")
        self.model = model
        self.silo = silo
        self.config = config
        self._order_rng = np.random.default_rng(config.seed)
        self._queue: deque[int] = deque()
        self._calls = 0

    @property
    def num_train_examples(self) -> int:
        """N, the number of training examples."""
        return self._split_size("train")

    def twin(self, model: ModelT) -> BaseTrainer[ModelT]:
        """A plain trainer of another model (e.g. a copy of this one's) on the same splits.

        The twin reads the splits this trainer prepared (never copied: they do not change
        once built), has this trainer's configuration and a copy of its batch order, and
        trains with the plain AdamW loop whatever this trainer is (a DP-SGD trainer's twin
        has no Opacus, no accountant). Training or evaluating the twin changes nothing of
        this trainer: not its model, not its batch order, not its call counter.

        Parameters
        ----------
        model : TrainableModel
            The twin's model; its label count must be the silo's.

        Returns
        -------
        BaseTrainer
            The twin.

        Raises
        ------
        TypeError
            If this kind of trainer has no twin.
        """
        raise TypeError(f"{type(self).__name__} has no twin")

    def _start_twin(self, twin: BaseTrainer[ModelT], model: ModelT) -> None:
        """Initialise ``twin`` over ``model`` with this trainer's config and a copy of its order."""
        BaseTrainer.__init__(twin, model, self.silo, self.config)
        twin._order_rng = copy.deepcopy(self._order_rng)
        twin._queue = deque(self._queue)
        twin._calls = self._calls

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
            If the trainer cannot take the change (see ``_check_config_change``).
        """
        config = TrainConfig.model_validate({**self.config.model_dump(), **changes})
        self._check_config_change(config)
        self.config = config
        return config

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Create a fresh AdamW with the prompt and head parameter groups.

        Returns
        -------
        torch.optim.Optimizer
            AdamW: ``prompt_parameters`` at ``lr``, ``head_parameters`` at ``head_lr``.
        """
        groups = [
            {"params": self.model.prompt_parameters(), "lr": self.config.lr},
            {"params": self.model.head_parameters(), "lr": self.config.head_lr},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def train(
        self,
        *,
        steps: int | None = None,
        extra_loss: Callable[[ModelT], torch.Tensor] | None = None,
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
        batch_size = self.training_batch_size
        optimizer = self.build_optimizer()
        self.model.train()
        losses: list[float] = []
        step_times: list[float] = []
        started = time.perf_counter()
        with seeded_torch_rng(self.next_dropout_seed(), self.model.device):
            for step in range(n_steps):
                step_start = time.perf_counter()
                losses.append(self._step(optimizer, batch_size, extra_loss, step=step))
                step_times.append(time.perf_counter() - step_start)
        return self.training_result(losses, step_times, seconds=time.perf_counter() - started)

    @property
    def training_batch_size(self) -> int:
        """Examples per training step: ``config.batch_size``, capped at the training-set size."""
        return min(self.config.batch_size, self.num_train_examples)

    def training_result(
        self, losses: Sequence[float], step_times: Sequence[float], *, seconds: float
    ) -> TrainResult:
        """Summarise (and log) a ``train`` call from its per-step objectives and times.

        Parameters
        ----------
        losses : sequence of float
            The objective of every step taken.
        step_times : sequence of float
            Wall-clock seconds of every step.
        seconds : float
            Wall-clock seconds of the whole call.

        Returns
        -------
        TrainResult
            Steps, examples seen, mean objective and timings.
        """
        result = TrainResult(
            steps=len(losses),
            examples_seen=len(losses) * self.training_batch_size,
            mean_loss=float(np.mean(losses)),
            seconds=seconds,
            step_seconds_mean=float(np.mean(step_times)),
        )
        logging.getLogger(type(self).__module__).info(
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
        self.evaluation_order(split)  # refuses an unknown or empty split
        was_training = self.model.training
        self.model.eval()
        try:
            predictions, targets, loss_sum = self._predict(split)
        finally:
            self.model.train(was_training)
        return evaluation_result(predictions, targets, loss_sum)

    def evaluation_order(self, split: SplitName) -> np.ndarray:
        """The order in which ``evaluate`` batches a split (length-sorted for text).

        Parameters
        ----------
        split : {"train", "val", "test"}
            The split.

        Returns
        -------
        numpy.ndarray
            int64 positions in the split.

        Raises
        ------
        ValueError
            If the split is unknown or empty.
        """
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
        if self._split_size(split) == 0:
            raise ValueError(f"silo {self.silo.name}: split {split!r} is empty")
        return self._eval_order(split)

    def example_lengths(self, split: SplitName) -> np.ndarray:
        """The padded width each example of a split needs (all zero: examples of one size).

        Parameters
        ----------
        split : {"train", "val", "test"}
            The split.

        Returns
        -------
        numpy.ndarray
            int64, one per example, in the split's order.
        """
        return np.zeros(self._split_size(split), dtype=np.int64)

    def split_batch(
        self, split: SplitName, indices: np.ndarray
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Build the model inputs and labels of some examples of a split, on the model's device.

        Parameters
        ----------
        split : {"train", "val", "test"}
            The split.
        indices : numpy.ndarray
            int64 positions in the split.

        Returns
        -------
        tuple
            ``(inputs, labels)``: the model is called as ``model(*inputs)``.
        """
        return self._batch(split, indices)

    def training_batch(self, indices: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Build the model inputs and labels of some training examples, on the model's device.

        Parameters
        ----------
        indices : numpy.ndarray
            int64 positions in the training split.

        Returns
        -------
        tuple
            ``(inputs, labels)``: the model is called as ``model(*inputs)``.
        """
        return self._batch("train", indices)

    def next_dropout_seed(self) -> int:
        """Derive the next ``train`` call's torch seed from the config seed and a call counter.

        Returns
        -------
        int
            ``config.seed * 1_000_003 + calls``.
        """
        self._calls += 1
        return self.config.seed * 1_000_003 + self._calls

    def check_finite_loss(self, value: float, *, step: int) -> None:
        """Raise ``FloatingPointError`` for a NaN or infinite objective.

        Parameters
        ----------
        value : float
            The objective.
        step : int
            The step, for the message.

        Raises
        ------
        FloatingPointError
            If ``value`` is NaN or infinite.
        """
        if not math.isfinite(value):
            raise FloatingPointError(
                f"silo {self.silo.name}: non-finite loss {value} at step {step}"
            )

    # ----------------------------------------------------------------- subclass hooks

    @abc.abstractmethod
    def _split_size(self, split: str) -> int:
        """Number of examples in a split."""

    @abc.abstractmethod
    def _batch(
        self, split: str, indices: np.ndarray
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Model inputs and labels of the given examples of a split, on the model's device."""

    def _eval_order(self, split: str) -> np.ndarray:
        """Order in which ``evaluate`` batches a split (default: as stored)."""
        return np.arange(self._split_size(split), dtype=np.int64)

    def _check_config_change(self, config: TrainConfig) -> None:
        """Reject a new configuration the trainer cannot take (default: accept all)."""

    # ----------------------------------------------------------------- internals

    def _step(
        self,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        extra_loss: Callable[[ModelT], torch.Tensor] | None,
        *,
        step: int,
    ) -> float:
        """One optimizer step on the next batch; returns the objective."""
        inputs, labels = self.training_batch(self.next_training_indices(batch_size))
        logits = self.model(*inputs)
        loss = F.cross_entropy(logits, labels)
        if extra_loss is not None:
            loss = loss + extra_loss(self.model)
        value = float(loss.detach())
        self.check_finite_loss(value, step=step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return value

    def _predict(self, split: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Predict a whole split in batches; returns predictions, targets and summed loss."""
        order = self._eval_order(split)
        predictions = np.empty(len(order), dtype=np.int64)
        targets = np.empty(len(order), dtype=np.int64)
        loss_sum = 0.0
        with torch.no_grad():
            for start in range(0, len(order), self.config.eval_batch_size):
                chunk = order[start : start + self.config.eval_batch_size]
                inputs, labels = self._batch(split, chunk)
                logits = self.model(*inputs)
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                predictions[chunk] = logits.argmax(dim=-1).cpu().numpy()
                targets[chunk] = labels.cpu().numpy()
        return predictions, targets, loss_sum

    def next_training_indices(self, batch_size: int) -> np.ndarray:
        """Take the next training indices from an endless stream of seeded shuffles.

        Parameters
        ----------
        batch_size : int
            How many indices.

        Returns
        -------
        numpy.ndarray
            int64 positions in the training split.
        """
        n = self.num_train_examples
        while len(self._queue) < batch_size:
            self._queue.extend(int(i) for i in self._order_rng.permutation(n))
        return np.array([self._queue.popleft() for _ in range(batch_size)], dtype=np.int64)


class LocalTrainer(BaseTrainer[TextModel]):
    """Trains and evaluates a text model on one silo's splits.

    Parameters
    ----------
    model : TextModel
        The model (``PromptClassifier``, ``LoraClassifier``, ``FullFinetuneClassifier``);
        only its prompt (or adapter) parameters and head are updated.
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
        self, model: TextModel, tokenizer: Tokenizer, silo: SiloData, config: TrainConfig
    ) -> None:
        super().__init__(model, silo, config)
        self.max_length = _effective_max_length(config.max_length, model.max_text_tokens)
        self._pad_id = int(tokenizer.pad_token_id)
        self._splits = {
            name: _encode(tokenizer, silo.split(name), max_length=self.max_length)
            for name in SPLIT_NAMES
        }

    def twin(self, model: TextModel) -> LocalTrainer:
        """A plain ``LocalTrainer`` of ``model`` on this trainer's tokenised splits.

        See :meth:`BaseTrainer.twin`; a ``DPLocalTrainer``'s twin is a plain ``LocalTrainer``.

        Parameters
        ----------
        model : TextModel
            The twin's model.

        Returns
        -------
        LocalTrainer
            The twin (no text is tokenised again).
        """
        twin = LocalTrainer.__new__(LocalTrainer)
        self._start_twin(twin, model)
        twin.max_length = self.max_length
        twin._pad_id = self._pad_id
        twin._splits = self._splits
        return twin

    # ----------------------------------------------------------------- hooks

    def _check_config_change(self, config: TrainConfig) -> None:
        """Refuse a new ``max_length``: the splits are tokenised once, at construction."""
        if config.max_length != self.config.max_length:
            raise ValueError("max_length is fixed when the trainer is built; create a new trainer")

    def _split_size(self, split: str) -> int:
        """Number of texts in a split."""
        return len(self._splits[split])

    def example_lengths(self, split: SplitName) -> np.ndarray:
        """Tokens of every text of a split (after truncation, prompt excluded).

        Parameters
        ----------
        split : {"train", "val", "test"}
            The split.

        Returns
        -------
        numpy.ndarray
            int64 lengths, in the split's order.
        """
        return np.array([len(ids) for ids in self._splits[split].input_ids], dtype=np.int64)

    def _eval_order(self, split: str) -> np.ndarray:
        """Length-sorted order, so that evaluation batches pad little."""
        encoded = self._splits[split]
        return np.argsort([len(ids) for ids in encoded.input_ids], kind="stable")

    def _batch(
        self, split: str, indices: np.ndarray
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Right-pad the selected texts to the longest one and move them to the model's device."""
        encoded = self._splits[split]
        rows = [encoded.input_ids[i] for i in indices]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        labels = torch.from_numpy(encoded.labels[indices])
        device = self.model.device
        return (ids.to(device), mask.to(device)), labels.to(device)


def evaluation_result(predictions: np.ndarray, targets: np.ndarray, loss_sum: float) -> EvalResult:
    """Metrics of a split from its predictions, targets and summed cross-entropy.

    Parameters
    ----------
    predictions, targets : numpy.ndarray
        int64 labels, one per example (at least one).
    loss_sum : float
        Summed cross-entropy over the examples.

    Returns
    -------
    EvalResult
        Accuracy, macro-F1, mean loss and size.
    """
    return EvalResult(
        accuracy=float(np.mean(predictions == targets)),
        macro_f1=macro_f1(targets, predictions),
        loss=loss_sum / len(targets),
        num_examples=len(targets),
    )


def sum_extra_losses(
    *terms: Callable[[_M], torch.Tensor] | None,
) -> Callable[[_M], torch.Tensor] | None:
    """One ``extra_loss`` that adds the terms that are switched on (None: no term is).

    A single term is returned as it is, so that switching the others off changes nothing,
    bit for bit.

    Parameters
    ----------
    *terms : callable or None
        Extra losses of one model (e.g. the InfoNCE and the proximal term); None: off.

    Returns
    -------
    callable or None
        Their sum, called with the model; None when every term is off.
    """
    active = [term for term in terms if term is not None]
    if len(active) <= 1:
        return active[0] if active else None

    def total(model: _M) -> torch.Tensor:
        value = active[0](model)
        for term in active[1:]:
            value = value + term(model)
        return value

    return total


@contextlib.contextmanager
def seeded_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's RNG, seed the fork, and restore the caller's RNG state afterwards.

    Parameters
    ----------
    seed : int
        Seed of the forked RNG.
    device : torch.device
        The model's device; a CUDA device's RNG is forked too.

    Yields
    ------
    None
        Inside, torch draws from the seeded fork.
    """
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

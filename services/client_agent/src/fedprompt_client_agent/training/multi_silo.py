"""Training and evaluating several hosted silos in one forward/backward pass.

Agents hosted in one process (``fedprompt_client_agent.host``) that train a soft prompt on
one shared frozen backbone differ only in their prompt rows, their head and their data.
:func:`train_together` runs their open training tasks as one loop: at every step each silo
draws its next batch from its own seeded order, the batches go through the backbone as one
concatenated pass (:data:`SHARED_PASSES`: the text soft prompt's and the visual prompt's), each
silo's loss is the cross-entropy of its own examples (plus its own extra loss), and the sum
of the losses is back-propagated once. A silo's prompt and head receive only the gradient of
its own loss, and each silo keeps its own AdamW, so the result equals
:meth:`LocalTrainer.train <fedprompt_client_agent.training.trainer.BaseTrainer.train>` on
each silo alone, up to float rounding (the tests compare the two). :func:`evaluate_together`
batches evaluation the same way.

Which trainers may join (:func:`batch_key`): a plain :class:`LocalTrainer` or
:class:`VisionTrainer` whose model has a shared pass (:data:`SHARED_PASSES`: the text soft
prompt and the visual prompt) on the process's shared backbone. LoRA and full fine-tuning
change the backbone's weights per silo, so there is no shared pass to make; DP-SGD needs
per-sample gradients of one silo's batch and its own accountant (Opacus' hooks), so its silos
keep the sequential path.

A pass holds at most ``max_pass_examples`` examples; a step with more silos makes several
passes (each silo's batch stays whole in one pass) before every optimizer steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from torch import nn

from fedprompt_client_agent.models.text_prompt import PromptClassifier, forward_many
from fedprompt_client_agent.models.visual_prompt import (
    VisualPromptClassifier,
    forward_many_visual,
)
from fedprompt_client_agent.training.trainer import (
    BaseTrainer,
    EvalResult,
    LocalTrainer,
    SplitName,
    TrainResult,
    evaluation_result,
    seeded_torch_rng,
)
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

__all__ = [
    "DEFAULT_MAX_PASS_EXAMPLES",
    "SHARED_PASSES",
    "TrainJob",
    "batch_key",
    "evaluate_together",
    "train_together",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Examples per backbone pass: bounds the activation memory of a step (8 silos of 16, about
#: 1.5 GiB for MiniLM at 80 tokens); larger passes gain little more on a CPU.
DEFAULT_MAX_PASS_EXAMPLES = 128


SharedPass = Callable[..., list[torch.Tensor]]

#: The one-pass forward of each model class that has one: several models (one per batch,
#: sharing a backbone) and their batches' inputs in, one logits tensor per batch out.
SHARED_PASSES: dict[type[nn.Module], SharedPass] = {
    PromptClassifier: forward_many,
    VisualPromptClassifier: forward_many_visual,
}

#: Trainers whose loop ``train_together`` reproduces (exact types: DP-SGD's subclass is not).
_PLAIN_TRAINERS: frozenset[type] = frozenset({LocalTrainer, VisionTrainer})


def batch_key(trainer: object) -> Hashable | None:
    """What trainers must share to train in one pass, or None if this one must train alone.

    Parameters
    ----------
    trainer : object
        A silo's trainer.

    Returns
    -------
    Hashable or None
        ``(model class, backbone identity, model spec, device)`` for a plain text or image
        trainer whose model has a shared pass; None for any other (DP-SGD, LoRA, full).
    """
    if type(trainer) not in _PLAIN_TRAINERS:
        return None
    model: Any = getattr(trainer, "model", None)
    if type(model) not in SHARED_PASSES:
        return None
    return (type(model), id(model.backbone), model.spec, str(model.device))


@dataclass(eq=False)
class TrainJob:
    """One silo's open training task.

    Attributes
    ----------
    trainer : LocalTrainer
        The silo's trainer, already configured for this round (``update_config``).
    extra_loss : callable, optional
        Added to the silo's cross-entropy at every step (the InfoNCE term, FedProx's
        proximal term over the silo's own shared tensors).
    """

    trainer: BaseTrainer[Any]
    extra_loss: Callable[[Any], torch.Tensor] | None = None
    _optimizer: torch.optim.Optimizer | None = field(default=None, init=False, repr=False)
    _losses: list[float] = field(default_factory=list, init=False, repr=False)
    _step_times: list[float] = field(default_factory=list, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> Any:
        """The silo's model."""
        return self.trainer.model

    @property
    def steps(self) -> int:
        """Optimizer steps of this task."""
        return self.trainer.config.steps


def train_together(
    jobs: Sequence[TrainJob], *, max_pass_examples: int = DEFAULT_MAX_PASS_EXAMPLES
) -> list[TrainResult | BaseException]:
    """Run several silos' training tasks as one loop of shared backbone passes.

    Parameters
    ----------
    jobs : sequence of TrainJob
        Tasks whose trainers share one :func:`batch_key`.
    max_pass_examples : int
        Most examples in one backbone pass.

    Returns
    -------
    list
        Per job, its ``TrainResult``, or the exception that ended it (e.g.
        ``FloatingPointError`` for a non-finite objective); the other jobs go on.

    Raises
    ------
    ValueError
        If the jobs do not share one batch key or ``max_pass_examples`` < 1.
    """
    _check_group([job.trainer for job in jobs], max_pass_examples)
    if not jobs:
        return []
    started = time.perf_counter()
    for job in jobs:
        job.trainer.next_dropout_seed()  # keeps the call counter of the sequential path
        job._optimizer = job.trainer.build_optimizer()
        job.model.train()
    device = jobs[0].model.device
    with seeded_torch_rng(jobs[0].trainer.config.seed, device):
        for step in range(max(job.steps for job in jobs)):
            active = [job for job in jobs if job._error is None and step < job.steps]
            if not active:
                break
            step_start = time.perf_counter()
            _train_step(active, step=step, max_pass_examples=max_pass_examples)
            elapsed = time.perf_counter() - step_start
            for job in active:
                job._step_times.append(elapsed)
    seconds = time.perf_counter() - started
    results: list[TrainResult | BaseException] = []
    for job in jobs:
        if job._error is not None:
            results.append(job._error)
        else:
            results.append(
                job.trainer.training_result(job._losses, job._step_times, seconds=seconds)
            )
        job._optimizer = None
    logger.info("trained %d silos together in %.2f s", len(jobs), seconds)
    return results


def evaluate_together(
    requests: Sequence[tuple[BaseTrainer[Any], SplitName]],
    *,
    max_pass_examples: int = 2 * DEFAULT_MAX_PASS_EXAMPLES,
) -> list[EvalResult | BaseException]:
    """Evaluate several silos' splits in shared backbone passes, without gradients.

    Parameters
    ----------
    requests : sequence of (trainer, split)
        Trainers that share one :func:`batch_key`; a trainer may appear once per split.
    max_pass_examples : int
        Most examples in one backbone pass.

    Returns
    -------
    list
        Per request, its ``EvalResult`` (equal to ``trainer.evaluate(split)`` up to float
        rounding), or the exception of an unknown or empty split.

    Raises
    ------
    ValueError
        If the trainers do not share one batch key or ``max_pass_examples`` < 1.
    """
    trainers = [trainer for trainer, _ in requests]
    _check_group(trainers, max_pass_examples)
    results: list[EvalResult | BaseException | None] = [None] * len(requests)
    sizes: dict[int, int] = {}
    entries: list[tuple[int, int, int]] = []  # (tokens, request, position in its split)
    for r, (trainer, split) in enumerate(requests):
        try:
            order = trainer.evaluation_order(split)
        except ValueError as exc:
            results[r] = exc
            continue
        sizes[r] = len(order)
        lengths = trainer.example_lengths(split)
        entries.extend((int(lengths[i]), r, int(i)) for i in order)
    entries.sort()  # every pass holds texts of similar length: little padding
    predictions = {r: np.empty(n, dtype=np.int64) for r, n in sizes.items()}
    targets = {r: np.empty(n, dtype=np.int64) for r, n in sizes.items()}
    loss_sums = dict.fromkeys(sizes, 0.0)
    was_training = {id(t): t.model.training for t in trainers}
    for trainer in trainers:
        trainer.model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(entries), max_pass_examples):
                by_request: dict[int, list[int]] = {}
                for _, r, position in entries[start : start + max_pass_examples]:
                    by_request.setdefault(r, []).append(position)
                picks = [(r, np.array(p, dtype=np.int64)) for r, p in by_request.items()]
                batches = [requests[r][0].split_batch(requests[r][1], p) for r, p in picks]
                logits = _shared_pass(
                    [requests[r][0].model for r, _ in picks], [inputs for inputs, _ in batches]
                )
                for (r, positions), (_, labels), out in zip(picks, batches, logits, strict=True):
                    loss_sums[r] += float(F.cross_entropy(out, labels, reduction="sum"))
                    predictions[r][positions] = out.argmax(dim=-1).cpu().numpy()
                    targets[r][positions] = labels.cpu().numpy()
    finally:
        for trainer in trainers:
            trainer.model.train(was_training[id(trainer)])
    for r in sizes:
        results[r] = evaluation_result(predictions[r], targets[r], loss_sums[r])
    return [result for result in results if result is not None]


# --------------------------------------------------------------------------- internals


def _train_step(active: list[TrainJob], *, step: int, max_pass_examples: int) -> None:
    """One optimizer step of every active job: shared passes, then each job's own step."""
    prepared = []
    for job in active:
        inputs, labels = job.trainer.training_batch(
            job.trainer.next_training_indices(job.trainer.training_batch_size)
        )
        prepared.append((job, inputs, labels))
    prepared.sort(key=lambda item: int(item[1][0].shape[-1]))  # similar widths pad little
    for job in active:
        assert job._optimizer is not None
        job._optimizer.zero_grad(set_to_none=True)
    for group in _packs(prepared, lambda item: len(item[2]), max_pass_examples):
        logits = _shared_pass([job.model for job, _, _ in group], [i for _, i, _ in group])
        total: torch.Tensor | None = None
        for (job, _, labels), out in zip(group, logits, strict=True):
            loss = F.cross_entropy(out, labels)
            if job.extra_loss is not None:
                loss = loss + job.extra_loss(job.model)
            value = float(loss.detach())
            try:
                job.trainer.check_finite_loss(value, step=step)
            except FloatingPointError as exc:
                job._error = exc  # its loss stays out of the sum: the others train on
                continue
            job._losses.append(value)
            total = loss if total is None else total + loss
        if total is not None:
            total.backward()  # type: ignore[no-untyped-call]
    for job in active:
        if job._error is None:
            assert job._optimizer is not None
            job._optimizer.step()


def _packs(items: Sequence[_T], measure: Callable[[_T], int], limit: int) -> Iterator[list[_T]]:
    """Consecutive groups of items whose sizes sum to at most ``limit`` (at least one each)."""
    group: list[_T] = []
    total = 0
    for item in items:
        n = measure(item)
        if group and total + n > limit:
            yield group
            group, total = [], 0
        group.append(item)
        total += n
    if group:
        yield group


def _shared_pass(models: list[Any], inputs: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """One backbone pass of the models' class over their inputs."""
    return SHARED_PASSES[type(models[0])](models, inputs)


def _check_group(trainers: Sequence[object], max_pass_examples: int) -> None:
    """Refuse a group whose trainers cannot share a pass."""
    if max_pass_examples < 1:
        raise ValueError(f"max_pass_examples must be >= 1, got {max_pass_examples}")
    keys = {batch_key(trainer) for trainer in trainers}
    if None in keys or len(keys) > 1:
        raise ValueError(
            "these trainers cannot train in one pass (they need plain soft-prompt or visual-prompt "
            "trainers of one model class on one shared backbone); train them one by one"
        )

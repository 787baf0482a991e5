"""One worker that runs the training and evaluation of every agent hosted in a process.

Hosted agents (``fedprompt_client_agent.host``) receive their tasks at about the same time:
every selected silo trains in the same round. :class:`HostedTraining` owns one worker thread;
an agent's ``train`` or ``evaluate`` call queues a request and waits for its answer. The
worker gathers the requests that are open together (until every hosted silo has one, or no
new request came for ``gather_s``, at most ``max_wait_s`` after the first), then runs the
compatible ones as one batched loop (:mod:`fedprompt_client_agent.training.multi_silo`: one
backbone pass over all their batches, each silo with its own prompt, head, optimizer and data
order) and the rest one by one. One worker also keeps torch's process-wide RNG, which the
trainers seed around each call, free of races.

A personalization pass (an EVALUATE task's ``personalize_steps``) is a third kind of request:
the copies of the silos' models (:mod:`~fedprompt_client_agent.training.personalization`,
each sharing the process's backbone) train together and are evaluated together, like the
silos' own models; nothing of the pass reaches the silos' models.

A failure of one silo (a non-finite loss, a bad setting) answers that silo's call with the
exception; the others go on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np

from fedprompt.v1 import common_pb2
from fedprompt_client_agent.agent import PersonalizeSettings, TrainSettings
from fedprompt_client_agent.training.multi_silo import (
    DEFAULT_MAX_PASS_EXAMPLES,
    TrainJob,
    batch_key,
    evaluate_together,
    train_together,
)
from fedprompt_client_agent.training.trainer import BaseTrainer, EvalResult, SplitName, TrainResult

if TYPE_CHECKING:
    from fedprompt_client_agent.runtime import SiloRuntime
    from fedprompt_client_agent.training.personalization import PersonalCopy

__all__ = ["HostedRuntime", "HostedTraining"]

logger = logging.getLogger(__name__)

Kind = Literal["train", "evaluate", "personalize"]
_BATCHES_KEPT = 1024
_R = TypeVar("_R")


@dataclass(eq=False)
class _Request:
    kind: Kind
    runtime: SiloRuntime
    settings: TrainSettings | PersonalizeSettings | None
    answer: concurrent.futures.Future[dict[str, float]] = field(
        default_factory=concurrent.futures.Future
    )


class HostedTraining:
    """The worker that trains and evaluates the hosted silos, batching open tasks together.

    Parameters
    ----------
    expected : int
        Number of hosted silos: a gathering ends at once when that many requests are open.
    batched : bool
        Train and evaluate compatible silos in shared passes; False runs every request
        alone, one after another (the sequential path, e.g. for comparisons).
    gather_s : float
        A gathering ends when no new request came for this long.
    max_wait_s : float
        A gathering ends at the latest this long after its first request.
    max_pass_examples : int
        Most training examples in one backbone pass (evaluation passes take twice as many).
    """

    def __init__(
        self,
        *,
        expected: int,
        batched: bool = True,
        gather_s: float = 0.1,
        max_wait_s: float = 1.0,
        max_pass_examples: int = DEFAULT_MAX_PASS_EXAMPLES,
    ) -> None:
        if expected < 1:
            raise ValueError(f"expected must be >= 1, got {expected}")
        if gather_s < 0 or max_wait_s < gather_s:
            raise ValueError(f"need 0 <= gather_s <= max_wait_s, got {gather_s}, {max_wait_s}")
        if max_pass_examples < 1:
            raise ValueError(f"max_pass_examples must be >= 1, got {max_pass_examples}")
        self.expected = expected
        self.batched = batched
        self.gather_s = gather_s
        self.max_wait_s = max_wait_s
        self.max_pass_examples = max_pass_examples
        self._pending: list[_Request] = []
        self._last_arrival = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="hosted-training", daemon=True)
        self._worker.start()
        #: (requests, groups) of the latest batches run (bounded: a host runs for months).
        self.batches: deque[tuple[int, int]] = deque(maxlen=_BATCHES_KEPT)

    def submit(
        self,
        kind: Kind,
        runtime: SiloRuntime,
        settings: TrainSettings | PersonalizeSettings | None = None,
    ) -> dict[str, float]:
        """Queue a silo's train, evaluate or personalize call and wait for its metrics.

        Parameters
        ----------
        kind : {"train", "evaluate", "personalize"}
            What to run.
        runtime : SiloRuntime
            The silo.
        settings : TrainSettings or PersonalizeSettings, optional
            The TRAIN task's settings (train), the EVALUATE task's pass (personalize).

        Returns
        -------
        dict
            The metrics ``runtime.train(settings)``, ``runtime.evaluate()`` or
            ``runtime.personalized_evaluate(settings)`` would return.

        Raises
        ------
        RuntimeError
            If the worker was closed.
        Exception
            Whatever the silo's training or evaluation raised.
        """
        if kind == "train" and not isinstance(settings, TrainSettings):
            raise ValueError("a train request needs its TrainSettings")
        if kind == "personalize" and not isinstance(settings, PersonalizeSettings):
            raise ValueError("a personalize request needs its PersonalizeSettings")
        request = _Request(kind, runtime, settings)
        with self._cond:
            if self._closed:
                raise RuntimeError("the hosted training worker is closed")
            self._pending.append(request)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()
        return request.answer.result()

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                logger.exception("hosted training failed")
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(exc)

    def _gather(self) -> list[_Request] | None:
        """Wait for the next requests that are open together; None when closed and idle."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            first = time.monotonic()
            while len(self._pending) < self.expected and not self._closed:
                now = time.monotonic()
                deadline = min(self._last_arrival + self.gather_s, first + self.max_wait_s)
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            batch, self._pending = self._pending, []
            return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        groups: dict[Hashable, list[_Request]] = {}
        for index, request in enumerate(batch):
            key = batch_key(request.runtime.trainer) if self.batched else None
            group = (request.kind, key) if key is not None else ("alone", index)
            groups.setdefault(group, []).append(request)
        self.batches.append((len(batch), len(groups)))
        for members in groups.values():
            if len(members) == 1:
                _answer_alone(members[0])
            elif members[0].kind == "train":
                self._train_group(members)
            elif members[0].kind == "personalize":
                self._personalize_group(members)
            else:
                self._evaluate_group(members)

    def _train_group(self, members: list[_Request]) -> None:
        jobs: list[tuple[_Request, TrainJob]] = []
        for request in members:
            assert isinstance(request.settings, TrainSettings)
            try:
                extra = request.runtime.configure_training(request.settings)
            except Exception as exc:  # noqa: BLE001 (the waiting caller raises it)
                request.answer.set_exception(exc)
                continue
            jobs.append((request, TrainJob(_trainer(request.runtime), extra)))
        results = train_together([job for _, job in jobs], max_pass_examples=self.max_pass_examples)
        for (request, _), result in zip(jobs, results, strict=True):
            _settle(request, result, request.runtime.training_metrics)

    def _evaluate_group(self, members: list[_Request]) -> None:
        evaluated = self._evaluate_trainers([(r, _trainer(r.runtime)) for r in members])
        for request, result in zip(members, evaluated, strict=True):
            _settle(request, result, request.runtime.evaluation_metrics)

    def _evaluate_trainers(
        self, items: list[tuple[_Request, BaseTrainer[Any]]]
    ) -> list[dict[str, EvalResult] | BaseException]:
        """Evaluate each request's trainer on its silo's evaluation splits, in shared passes."""
        asks = [
            (index, trainer, split)
            for index, (request, trainer) in enumerate(items)
            for split in request.runtime.evaluation_splits()
        ]
        results = evaluate_together(
            [(trainer, cast(SplitName, split)) for _, trainer, split in asks],
            max_pass_examples=2 * self.max_pass_examples,
        )
        out: list[dict[str, EvalResult] | BaseException] = [{} for _ in items]
        for (index, _, split), result in zip(asks, results, strict=True):
            done = out[index]
            if isinstance(done, BaseException):
                continue
            out[index] = result if isinstance(result, BaseException) else {**done, split: result}
        return out

    def _personalize_group(self, members: list[_Request]) -> None:
        """Personalization passes of several silos: their copies train and evaluate together.

        Every answer is given after the copies are gone and the silos' models restored.
        """
        failed: list[tuple[_Request, BaseException]] = []
        done: list[tuple[_Request, TrainResult, dict[str, EvalResult] | BaseException]] = []
        with contextlib.ExitStack() as stack:
            copies: list[tuple[_Request, PersonalCopy]] = []
            for request in members:
                assert isinstance(request.settings, PersonalizeSettings)
                try:
                    personal = stack.enter_context(request.runtime.personal_copy(request.settings))
                except Exception as exc:  # noqa: BLE001 (the waiting caller raises it)
                    failed.append((request, exc))
                    continue
                copies.append((request, personal))
            results = train_together(
                [TrainJob(personal.trainer) for _, personal in copies],
                max_pass_examples=self.max_pass_examples,
            )
            trained: list[tuple[_Request, PersonalCopy, TrainResult]] = []
            for (request, personal), result in zip(copies, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append((request, result))
                    continue
                personal.restore_frozen()
                trained.append((request, personal, result))
            evaluated = self._evaluate_trainers([(r, p.trainer) for r, p, _ in trained])
            done = [
                (request, result, splits)
                for (request, _, result), splits in zip(trained, evaluated, strict=True)
            ]
        for request, error in failed:
            request.answer.set_exception(error)
        for request, result, splits in done:
            _settle(
                request, splits, functools.partial(request.runtime.personalization_metrics, result)
            )


class HostedRuntime:
    """A hosted silo's runtime whose ``train`` and ``evaluate`` run on the shared worker."""

    def __init__(self, runtime: SiloRuntime, worker: HostedTraining) -> None:
        self._runtime = runtime
        self._worker = worker
        self.client_id: str = runtime.client_id
        self.num_train_examples: int = runtime.num_train_examples
        self.metadata: Mapping[str, object] = runtime.metadata
        self.capabilities: common_pb2.ClientCapabilities = runtime.capabilities

    def shared_state(self) -> dict[str, np.ndarray]:
        """The travelling tensors of the wrapped runtime."""
        return self._runtime.shared_state()

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Install the coordinator's tensors."""
        self._runtime.load_shared_state(tensors)

    def train(self, settings: TrainSettings) -> dict[str, float]:
        """Train on the worker (together with the other silos whose tasks are open)."""
        return self._worker.submit("train", self._runtime, settings)

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the worker (together with the other silos evaluating now)."""
        return self._worker.submit("evaluate", self._runtime)

    def personalized_evaluate(self, settings: PersonalizeSettings) -> dict[str, float]:
        """Run a personalization pass on the worker (with the other silos' passes open now)."""
        return self._worker.submit("personalize", self._runtime, settings)

    def save_personal(self) -> None:
        """Persist the personal state."""
        self._runtime.save_personal()


def _answer_alone(request: _Request) -> None:
    """Run one request on its own (the sequential path)."""
    try:
        if request.kind == "train":
            assert isinstance(request.settings, TrainSettings)
            metrics = request.runtime.train(request.settings)
        elif request.kind == "personalize":
            assert isinstance(request.settings, PersonalizeSettings)
            metrics = request.runtime.personalized_evaluate(request.settings)
        else:
            metrics = request.runtime.evaluate()
    except Exception as exc:  # noqa: BLE001 (the waiting caller raises it)
        request.answer.set_exception(exc)
    else:
        request.answer.set_result(metrics)


def _settle(
    request: _Request, result: _R | BaseException, metrics_of: Callable[[_R], dict[str, float]]
) -> None:
    """Answer a request with its metrics, or with the exception that ended it."""
    if isinstance(result, BaseException):
        request.answer.set_exception(result)
        return
    try:
        request.answer.set_result(metrics_of(result))
    except Exception as exc:  # noqa: BLE001 (the waiting caller raises it)
        request.answer.set_exception(exc)


def _trainer(runtime: SiloRuntime) -> BaseTrainer[Any]:
    trainer = runtime.trainer
    assert isinstance(trainer, BaseTrainer)  # batch_key admitted only plain trainers
    return trainer

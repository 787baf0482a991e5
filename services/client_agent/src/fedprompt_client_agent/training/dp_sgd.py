"""Record-level differential privacy for local prompt training: DP-SGD with Opacus.

``DPLocalTrainer`` is a drop-in ``LocalTrainer`` whose every optimizer step is
one application of the Poisson-subsampled Gaussian mechanism (Abadi et al. 2016):

1. **Poisson sampling.** Each training record joins the step's batch
   independently with probability ``q = batch_size / N``; the batch size
   varies and may be zero (the step is still taken and accounted).
2. **Per-sample gradients.** The ``PromptClassifier`` is wrapped in an Opacus
   ``GradSampleModule`` for the duration of a ``train`` call. Opacus hooks only
   modules with trainable parameters, i.e. the prompt ``nn.Embedding`` inside
   peft's ``PromptEmbedding`` and the linear head; the frozen backbone gets no
   hooks and no per-sample gradients. ``hooks`` mode uses Opacus' closed-form
   grad samplers, ``functorch`` mode ``vmap``-s the layers; both work because
   the model looks the prompt up with batch-expanded indices.
3. **Clip and noise.** Opacus' ``DPOptimizer`` clips each record's gradient
   (over prompt and head jointly) to L2 norm ``C = max_grad_norm``, sums,
   adds ``N(0, (sigma C)² I)`` and divides by the expected batch size ``qN``; the
   wrapped AdamW then applies it (post-processing).
4. **Accounting.** After each step the accountant (``rdp`` or ``prv``) records
   ``step(noise_multiplier=sigma, sample_rate=q)``; ``epsilon()`` reports the
   silo's spent ε at δ. ``state_dict``/``load_state_dict`` carry the history
   across restarts.

The regulariser passed as ``extra_loss`` (the contrastive cluster-prompt term,
FedProx's proximal term ``μ/2 · ‖θ - θ₀‖²`` whose θ₀ is the round-start model the
coordinator sent) is a function of the model's parameters and of public tensors
only, never of a training record. Its gradient therefore costs no privacy: it is computed
separately (with the per-sample hooks off), is neither clipped nor noised, and
is added to the privatised gradient after the DP step, before the AdamW update.
A regulariser that reads private data would void this argument.

Randomness: the Poisson sampler and the noise draw from OS entropy unless
``DPSGDConfig.seed`` is set; a seed makes runs reproducible (tests) but the
guarantee then does not hold against anyone who knows it. Opacus'
``secure_mode`` (cryptographically secure noise, needs ``torchcsprng``) is not
used. Metrics computed from training batches (``TrainResult.mean_loss``,
``examples_seen``) are *not* privatised; only the parameters are.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedprompt.errors import NotReadyError
from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.models.backbone import Tokenizer
from fedprompt_client_agent.training.trainer import (
    ExtraLoss,
    LocalTrainer,
    TextModel,
    TrainConfig,
    TrainResult,
    seeded_torch_rng,
)

__all__ = [
    "AccountantName",
    "DPLocalTrainer",
    "DPSGDConfig",
    "GradSampleMode",
    "LocalBudgetExhaustedError",
    "default_delta",
    "make_accountant",
    "poisson_sample",
]

logger = logging.getLogger(__name__)

_STATE_FORMAT: Final = "fedprompt-dp-sgd/1"
_DELTA_CEILING: Final = 1e-5
_CALIBRATION_TOLERANCE: Final = 0.01
#: Opacus attributes that outlive ``GradSampleModule`` clean-up (set by ``DPOptimizer``).
_OPTIMIZER_PARAM_ATTRS: Final = ("summed_grad",)
#: Harmless warnings of the per-sample machinery on this model (see ``_quiet_opacus``).
_QUIET_MESSAGES: Final = (
    # nn.Embedding's input (token ids) never requires grad; the hook fires on its output.
    r"Full backward hook is firing when gradients are computed with respect to module outputs",
    # functorch mode treats the integer ids as "mixed precision" and tries autocast to int64.
    r"In CPU autocast, but the target dtype is not supported",
    r"In CUDA autocast, but the target dtype is not supported",
)

History = list[tuple[float, float, int]]


class AccountantName(enum.StrEnum):
    """Privacy accountants (Opacus mechanism names)."""

    RDP = "rdp"
    PRV = "prv"


class GradSampleMode(enum.StrEnum):
    """How Opacus computes per-sample gradients."""

    HOOKS = "hooks"
    FUNCTORCH = "functorch"


class DPSGDConfig(BaseModel):
    """Settings of record-level DP-SGD for one silo.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` is given. With a
    target, sigma is the smallest noise multiplier (to 0.01 in ε) whose ε after
    ``total_steps`` steps at sampling rate ``batch_size / N`` is at most the
    target (Opacus' ``get_noise_multiplier``), and training that would exceed
    the target raises ``LocalBudgetExhaustedError``.

    Attributes
    ----------
    noise_multiplier : float or None
        sigma: noise standard deviation relative to ``max_grad_norm``. ``0`` turns
        the noise off (no privacy; for ablations only).
    target_epsilon : float or None
        ε the silo may spend over ``total_steps`` steps; sigma is calibrated to it.
    total_steps : int or None
        Planned local steps over the whole federation (rounds x local steps);
        required with ``target_epsilon``.
    max_grad_norm : float
        C: per-record clipping bound on the gradient of prompt and head together.
    delta : float or None
        δ of the (ε, δ) guarantee. ``None`` uses ``default_delta(N)`` =
        ``min(1e-5, 1 / (10 N))``: well below ``1/N`` (the probability of
        leaking one whole record) for any silo size, and the conventional 1e-5
        for silos up to 10,000 records.
    accountant : AccountantName
        ``rdp`` (Rényi DP, Opacus' default) or ``prv`` (PRV numerical
        composition, tighter).
    grad_sample_mode : GradSampleMode
        ``hooks`` (closed-form per-layer grad samplers) or ``functorch``.
    seed : int or None
        Seed of the Poisson sampler and the noise; ``None`` draws from OS
        entropy. Reproducible runs only: knowing the seed voids the guarantee.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="sigma, noise std relative to max_grad_norm (0: no privacy)",
    )
    target_epsilon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="ε to spend over total_steps; sigma is calibrated to it",
    )
    total_steps: int | None = Field(
        default=None, ge=1, description="planned steps over all rounds (rounds x local steps)"
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="C, per-record L2 clipping bound"
    )
    delta: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="δ of the guarantee; None: min(1e-5, 1/(10·N)) for N training records",
    )
    accountant: AccountantName = Field(
        default=AccountantName.RDP, description="privacy accountant: rdp or prv"
    )
    grad_sample_mode: GradSampleMode = Field(
        default=GradSampleMode.HOOKS, description="per-sample gradients: hooks or functorch"
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        description="seed of sampling and noise (tests only; None: OS entropy)",
    )

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPSGDConfig:
        """Require exactly one of sigma and target ε, and a step plan with the target."""
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.target_epsilon is not None and self.total_steps is None:
            raise ValueError("target_epsilon needs total_steps (rounds x local steps)")
        return self

    def resolve_delta(self, num_examples: int) -> float:
        """Return the configured δ, or ``default_delta(num_examples)`` when unset.

        Parameters
        ----------
        num_examples : int
            Size of the silo's training split.

        Returns
        -------
        float
            δ.
        """
        return self.delta if self.delta is not None else default_delta(num_examples)


class LocalBudgetExhaustedError(NotReadyError):
    """Training further would spend more than the silo's target ε."""


def default_delta(num_examples: int) -> float:
    """Return the default δ for a training set: ``min(1e-5, 1 / (10 N))``.

    Parameters
    ----------
    num_examples : int
        N, the number of training records (>= 1).

    Returns
    -------
    float
        δ.

    Raises
    ------
    ValueError
        If ``num_examples`` < 1.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return min(_DELTA_CEILING, 1.0 / (10 * num_examples))


def make_accountant(name: AccountantName | str) -> IAccountant:
    """Create an empty Opacus accountant from the registry by mechanism name.

    Parameters
    ----------
    name : AccountantName or str
        ``rdp`` or ``prv``.

    Returns
    -------
    opacus.accountants.IAccountant
        A fresh accountant.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    mechanism = AccountantName(name)
    accountant: IAccountant = create_accountant(mechanism=mechanism.value)
    return accountant


def poisson_sample(
    rng: np.random.Generator, *, num_examples: int, sample_rate: float
) -> np.ndarray:
    """Draw one Poisson-sampled batch: each index in independently with probability q.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    num_examples : int
        N, the number of records.
    sample_rate : float
        q in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices of the selected records; possibly empty.
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    return np.flatnonzero(rng.random(num_examples) < sample_rate).astype(np.int64)


class DPLocalTrainer(LocalTrainer):
    """A ``LocalTrainer`` whose steps are DP-SGD steps with Poisson sampling (Opacus).

    Tokenisation, evaluation, configuration updates, the AdamW parameter groups
    and the per-call dropout seeding are ``LocalTrainer``'s. ``train`` replaces
    the shuffled fixed-size batches with Poisson-sampled ones and the plain
    AdamW step with Opacus' clip-noise-average before AdamW.

    Parameters
    ----------
    model : TextModel
        The model, a ``torch.nn.Module`` (Opacus wraps it); only its prompt (or
        adapter) parameters and head are updated.
    tokenizer : transformers tokenizer
        The backbone's tokenizer.
    silo : SiloData
        The silo; its label set must match ``model.num_labels``.
    config : TrainConfig
        Hyper-parameters; ``batch_size`` is the *expected* batch size ``qN``.
    dp : DPSGDConfig
        Privacy settings.

    Raises
    ------
    ValueError
        If the label counts differ or the training split is empty.
    """

    def __init__(
        self,
        model: TextModel,
        tokenizer: Tokenizer,
        silo: SiloData,
        config: TrainConfig,
        *,
        dp: DPSGDConfig,
    ) -> None:
        super().__init__(model, tokenizer, silo, config)
        self.dp = dp
        self.delta = dp.resolve_delta(self.num_train_examples)
        self._accountant = make_accountant(dp.accountant)
        self._noise_multiplier: float | None = dp.noise_multiplier
        self._sampler = np.random.default_rng(dp.seed)
        self._noise_generator = torch.Generator(device=model.device)
        if dp.seed is None:
            self._noise_generator.seed()
        else:
            self._noise_generator.manual_seed(dp.seed)
        if dp.noise_multiplier == 0:
            logger.warning("silo %s: DP-SGD with noise_multiplier=0 gives no privacy", silo.name)

    # ----------------------------------------------------------------- privacy state

    @property
    def sample_rate(self) -> float:
        """q = batch_size / N of the current configuration (1 when batch_size >= N)."""
        return min(1.0, self.config.batch_size / self.num_train_examples)

    @property
    def noise_multiplier(self) -> float:
        """Noise multiplier sigma: the configured one, or the one calibrated to the target ε.

        Calibration happens on first use, at the then-current sample rate, and
        sigma stays fixed afterwards (it is part of ``state_dict``). Set the
        round's ``batch_size`` before the first ``train`` call.
        """
        if self._noise_multiplier is None:
            self._noise_multiplier = self._calibrate()
        return self._noise_multiplier

    @property
    def steps_taken(self) -> int:
        """DP steps accounted so far (including those of a loaded state)."""
        return sum(int(n) for _, _, n in self._history())

    def epsilon(self, delta: float | None = None) -> float:
        """Return the ε this silo has spent so far.

        Parameters
        ----------
        delta : float, optional
            δ at which to report ε; defaults to the trainer's ``delta``.

        Returns
        -------
        float
            ε (0 before the first step, ``inf`` if a step ran without noise).
        """
        return self._epsilon_of(self._history(), self.delta if delta is None else delta)

    def epsilon_after(self, steps: int) -> float:
        """Return the ε this silo would have spent after ``steps`` more steps.

        Parameters
        ----------
        steps : int
            Further steps at the current sigma and sample rate (>= 0).

        Returns
        -------
        float
            Projected ε at the trainer's ``delta``; nothing is recorded.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        history = self._history()
        if steps > 0:
            history.append((self.noise_multiplier, self.sample_rate, steps))
        return self._epsilon_of(history, self.delta)

    def state_dict(self) -> dict[str, Any]:
        """Return the accounting state, JSON-serialisable, for resuming after a restart.

        Returns
        -------
        dict
            ``format``, ``mechanism`` (accountant), ``history`` (list of
            ``[sigma, q, steps]``) and the resolved ``noise_multiplier``.
        """
        return {
            "format": _STATE_FORMAT,
            "mechanism": self.dp.accountant.value,
            "history": [[float(z), float(q), int(n)] for z, q, n in self._history()],
            "noise_multiplier": float(self.noise_multiplier),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict``: ε continues from the saved history.

        With ``target_epsilon`` the saved sigma is reused, so the plan calibrated
        before the restart carries on unchanged.

        Parameters
        ----------
        state : mapping
            As returned by ``state_dict`` (possibly through JSON).

        Raises
        ------
        ValueError
            If the format or accountant differs, or the history is malformed;
            nothing is changed in that case.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a {_STATE_FORMAT} state: format={state.get('format')!r}")
        history = _checked_history(state.get("history"))
        stored_sigma = state.get("noise_multiplier")
        if not isinstance(stored_sigma, int | float) or not math.isfinite(stored_sigma):
            raise ValueError(f"noise_multiplier must be a finite number, got {stored_sigma!r}")
        if stored_sigma < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {stored_sigma}")
        scratch = make_accountant(self.dp.accountant)
        # Opacus checks the mechanism name and rejects another accountant's history.
        scratch.load_state_dict({"history": history, "mechanism": state.get("mechanism")})
        self._accountant = scratch
        if self.dp.target_epsilon is not None:
            self._noise_multiplier = float(stored_sigma)
        logger.info(
            "silo %s: resumed DP accounting after %d steps, ε=%.4f at δ=%g",
            self.silo.name,
            self.steps_taken,
            self.epsilon(),
            self.delta,
        )

    def update_config(self, **changes: object) -> TrainConfig:
        """Replace some hyper-parameters, as ``LocalTrainer.update_config``.

        A new ``batch_size`` changes the sample rate of later steps; a sigma already
        calibrated to the target ε is kept, and the budget check stops training
        if the new rate would overspend.

        Parameters
        ----------
        **changes
            ``TrainConfig`` fields and their new values.

        Returns
        -------
        TrainConfig
            The new configuration.
        """
        before = self.config.batch_size
        config = super().update_config(**changes)
        if (
            config.batch_size != before
            and self.dp.target_epsilon is not None
            and self._noise_multiplier is not None
        ):
            logger.warning(
                "silo %s: batch_size %d -> %d after sigma was calibrated; sigma=%.4f is kept and "
                "training stops when ε would exceed %g",
                self.silo.name,
                before,
                config.batch_size,
                self._noise_multiplier,
                self.dp.target_epsilon,
            )
        return config

    # ----------------------------------------------------------------- training

    def train(
        self, *, steps: int | None = None, extra_loss: ExtraLoss | None = None
    ) -> TrainResult:
        """Run DP-SGD steps with Poisson-sampled batches; each step is accounted.

        Parameters
        ----------
        steps : int, optional
            Number of steps; defaults to ``config.steps``.
        extra_loss : callable, optional
            Called with the model at every step; a scalar of the model's
            parameters and public tensors only. Its gradient is added after
            clipping and noise (it reads no record, so it costs no privacy).

        Returns
        -------
        TrainResult
            Steps, records drawn, mean objective over non-empty batches, timings.

        Raises
        ------
        ValueError
            If ``steps`` < 1.
        LocalBudgetExhaustedError
            If the steps would take ε above ``target_epsilon``; nothing is trained.
        FloatingPointError
            If the objective becomes NaN or infinite.
        """
        n_steps = self.config.steps if steps is None else steps
        if n_steps < 1:
            raise ValueError(f"steps must be >= 1, got {n_steps}")
        self._check_budget(n_steps)
        sigma, rate = self.noise_multiplier, self.sample_rate
        optimizer = DPOptimizer(
            self.build_optimizer(),
            noise_multiplier=sigma,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=rate * self.num_train_examples,
            loss_reduction="mean",
            generator=self._noise_generator,
        )
        params: list[torch.Tensor] = list(optimizer.params)
        self.model.train()
        losses: list[float] = []
        step_times: list[float] = []
        examples = 0
        started = time.perf_counter()
        module = self._wrap()
        try:
            with _quiet_opacus(), seeded_torch_rng(self.next_dropout_seed(), self.model.device):
                for step in range(n_steps):
                    step_start = time.perf_counter()
                    drawn, objective = self._dp_step(
                        module, optimizer, params, extra_loss, step=step
                    )
                    examples += drawn
                    if objective is not None:
                        losses.append(objective)
                    step_times.append(time.perf_counter() - step_start)
        finally:
            _unwrap(module, params)
        seconds = time.perf_counter() - started
        result = TrainResult(
            steps=n_steps,
            examples_seen=examples,
            mean_loss=float(np.mean(losses)) if losses else math.nan,
            seconds=seconds,
            step_seconds_mean=float(np.mean(step_times)),
        )
        if logger.isEnabledFor(logging.INFO):
            self._log_result(result, sigma=sigma, rate=rate)
        return result

    def _log_result(self, result: TrainResult, *, sigma: float, rate: float) -> None:
        """Log a ``train`` call with the spent ε (computing ε costs up to a second)."""
        logger.info(
            "silo %s: %d DP-SGD steps (sigma=%.4f, C=%g, q=%.4f), mean loss %.4f, %.3f s/step, "
            "ε=%.4f at δ=%g",
            self.silo.name,
            result.steps,
            sigma,
            self.dp.max_grad_norm,
            rate,
            result.mean_loss,
            result.step_seconds_mean,
            self.epsilon(),
            self.delta,
        )

    # ----------------------------------------------------------------- internals

    def _dp_step(
        self,
        module: GradSampleModule,
        optimizer: DPOptimizer,
        params: Sequence[torch.Tensor],
        extra_loss: ExtraLoss | None,
        *,
        step: int,
    ) -> tuple[int, float | None]:
        """One DP-SGD step; returns the batch size and the objective (None if empty)."""
        sample_rate = self.sample_rate
        indices = poisson_sample(
            self._sampler, num_examples=self.num_train_examples, sample_rate=sample_rate
        )
        optimizer.zero_grad(set_to_none=True)
        objective: float | None = None
        if len(indices) > 0:
            inputs, labels = self.training_batch(indices)
            loss = F.cross_entropy(module(*inputs), labels)
            objective = float(loss.detach())
            self.check_finite_loss(objective, step=step)
            loss.backward()  # type: ignore[no-untyped-call]
        else:  # an empty Poisson batch: clipping sums nothing, the noise is still added
            for p in params:
                p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]
        extra_value, extra_grads = self._extra_gradients(module, params, extra_loss)
        if extra_value is not None:
            self.check_finite_loss(extra_value, step=step)
            objective = None if objective is None else objective + extra_value
        if optimizer.pre_step():  # clip per sample, sum, add N(0, sigma² C²), divide by qN
            with torch.no_grad():
                for p, grad in zip(params, extra_grads, strict=True):
                    if grad is not None and p.grad is not None:
                        p.grad.add_(grad)
            optimizer.original_optimizer.step()
            self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)
        return len(indices), objective

    def _extra_gradients(
        self,
        module: GradSampleModule,
        params: Sequence[torch.Tensor],
        extra_loss: ExtraLoss | None,
    ) -> tuple[float | None, list[torch.Tensor | None]]:
        """Value and gradient of the record-free regulariser, with per-sample hooks off."""
        if extra_loss is None:
            return None, [None] * len(params)
        module.disable_hooks()
        try:
            value = extra_loss(self.model)
            if not value.requires_grad:
                return float(value.detach()), [None] * len(params)
            grads = torch.autograd.grad(value, list(params), allow_unused=True)
        finally:
            module.enable_hooks()
        return float(value.detach()), list(grads)

    def _wrap(self) -> GradSampleModule:
        """Attach Opacus' per-sample gradient hooks to the model's trainable modules."""
        module = GradSampleModule(
            self.model,
            batch_first=True,
            loss_reduction="mean",
            strict=True,
            force_functorch=self.dp.grad_sample_mode is GradSampleMode.FUNCTORCH,
        )
        module.forbid_grad_accumulation()  # Poisson sampling: one backward per step
        return module

    def _check_budget(self, steps: int) -> None:
        """Refuse steps that would take ε above the target (target mode only)."""
        target = self.dp.target_epsilon
        if target is None:
            return
        after = self.epsilon_after(steps)
        if after > target:
            raise LocalBudgetExhaustedError(
                f"silo {self.silo.name}: {steps} more DP-SGD steps would raise ε from "
                f"{self.epsilon():.3f} to {after:.3f}, over the target ε={target:g} at "
                f"δ={self.delta:g} ({self.steps_taken} of {self.dp.total_steps} planned steps done)"
            )

    def _calibrate(self) -> float:
        """Return the sigma whose ε after ``total_steps`` at the current rate is <= the target."""
        target, total = self.dp.target_epsilon, self.dp.total_steps
        if target is None or total is None:  # excluded by DPSGDConfig's validator
            raise RuntimeError("calibration needs target_epsilon and total_steps")
        with warnings.catch_warnings():
            # The bisection visits sigma far from the answer, where the best RDP order is at the
            # edge of Opacus' range; only the final ε matters.
            warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target,
                    target_delta=self.delta,
                    sample_rate=self.sample_rate,
                    steps=total,
                    accountant=self.dp.accountant.value,
                    epsilon_tolerance=_CALIBRATION_TOLERANCE,
                )
            )
        logger.info(
            "silo %s: sigma=%.4f gives ε<=%g at δ=%g after %d steps at q=%.4f (%s)",
            self.silo.name,
            sigma,
            target,
            self.delta,
            total,
            self.sample_rate,
            self.dp.accountant.value,
        )
        return sigma

    def _history(self) -> History:
        """Copy of the accountant's ``(sigma, q, steps)`` entries."""
        return [(float(z), float(q), int(n)) for z, q, n in self._accountant.history]

    def _epsilon_of(self, history: History, delta: float) -> float:
        """Return the ε of ``(sigma, q, steps)`` entries composed by this trainer's accountant."""
        if not history:
            return 0.0
        if any(z == 0 for z, _, _ in history):
            return math.inf
        scratch = make_accountant(self.dp.accountant)
        scratch.history = list(history)
        return float(scratch.get_epsilon(delta=delta))


def _checked_history(raw: object) -> History:
    """Validate a serialised accountant history: ``[[sigma >= 0, 0 < q <= 1, steps >= 1], ...]``."""
    if not isinstance(raw, list | tuple):
        raise ValueError(f"history must be a list of [sigma, q, steps], got {type(raw).__name__}")
    history: History = []
    for entry in raw:
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise ValueError(f"history entry {entry!r} is not [sigma, q, steps]")
        sigma, rate, count = entry
        numbers_ok = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (sigma, rate)
        )
        if not numbers_ok or not math.isfinite(sigma) or sigma < 0 or not 0 < rate <= 1:
            raise ValueError(f"history entry {entry!r}: need sigma >= 0 and 0 < q <= 1")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"history entry {entry!r}: steps must be an integer >= 1")
        history.append((float(sigma), float(rate), count))
    return history


def _unwrap(module: GradSampleModule, params: Sequence[torch.Tensor]) -> None:
    """Remove Opacus' hooks and every attribute it put on the parameters."""
    module.to_standard_module()
    for p in params:
        p.grad = None
        for attr in _OPTIMIZER_PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)


@contextlib.contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Silence the known-harmless warnings of per-sample gradients on this model."""
    with warnings.catch_warnings():
        for message in _QUIET_MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield

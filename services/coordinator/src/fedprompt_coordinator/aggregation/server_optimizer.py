"""Server optimizers: how each level's aggregated delta becomes its next tensors.

A round's aggregate (the weighted mean, a robust rule, DP-FedAvg's noised mean, or the sum
secure aggregation released) gives every released tensor x of every level its aggregated
delta Δ_t: the aggregate minus x_t. A server optimizer turns Δ_t into the applied update, as
in Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2, elementwise in
float64 and without bias correction::

    m_t     = β1 m_{t-1} + (1 - β1) Δ_t
    v_t     = β2 v_{t-1} + (1 - β2) Δ_t²                        adam     (FedAdam)
    v_t     = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)      yogi     (FedYogi)
    v_t     = v_{t-1} + Δ_t²                                    adagrad  (FedAdagrad)
    x_{t+1} = x_t + η m_t / (√v_t + τ)

from m_{-1} = 0 and v_{-1} = τ² (the paper asks v_{-1} ≥ τ²). ``sgd`` is
x_{t+1} = x_t + η Δ_t; with η = 1, the default, it returns the aggregate itself, bit for
bit: the update the coordinator always made.

**Levels.** The global level's tensors and each cluster's tensors (its prompt, its head, ...)
have their own moments, keyed by tensor name and, for a cluster, by cluster id. Only the
tensors a round released step (:class:`~fedprompt_coordinator.aggregation.levels.Released`):
a cluster without members in the round, or one that DP-FedAvg or secure aggregation did not
release, keeps its tensors *and* its moments. A cluster id released for the first time starts
from fresh moments, as its tensors start from the template. Moments belong to a cluster's
tensors, not to its members: the clusterer keeps cluster ids stable across re-clustering, so
a cluster whose membership changes keeps its moments like it keeps its prompt, and a cluster
that loses every member keeps both until it is released again.

**Privacy.** The step runs on the released aggregate only (after DP noise; on secure
aggregation's unmasked sum), so it is post-processing: DP's guarantee is untouched. Under DP
the aggregate already applies ``privacy.server_learning_rate``; the configuration refuses
any server optimizer other than the default (sgd, η = 1) unless that rate is 1: one η.

**Precision.** A stepping optimizer aggregates a float64 copy of the round-start model
(:meth:`ServerOptimizer.working_model`), so Δ_t is the aggregators' float64 result before any
rounding; each tensor is rounded to its dtype once, after the step.

**Failures.** A delta, a moment or a next tensor that is not finite raises
:class:`ServerOptimizerError` (the round fails loudly; nothing of it is kept): the moments
never hold NaN or infinity. Uploads are refused when not finite before they are aggregated
(:func:`~fedprompt_coordinator.validation.validate_update`), and a finite float32 delta
squares to a finite float64, so in practice only float64 tensors of absurd size, or a step
that leaves a tensor's dtype range, trip it.

**Durability.** The moments (:class:`~fedprompt_coordinator.domain.ServerMoments`) are
written with the round's snapshot and committed with it (:mod:`~fedprompt_coordinator.
moment_files`); the coordinator adopts them only when the round completes.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedprompt_coordinator.aggregation.levels import Released
from fedprompt_coordinator.domain import FederationModel, ServerMoments, TensorMoments

logger = logging.getLogger(__name__)

#: Round-summary key naming the optimizer that ran (value 1).
OPTIMIZER_KEY = "server_optimizer_{name}"
#: Round-summary key of the server learning rate η.
LR_KEY = "server_lr"
#: Round-summary key of the L2 norm of the global level's applied update.
GLOBAL_NORM_KEY = "global_server_update_norm"
#: Round-summary key of the L2 norm of a cluster's applied update (a per-cluster key).
CLUSTER_NORM_KEY = "cluster_{cluster}_server_update_norm"


class ServerOptimizerError(ValueError):
    """A server step would put a non-finite value into the moments or the model."""


@dataclass(frozen=True)
class ServerStep:
    """The model after a round's server step, the moments to keep with it, and its figures."""

    model: FederationModel
    moments: ServerMoments
    info: dict[str, float]


def _float64(model: FederationModel) -> FederationModel:
    """A float64 copy of every tensor of ``model``."""

    def lift(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float64).copy() for k, v in tensors.items()}

    return FederationModel(
        global_tensors=lift(model.global_tensors),
        cluster_tensors={c: lift(t) for c, t in model.cluster_tensors.items()},
        cluster_template=lift(model.cluster_template),
    )


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


class ServerOptimizer(abc.ABC):
    """Turns each released tensor's aggregated delta into its applied update.

    Subclasses implement :meth:`step` for one tensor; :meth:`apply` runs it over every
    released tensor of every level.

    Parameters
    ----------
    lr
        η, the server learning rate (positive, finite).
    beta1
        β1, the decay of the first moment, in [0, 1).
    beta2
        β2, the decay of the second moment (adam, yogi), in [0, 1).
    tau
        τ, the adaptivity floor of the denominator (positive, finite).

    Raises
    ------
    ValueError
        For a value outside its range.
    """

    #: Registry name.
    name: ClassVar[str] = ""
    #: The hyperparameters besides ``lr`` that it reads (``beta1``, ``beta2``, ``tau``).
    hyperparameters: ClassVar[frozenset[str]] = frozenset()
    #: η when none is configured (None: the configuration must give one).
    default_lr: ClassVar[float | None] = None
    #: Whether it keeps moments between rounds.
    stateful: ClassVar[bool] = False

    def __init__(
        self, *, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"the server learning rate must be positive and finite, not {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), not {beta1}, {beta2}")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be positive and finite, not {tau}")
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)

    @property
    def identity(self) -> bool:
        """True when the step returns the aggregate unchanged (plain sgd with η = 1)."""
        return False

    @abc.abstractmethod
    def step(
        self, delta: np.ndarray, moments: TensorMoments | None
    ) -> tuple[np.ndarray, TensorMoments | None]:
        """The update to add to one tensor and its new moments.

        Parameters
        ----------
        delta
            Δ_t of the tensor (float64; not modified).
        moments
            Its moments after the previous step (None: fresh).
        """

    # ------------------------------------------------------------------ the whole model

    def working_model(self, model: FederationModel) -> FederationModel:
        """What the round aggregates: a float64 copy of ``model`` when the step needs exact
        deltas, else ``model`` itself (the aggregate is then final)."""
        return model if self.identity else _float64(model)

    def apply(
        self,
        model: FederationModel,
        aggregated: FederationModel,
        *,
        released: Released,
        moments: ServerMoments,
    ) -> ServerStep:
        """The round's next model: every released tensor stepped, the rest as they were.

        Parameters
        ----------
        model
            The round-start model, in the federation's dtypes.
        aggregated
            The round's aggregate of :meth:`working_model` of ``model``.
        released
            Which tensors the aggregate moved.
        moments
            The moments after the previous round (this optimizer's, or empty).

        Raises
        ------
        ServerOptimizerError
            When a delta, a moment or a next tensor is not finite (naming the tensor).
        """
        info = {OPTIMIZER_KEY.format(name=self.name): 1.0, LR_KEY: self.lr}
        if self.identity:
            return ServerStep(aggregated, moments, info)
        new_global, global_moments, norm = self._level(
            model.global_tensors,
            aggregated.global_tensors,
            released.global_names,
            moments.global_moments,
            label="the global level",
        )
        if released.global_names:
            info[GLOBAL_NORM_KEY] = norm
        clusters: dict[int, dict[str, np.ndarray]] = {}
        cluster_moments = dict(moments.cluster_moments)
        for cluster, tensors in aggregated.cluster_tensors.items():
            names = released.of_cluster(cluster)
            clusters[cluster], level_moments, norm = self._level(
                model.cluster_tensors.get(cluster, model.cluster_template),
                tensors,
                names,
                moments.cluster_moments.get(cluster, {}),
                label=f"cluster {cluster}",
            )
            if names:
                info[CLUSTER_NORM_KEY.format(cluster=cluster)] = norm
                if level_moments:
                    cluster_moments[cluster] = level_moments
        next_model = FederationModel(
            global_tensors=new_global,
            cluster_tensors=clusters,
            cluster_template=model.cluster_template,
        )
        next_moments = ServerMoments(
            optimizer=self.name if self.stateful else "",
            global_moments=global_moments,
            cluster_moments=cluster_moments,
        )
        return ServerStep(next_model, next_moments, info)

    def _level(
        self,
        base: Mapping[str, np.ndarray],
        aggregate: Mapping[str, np.ndarray],
        names: frozenset[str],
        moments: Mapping[str, TensorMoments],
        *,
        label: str,
    ) -> tuple[dict[str, np.ndarray], dict[str, TensorMoments], float]:
        """One level's next tensors, moments and the L2 norm of its applied update."""
        out: dict[str, np.ndarray] = {}
        kept = dict(moments)
        squares = 0.0
        for name, value in aggregate.items():
            x = base[name]
            if name not in names:
                out[name] = np.asarray(value).astype(x.dtype)
                continue
            x64 = np.asarray(x, dtype=np.float64)
            delta = np.asarray(value, dtype=np.float64) - x64
            if not _finite(delta):
                raise ServerOptimizerError(
                    f"the aggregated delta of {name} ({label}) is not finite; the round is "
                    "not stepped"
                )
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                update, tensor_moments = self.step(delta, moments.get(name))
                nxt = (x64 + update).astype(x.dtype)
            if tensor_moments is not None:
                if not _finite(tensor_moments.first, tensor_moments.second):
                    raise ServerOptimizerError(
                        f"{self.name}'s moments of {name} ({label}) overflow (|Δ| up to "
                        f"{float(np.max(np.abs(delta))):.3g}); the round is not stepped"
                    )
                kept[name] = tensor_moments
            if not _finite(nxt):
                raise ServerOptimizerError(
                    f"{self.name}'s step of {name} ({label}) leaves the range of {x.dtype}; "
                    "the round is not stepped"
                )
            out[name] = nxt
            squares += float(np.sum(np.square(update)))
        return out, kept, math.sqrt(squares)

    # ------------------------------------------------------------------ resuming

    def resume(self, moments: ServerMoments, model: FederationModel) -> ServerMoments:
        """The moments a resumed coordinator continues from, checked against its model.

        Moments written by another optimizer (the configuration changed between runs) are
        not this one's: it starts afresh, and says so in the log.

        Raises
        ------
        ValueError
            When a moment has no tensor of its name, level and shape in ``model``.
        """
        _check_against(moments, model)
        if moments.empty or moments.optimizer == self.name:
            return moments
        logger.warning(
            "the saved server moments were written by %s; %s starts from fresh moments",
            moments.optimizer,
            self.name,
        )
        return ServerMoments(optimizer=self.name if self.stateful else "")


def _check_against(moments: ServerMoments, model: FederationModel) -> None:
    """Raise ValueError unless every moment matches a tensor of ``model`` in level and shape."""
    levels: list[tuple[str, Mapping[str, TensorMoments], Mapping[str, np.ndarray] | None]] = [
        ("the global level", moments.global_moments, model.global_tensors)
    ]
    levels += [
        (f"cluster {c}", m, model.cluster_tensors.get(c))
        for c, m in sorted(moments.cluster_moments.items())
    ]
    for label, level, tensors in levels:
        if tensors is None:
            raise ValueError(f"the saved server moments hold {label}, which the model has not")
        for name, tm in sorted(level.items()):
            if name not in tensors:
                raise ValueError(
                    f"the saved server moments hold {name} of {label}, which the model has not"
                )
            shape = np.shape(tensors[name])
            if tm.first.shape != shape or tm.second.shape != shape:
                raise ValueError(
                    f"the saved server moments of {name} ({label}) have shapes "
                    f"{tm.first.shape} and {tm.second.shape}, the tensor {shape}"
                )


class ServerSGD(ServerOptimizer):
    """x + η Δ; with η = 1 (the default) the aggregate itself."""

    name = "sgd"
    default_lr = 1.0

    @property
    def identity(self) -> bool:
        """True for η = 1: the aggregate is the next model, as it always was."""
        return self.lr == 1.0

    def step(
        self, delta: np.ndarray, moments: TensorMoments | None
    ) -> tuple[np.ndarray, TensorMoments | None]:
        """η Δ, no moments."""
        return self.lr * delta, None


class AdaptiveServerOptimizer(ServerOptimizer):
    """Reddi et al.'s adaptive family: a first moment, a second moment, η m / (√v + τ).

    Subclasses say how the second moment follows the squared deltas.
    """

    hyperparameters = frozenset({"beta1", "beta2", "tau"})
    stateful = True

    @abc.abstractmethod
    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """v_t from v_{t-1} and Δ_t² (float64; neither is modified)."""

    def step(
        self, delta: np.ndarray, moments: TensorMoments | None
    ) -> tuple[np.ndarray, TensorMoments | None]:
        """η m_t / (√v_t + τ) and (m_t, v_t), from m_{-1} = 0, v_{-1} = τ² when fresh."""
        if moments is None:
            first = np.zeros_like(delta)
            second = np.full_like(delta, self.tau * self.tau)
        else:
            first, second = moments.first, moments.second
        m = self.beta1 * first + (1.0 - self.beta1) * delta
        v = self.second_moment(second, np.square(delta))
        return self.lr * m / (np.sqrt(v) + self.tau), TensorMoments(first=m, second=v)


class FedAdam(AdaptiveServerOptimizer):
    """v_t = β2 v_{t-1} + (1 - β2) Δ_t²."""

    name = "adam"

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """The exponential moving average of the squared deltas."""
        return self.beta2 * previous + (1.0 - self.beta2) * squared


class FedYogi(AdaptiveServerOptimizer):
    """v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²): v moves towards Δ_t² by at most
    (1 - β2) Δ_t² a round (additive, where Adam's average is multiplicative)."""

    name = "yogi"

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """Yogi's additive update of the second moment."""
        change: np.ndarray = (1.0 - self.beta2) * squared * np.sign(previous - squared)
        result: np.ndarray = previous - change
        return result


class FedAdagrad(AdaptiveServerOptimizer):
    """v_t = v_{t-1} + Δ_t² (no β2)."""

    name = "adagrad"
    hyperparameters = frozenset({"beta1", "tau"})

    def second_moment(self, previous: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """The running sum of the squared deltas."""
        total: np.ndarray = previous + squared
        return total


#: Server optimizers by name.
SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (ServerSGD, FedAdam, FedYogi, FedAdagrad)
}
#: The optimizer of a configuration that names none: plain sgd (today's update).
DEFAULT_SERVER_OPTIMIZER = ServerSGD.name
#: Every hyperparameter some optimizer reads besides ``lr``.
HYPERPARAMETERS = ("beta1", "beta2", "tau")


def make_server_optimizer(
    name: str, *, lr: float | None, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> ServerOptimizer:
    """Instantiate a registered server optimizer.

    Parameters
    ----------
    name
        A key of :data:`SERVER_OPTIMIZERS`.
    lr
        η (None: the optimizer's default, where it has one).

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones), a missing η or a value out of range.
    """
    try:
        cls = SERVER_OPTIMIZERS[name]
    except KeyError:
        known = ", ".join(SERVER_OPTIMIZERS)
        raise ValueError(f"unknown server optimizer {name!r}; known: {known}") from None
    rate = cls.default_lr if lr is None else lr
    if rate is None:
        raise ValueError(
            f"server optimizer {name!r} needs a learning rate η (lr): its step moves each "
            "coordinate by the order of η per round whatever the deltas' scale, so η depends "
            "on the task; choose it on validation data (e.g. over 0.003, 0.01, 0.03, 0.1)"
        )
    return cls(lr=rate, beta1=beta1, beta2=beta2, tau=tau)

"""FedProx's proximal term (Li et al., MLSys 2020) over the tensors a client uploads.

``μ/2 · Σ_n ‖θ_n - θ₀_n‖²``, summed over the tensors ``n`` that travel to the coordinator this
round (the task's ``expected_update``: the shared prompt segments and any shared head), θ₀
their values at the round start. Its gradient ``μ (θ - θ₀)`` pulls each of them back towards
the model the coordinator sent, which limits how far one silo's local steps drag the shared
tensors towards its own data. The personal (local) segment never travels and is never
pulled: it is not a shared tensor, and a task that names it is refused.

The term is an ``extra_loss`` of the trainers, like the InfoNCE term, so the single-silo
loop, the batched multi-silo loop (each silo's term on its own parameters, summed into the
one backward) and DP-SGD (a record-free regulariser: its gradient is added after Opacus has
clipped and noised, see :mod:`~fedprompt_client_agent.training.dp_sgd`) all apply it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from fedprompt.proximal import check_proximal_mu
from fedprompt_client_agent.models.state import preview_keys

__all__ = ["ProximalTerm", "SharedTensors", "make_proximal_loss"]


class SharedTensors(Protocol):
    """A model whose travelling tensors can be read live (every adapted model)."""

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """Return the live travelling tensors by name."""
        ...


class ProximalTerm:
    """``μ/2 · Σ‖θ - θ₀‖²`` over named shared tensors; θ₀ is copied when the term is made.

    Parameters
    ----------
    model : SharedTensors
        The model at the round start (the coordinator's tensors just loaded).
    mu : float
        μ > 0 (:func:`fedprompt.proximal.check_proximal_mu`).
    names : sequence of str
        The tensors the round uploads; each must be one of ``model.shared_tensors()``.

    Raises
    ------
    ValueError
        If μ is not a finite number in ``(0, 100]``, no name is given, or a name is not a
        travelling tensor of the model (e.g. the local segment).
    """

    def __init__(self, model: SharedTensors, *, mu: float, names: Sequence[str]) -> None:
        if check_proximal_mu(mu) == 0:
            raise ValueError("a proximal term needs μ > 0 (μ = 0 is no term at all)")
        if not names:
            raise ValueError("a proximal term needs at least one uploaded tensor")
        live = model.shared_tensors()
        unknown = sorted(set(names) - set(live))
        if unknown:
            raise ValueError(
                f"the task uploads {preview_keys(unknown)}, which this model does not share; "
                f"its travelling tensors are {preview_keys(sorted(live))}"
            )
        self.mu = float(mu)
        #: θ₀: detached copies of the round-start values, in the order of ``names``.
        self.anchors = {name: live[name].detach().clone() for name in dict.fromkeys(names)}

    def __call__(self, model: Any) -> torch.Tensor:
        """The term's value at the model's current tensors (differentiable in them).

        Parameters
        ----------
        model : SharedTensors
            The model the term was made for (its current tensors are θ); typed ``Any`` as
            every ``extra_loss`` is called with the trainer's model.

        Returns
        -------
        torch.Tensor
            A float32 scalar.
        """
        live: dict[str, torch.Tensor] = model.shared_tensors()
        squares = [
            (live[name] - anchor).float().pow(2).sum() for name, anchor in self.anchors.items()
        ]
        return 0.5 * self.mu * torch.stack(squares).sum()


def make_proximal_loss(
    model: SharedTensors, *, mu: float, names: Sequence[str]
) -> ProximalTerm | None:
    """The proximal ``extra_loss`` of a round, or None when μ = 0 or nothing is uploaded.

    Parameters
    ----------
    model : SharedTensors
        The model at the round start.
    mu : float
        The task's μ (0: off).
    names : sequence of str
        The tensors the round uploads.

    Returns
    -------
    ProximalTerm or None
        The term (θ₀ copied now), or None, so that μ = 0 trains exactly as without it.

    Raises
    ------
    ValueError
        For a μ that :func:`fedprompt.proximal.check_proximal_mu` refuses, or an uploaded
        name the model does not share.
    """
    if check_proximal_mu(mu) == 0 or not names:
        return None
    return ProximalTerm(model, mu=mu, names=names)

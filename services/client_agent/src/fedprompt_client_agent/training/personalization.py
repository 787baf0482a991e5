"""The final personalization pass of an evaluation, on a copy of the evaluated model.

What a silo uses after the federation is the round's aggregate (G, C_k and the head H_k)
with its own local segment L_i. An EVALUATE task may ask for a final personalization pass
(``Task.personalize_steps``; :mod:`fedprompt.personalization`): on a **copy** of the
evaluated model, only the local tensors (``local_tensors``: the text prompt's local rows, the
visual prompt's local ring) and the head (``head.weight``, ``head.bias``) are trained, for a
fixed number of plain AdamW steps on the silo's own training split with the federation's
batch size and learning rates; the global and cluster segments and every other parameter
(LoRA adapters, backbone weights) stay frozen. The copy is then evaluated. Models without a
local segment (LoRA, full fine-tuning, a prompt with ``n_local = 0``) train their head only.

The copy (:func:`personal_copy`) shares every frozen module of the live model (the backbone,
so that hosted silos still train and evaluate in one pass) and owns copies of everything
that trains. Nothing of the pass reaches the live model: its tensors, its trainer's batch
order and call counter, its modules' training flags and the floating buffers of the shared
modules (BatchNorm statistics) are as they were when the pass ends, so the personal file
written after the evaluation, the next round's training and its upload are those of a
federation without the pass.

Privacy. The pass runs without Opacus, also for a DP-SGD silo: the copy's trainer is a plain
:class:`~fedprompt_client_agent.training.trainer.LocalTrainer` (``BaseTrainer.twin``), the
silo's Opacus-wrapped trainer, its optimizer state and its accountant are never touched, and
the pass spends nothing of the silo's ε. Nothing of the pass leaves the silo except the
evaluation metrics of the copy, which the coordinator receives as it receives every
evaluation today. Those metrics are not covered by the silo's record-level (ε, δ) of DP-SGD:
the copy was fitted to the training records without noise, so its test and validation scores
say (a little) about them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from fedprompt.tensor_names import HEAD_KEYS
from fedprompt_client_agent.training.trainer import BaseTrainer

__all__ = ["PersonalCopy", "personal_copy", "personal_copy_of", "personal_views"]

logger = logging.getLogger(__name__)


class _PersonalModel(Protocol):
    """What the pass reads of a model: its live local and shared tensors."""

    def local_tensors(self) -> dict[str, torch.Tensor]: ...

    def shared_tensors(self) -> dict[str, torch.Tensor]: ...


def personal_views(model: _PersonalModel) -> dict[str, torch.Tensor]:
    """The tensors a personalization pass trains: the local ones, then the head's.

    Parameters
    ----------
    model
        An adapted model (the state API of :mod:`~fedprompt_client_agent.models.state`).

    Returns
    -------
    dict of str to torch.Tensor
        Live views (``prompt.local`` when the model has a local segment, ``head.weight``,
        ``head.bias``).

    Raises
    ------
    ValueError
        If the model has neither local tensors nor a head.
    """
    views = dict(model.local_tensors())
    shared = model.shared_tensors()
    views.update({key: shared[key] for key in HEAD_KEYS if key in shared})
    if not views:
        raise ValueError("the model has neither a local segment nor a head to personalize")
    return views


@dataclass(eq=False)
class PersonalCopy:
    """A model copy whose local tensors and head train, and the plain trainer of it.

    Attributes
    ----------
    trainer : BaseTrainer
        The copy's trainer (``trainer.model`` is the copy); configure it and train it.
    trained : tuple of str
        The names of the tensors that train (``personal_views``).
    """

    trainer: BaseTrainer[Any]
    trained: tuple[str, ...]
    _partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]

    def restore_frozen(self) -> None:
        """Put back, bit for bit, every frozen element of a partly trained parameter.

        The gradient of those elements is masked to zero, so with AdamW's default weight
        decay of 0 they never move; this makes it exact for any optimizer setting.
        """
        with torch.no_grad():
            for param, mask, original in self._partial:
                param.copy_(torch.where(mask, param, original))


def personal_copy_of(trainer: BaseTrainer[Any]) -> PersonalCopy:
    """A copy of the trainer's model that trains only its local tensors and head.

    Use :func:`personal_copy` (a context that also restores what the copy shares).

    Parameters
    ----------
    trainer : BaseTrainer
        The silo's trainer; its model is copied, never changed.

    Returns
    -------
    PersonalCopy
        The copy and its plain trainer (``trainer.twin``).

    Raises
    ------
    ValueError
        If the model has nothing to personalize, or a trained tensor is a view of a
        parameter that is not contiguous.
    """
    live = trainer.model
    model = _copy_sharing_frozen(live)
    views = personal_views(model)
    partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue  # frozen already (a shared backbone weight)
        mask = _covered(param, views.values())
        if not bool(mask.any()):
            param.requires_grad_(False)  # the copy's own: the live parameter keeps its flag
        elif not bool(mask.all()):
            param.register_hook(lambda grad, mask=mask: grad * mask)
            partial.append((param, mask, param.detach().clone()))
    return PersonalCopy(trainer=trainer.twin(model), trained=tuple(views), _partial=partial)


@contextlib.contextmanager
def personal_copy(trainer: BaseTrainer[Any]) -> Iterator[PersonalCopy]:
    """A :func:`personal_copy_of` the trainer's model, for the duration of a pass.

    On exit (also after an error) the live model's modules get their training flags back,
    and the modules the copy shares get their floating buffers back (BatchNorm statistics
    that a copy in training mode would update).

    Parameters
    ----------
    trainer : BaseTrainer
        The silo's trainer.

    Yields
    ------
    PersonalCopy
        The copy; train it, call ``restore_frozen``, evaluate it.
    """
    live = trainer.model
    modes = [(module, module.training) for module in live.modules()]
    buffers = [
        (buffer, buffer.detach().clone())
        for module in _frozen_modules(live)
        for buffer in module.buffers(recurse=False)
        if buffer.is_floating_point()
    ]
    try:
        yield personal_copy_of(trainer)
    finally:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)
        for module, mode in modes:
            module.training = mode


def _frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Submodules with parameters, none of them trainable (a frozen backbone and its parts)."""
    frozen = []
    for module in model.modules():
        if module is model:
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.append(module)
    return frozen


def _copy_sharing_frozen(model: nn.Module) -> Any:
    """A deep copy of ``model`` that shares its frozen submodules and frozen parameters.

    Trainable parameters (and the modules holding them) are copied; a frozen module (with
    its parameters and buffers) is the same object in both, so hosted copies keep their
    process's one backbone.
    """
    memo: dict[int, Any] = {}
    for module in _frozen_modules(model):
        memo[id(module)] = module
        for tensor in (*module.parameters(), *module.buffers()):
            memo[id(tensor)] = tensor
    for param in model.parameters():
        if not param.requires_grad:
            memo[id(param)] = param
    return copy.deepcopy(model, memo)


def _covered(param: torch.Tensor, views: Iterable[torch.Tensor]) -> torch.Tensor:
    """A boolean mask of the elements of ``param`` that one of ``views`` looks at."""
    mask = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
    storage = param.untyped_storage().data_ptr()
    for view in views:
        if view.untyped_storage().data_ptr() != storage:
            continue
        if not param.is_contiguous():
            raise ValueError("a personalized tensor is a view of a non-contiguous parameter")
        offset = view.storage_offset() - param.storage_offset()
        mask.as_strided(view.shape, view.stride(), offset).fill_(True)
    return mask

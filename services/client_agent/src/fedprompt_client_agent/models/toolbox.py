"""The torch toolbox every adapted model shares: devices, autocast, head init, trainable checks.

Nothing here knows a model: these are the small pieces that the prompt, visual prompt,
LoRA and full fine-tuning families (and the trainers) have in common, as peft's
``PromptEmbedding`` knows nothing of devices.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "autocast",
    "init_linear_head",
    "module_device",
    "require_prompt_and_head_trainable",
    "resolve_device",
    "trainable_mismatch",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a concrete device.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device
        The device to use.

    Raises
    ------
    RuntimeError
        If CUDA is requested but not available.
    ValueError
        For any other device string.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); use 'cpu' or 'auto'"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda'")
    return resolved


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Return bfloat16 autocast on CUDA and a no-op context (fp32) on CPU.

    Parameters
    ----------
    device : torch.device
        Where the model runs.

    Returns
    -------
    contextlib.AbstractContextManager
        The context to run the forward pass in.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def init_linear_head(head: nn.Linear, generator: torch.Generator) -> None:
    """Draw a classification head from a seeded generator: weight uniform, bias zero.

    The weight is drawn on the CPU, ``[out_features, in_features]`` uniform in
    ``±1 / sqrt(in_features)``, so equal seeds give equal heads on every device.

    Parameters
    ----------
    head : torch.nn.Linear
        The head, changed in place.
    generator : torch.Generator
        Seeded CPU generator.
    """
    bound = 1.0 / math.sqrt(head.in_features)
    weight = (
        torch.rand(head.out_features, head.in_features, generator=generator) * (2 * bound) - bound
    )
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()


def trainable_mismatch(module: nn.Module, groups: Sequence[torch.Tensor]) -> tuple[list[str], int]:
    """Compare the parameters that require gradients with the declared parameter groups.

    Parameters
    ----------
    module : torch.nn.Module
        The model.
    groups : sequence of torch.Tensor
        Every parameter the trainer's groups hold.

    Returns
    -------
    tuple
        ``(stray, frozen)``: names of trainable parameters outside the groups, and
        how many parameters in the groups do not require gradients.
    """
    expected = {id(p) for p in groups}
    stray = [
        name for name, p in module.named_parameters() if p.requires_grad and id(p) not in expected
    ]
    return stray, sum(1 for p in groups if not p.requires_grad)


def require_prompt_and_head_trainable(module: nn.Module, groups: Sequence[torch.Tensor]) -> None:
    """Fail loudly if anything but the prompt and the head would train.

    Parameters
    ----------
    module : torch.nn.Module
        A prompt model.
    groups : sequence of torch.Tensor
        Its prompt and head parameters.

    Raises
    ------
    RuntimeError
        If a parameter outside ``groups`` requires gradients or one inside does not.
    """
    stray, frozen = trainable_mismatch(module, groups)
    if stray or frozen:
        raise RuntimeError(
            f"trainable parameters must be exactly the prompt and head; stray: {stray}"
        )


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (CPU for a module without any).

    Parameters
    ----------
    module : torch.nn.Module
        Any module.

    Returns
    -------
    torch.device
        Where its first parameter lives.
    """
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


_T = TypeVar("_T")
_SHARED: dict[Hashable, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_instance(key: Hashable, factory: Callable[[], _T]) -> _T:
    """Build an object once per process and key, and hand the same object to every caller.

    Agents hosted in one process share the frozen backbone of their soft prompts this way:
    one copy in memory instead of one per silo, and the precondition of training several
    silos in one pass (:mod:`fedprompt_client_agent.training.multi_silo`).

    Parameters
    ----------
    key : Hashable
        What identifies the object (e.g. the weights' resolved path and the device).
    factory : callable
        Builds the object the first time.

    Returns
    -------
    object
        The one object of this key.
    """
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = factory()
        shared: _T = _SHARED[key]
        return shared


def check_shared_pass(
    models: Sequence[Any], batches: Sequence[object], *, layout: Callable[[Any], object]
) -> None:
    """Refuse a shared backbone pass whose models cannot share it.

    Parameters
    ----------
    models : sequence
        One model per batch.
    batches : sequence
        The batches.
    layout : callable
        What the models must have in common besides their backbone object (e.g. the prompt
        length or the image spec).

    Raises
    ------
    ValueError
        If the lists differ in length or are empty, or the models do not share one backbone
        object and layout.
    """
    if len(models) != len(batches) or not models:
        raise ValueError(
            f"need one batch per model, got {len(models)} models, {len(batches)} batches"
        )
    first = models[0]
    for model in models[1:]:
        if model.backbone is not first.backbone or layout(model) != layout(first):
            raise ValueError("forward_many needs models that share one backbone and layout")

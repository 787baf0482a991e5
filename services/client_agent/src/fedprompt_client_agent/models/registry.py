"""The model-family registry: which builder makes the model of a (modality, family) pair.

A strategy names the family its clients train (``fedprompt.strategies.StrategySpec.family``:
a soft prompt, LoRA adapters or full fine-tuning); the silo's data names the modality
(text or images). Each family module registers one builder per modality it supports, as
peft's tuners call ``register_peft_method``::

    @register_model_family(Modality.TEXT, ModelFamily.LORA)
    def _text_lora(request: ModelRequest) -> BuiltModel:
        model, tokenizer = build_lora_classifier(request.source, ...)
        return BuiltModel(model=model, tokenizer=tokenizer)

and the runtime asks :func:`model_builder` for the pair, without knowing any family. The
family modules register on import; importing :mod:`fedprompt_client_agent.models` imports
them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedprompt.strategies import ModelFamily
from fedprompt_client_agent.config import Modality

__all__ = [
    "MODEL_FAMILIES",
    "AdaptedModel",
    "BuiltModel",
    "ModelBuilder",
    "ModelRequest",
    "model_builder",
    "register_model_family",
]


class AdaptedModel(Protocol):
    """The state API every adapted model (prompt, LoRA, full) offers the runtime."""

    @property
    def device(self) -> torch.device: ...

    def shared_state(self) -> dict[str, np.ndarray]: ...

    def shared_tensors(self) -> dict[str, torch.Tensor]: ...

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None: ...

    def save_personal(self, path: str | Path) -> Path: ...

    def load_personal(self, path: str | Path) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ModelRequest:
    """What the runtime asks a family builder for.

    Attributes
    ----------
    source : Path
        The frozen model: a Hugging Face folder (text) or a weights file (images).
    num_labels : int
        Number of classes of the head.
    seed : int
        Initialisation seed (equal on every client).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    image_size : int
        Side images are resized to (image families only).
    n_global, n_cluster, n_local : int, optional
        Configured prompt segment sizes (prompt families only); ``None`` keeps the
        family's default.
    share_backbone : bool
        Reuse the process's copy of a frozen backbone (families that never change the
        backbone's weights honour it; the others load their own copy).
    """

    source: Path
    num_labels: int
    seed: int
    device: str
    image_size: int = 32
    n_global: int | None = None
    n_cluster: int | None = None
    n_local: int | None = None
    share_backbone: bool = False

    def segment_sizes(self) -> dict[str, int]:
        """The configured segment sizes by field name (``n_global`` ...), unset ones left out."""
        sizes = {"n_global": self.n_global, "n_cluster": self.n_cluster, "n_local": self.n_local}
        return {name: size for name, size in sizes.items() if size is not None}


@dataclass(frozen=True)
class BuiltModel:
    """A family builder's answer.

    Attributes
    ----------
    model : AdaptedModel
        The model, on the requested device (it also has the trainers' API).
    tokenizer : Any
        The text backbone's tokenizer; ``None`` for image models.
    fingerprint_parts : dict
        What else makes two clients' models compatible (e.g. the segment sizes), added to
        the model fingerprint the federation compares.
    """

    model: AdaptedModel
    tokenizer: Any = None
    fingerprint_parts: dict[str, object] = field(default_factory=dict)


ModelBuilder = Callable[[ModelRequest], BuiltModel]

#: Every registered builder by (modality, family).
MODEL_FAMILIES: dict[tuple[Modality, ModelFamily], ModelBuilder] = {}


def register_model_family(
    modality: Modality, family: ModelFamily
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register the builder of a family's models for one modality (decorator).

    Parameters
    ----------
    modality : Modality
        ``TEXT`` or ``IMAGE``.
    family : ModelFamily
        What the client adapts (``prompt``, ``lora``, ``full``).

    Returns
    -------
    callable
        Decorator that stores the builder and returns it unchanged.

    Raises
    ------
    ValueError
        If the pair is already registered.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        key = (Modality(modality), ModelFamily(family))
        if key in MODEL_FAMILIES:
            raise ValueError(f"model family {family.value!r} for {modality.value} is registered")
        MODEL_FAMILIES[key] = builder
        return builder

    return decorator


def model_builder(modality: Modality, family: ModelFamily) -> ModelBuilder:
    """Look up the builder of a (modality, family) pair.

    Raises
    ------
    ValueError
        If no family module registered the pair, listing the registered ones.
    """
    try:
        return MODEL_FAMILIES[(modality, family)]
    except KeyError:
        known = ", ".join(f"{m.value}/{f.value}" for m, f in sorted(MODEL_FAMILIES))
        raise ValueError(
            f"no {family.value!r} model family for {modality.value} data; registered: {known}"
        ) from None

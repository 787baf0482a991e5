"""The parts of a shared model that are clipped (and reported) one by one.

A level (global, or one cluster) may hold tensors of very different scales: a soft-prompt
segment moves by ~0.5 in a round, a linear head by less, a full model's weights by more.
Each part is clipped per client to its own L2 bound, so one bound never has to fit them all.
The part of a tensor follows from its name (:mod:`fedprompt.tensor_names`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from fedprompt.tensor_names import (
    BACKBONE_PREFIX,
    CLUSTER_PROMPT,
    GLOBAL_PROMPT,
    HEAD_KEYS,
    LORA_PREFIX,
)


class Part(enum.StrEnum):
    """A part of the shared model, as clipping and the round summaries name it."""

    GLOBAL_PROMPT = "global_prompt"
    CLUSTER_PROMPT = "cluster_prompt"
    HEAD = "head"
    LORA = "lora"
    BACKBONE = "backbone"
    OTHER = "other"


def part_of(name: str) -> Part:
    """The part a shared tensor belongs to, from its name."""
    if name == GLOBAL_PROMPT or name.startswith(GLOBAL_PROMPT + "."):
        return Part.GLOBAL_PROMPT
    if name == CLUSTER_PROMPT or name.startswith(CLUSTER_PROMPT + "."):
        return Part.CLUSTER_PROMPT
    if name in HEAD_KEYS or name.startswith("head."):
        return Part.HEAD
    if name.startswith(LORA_PREFIX):
        return Part.LORA
    if name.startswith(BACKBONE_PREFIX):
        return Part.BACKBONE
    return Part.OTHER


def group_by_part(names: Iterable[str]) -> dict[Part, list[str]]:
    """Tensor names by part, each list sorted; parts in :class:`Part` order."""
    groups: dict[Part, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(part_of(name), []).append(name)
    return {part: groups[part] for part in Part if part in groups}

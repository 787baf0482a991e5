"""The prompt-initialiser registry: how a soft prompt's rows are first drawn.

Each initialiser takes a :class:`PromptInitContext` (the backbone's word embeddings, the
row count and width, one seeded CPU generator) and returns ``[rows, width]`` float32
rows. ``vocab`` copies the embeddings of sampled vocabulary tokens (peft's
SAMPLE_VOCAB), ``random`` draws Gaussian rows and ``text`` repeats the embeddings of an
initialisation text; :func:`register_prompt_initialiser` adds more by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "PROMPT_INITIALISERS",
    "PromptInitContext",
    "PromptInitialiser",
    "register_prompt_initialiser",
]


@dataclass(frozen=True)
class PromptInitContext:
    """What a prompt initialiser may use.

    Attributes
    ----------
    word_embeddings : torch.nn.Module
        The backbone's input embedding (maps token ids to vectors).
    num_rows : int
        Number of virtual tokens to initialise.
    hidden : int
        Embedding width.
    generator : torch.Generator
        Seeded CPU generator; the only source of randomness allowed.
    init_token_ids : tuple of int
        Token ids of an initialisation text (for ``"text"``), else empty.
    """

    word_embeddings: nn.Module
    num_rows: int
    hidden: int
    generator: torch.Generator
    init_token_ids: tuple[int, ...] = ()


PromptInitialiser = Callable[[PromptInitContext], torch.Tensor]
PROMPT_INITIALISERS: dict[str, PromptInitialiser] = {}


def register_prompt_initialiser(name: str) -> Callable[[PromptInitialiser], PromptInitialiser]:
    """Register a prompt initialiser under a name (decorator).

    Parameters
    ----------
    name : str
        Registry key, used as ``PromptClassifier(prompt_init=name)``.

    Returns
    -------
    callable
        Decorator that stores the function and returns it unchanged.
    """

    def decorator(fn: PromptInitialiser) -> PromptInitialiser:
        if name in PROMPT_INITIALISERS:
            raise ValueError(f"prompt initialiser {name!r} is already registered")
        PROMPT_INITIALISERS[name] = fn
        return fn

    return decorator


def _embed_ids(ctx: PromptInitContext, ids: torch.Tensor) -> torch.Tensor:
    """Look token ids up in the word embeddings and return float32 CPU rows."""
    weight = next(iter(ctx.word_embeddings.parameters()))
    with torch.no_grad():
        rows: torch.Tensor = ctx.word_embeddings(ids.to(weight.device))
    return rows.detach().to("cpu", torch.float32).clone()


@register_prompt_initialiser("vocab")
def _init_from_vocab(ctx: PromptInitContext) -> torch.Tensor:
    """Copy the embeddings of uniformly sampled vocabulary tokens (peft's SAMPLE_VOCAB, seeded)."""
    vocab = next(iter(ctx.word_embeddings.parameters())).shape[0]
    ids = torch.randint(0, vocab, (ctx.num_rows,), generator=ctx.generator)
    return _embed_ids(ctx, ids)


@register_prompt_initialiser("random")
def _init_random(ctx: PromptInitContext) -> torch.Tensor:
    """Draw Gaussian rows with the standard deviation of the word embeddings."""
    std = float(next(iter(ctx.word_embeddings.parameters())).detach().float().std())
    return torch.randn(ctx.num_rows, ctx.hidden, generator=ctx.generator) * std


@register_prompt_initialiser("text")
def _init_from_text(ctx: PromptInitContext) -> torch.Tensor:
    """Repeat the embeddings of an initialisation text (peft's TEXT init)."""
    if not ctx.init_token_ids:
        raise ValueError(
            "prompt_init='text' needs init_token_ids (e.g. build_prompt_classifier(init_text=...))"
        )
    reps = math.ceil(ctx.num_rows / len(ctx.init_token_ids))
    ids = torch.tensor((list(ctx.init_token_ids) * reps)[: ctx.num_rows], dtype=torch.long)
    return _embed_ids(ctx, ids)

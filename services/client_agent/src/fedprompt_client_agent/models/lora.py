"""LoRA adapters: a frozen backbone with peft low-rank adapters and a linear head.

``LoraClassifier`` injects peft LoRA adapters (``LoraConfig(r=8, lora_alpha=16,
lora_dropout=0.0)``) into chosen linear or convolution layers; BERT-type encoders get the
attention ``query``/``value`` projections, Llama-type causal LMs ``q_proj``/``v_proj``.
The travelling tensors are every LoRA matrix, keyed ``"lora.<module>.lora_A.weight"`` /
``"lora.<module>.lora_B.weight"`` (peft's adapter name dropped), plus ``"head.weight"``
and ``"head.bias"``. Suggested learning rate of the adapters (the trainer's ``lr``):
``LORA_SUGGESTED_LR`` (1e-3 to 5e-3 works). It shares its base, feature functions and
image wiring with full fine-tuning (:mod:`.headed`).

peft builds a convolution adapter as ``type(base_layer)(in_channels, r, kernel_size,
stride, padding, bias=False)``, so a ``Conv2d`` subclass must keep ``nn.Conv2d``'s
constructor signature to be a LoRA target (EfficientNet's keyword-only ``SamePadConv2d``
does not; the image wiring swaps its 1x1 layers for plain ``nn.Conv2d``). Prefer 1x1
convolutions: for a grouped (depthwise) convolution peft's ``lora_B`` inherits the groups.

Builders: :func:`build_lora_classifier` (a local Hugging Face folder) and
:func:`build_vision_lora_classifier` (EfficientNet-Lite0); both are registered for the
``lora`` family (:mod:`.registry`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import PreTrainedModel

from fedprompt.strategies import ModelFamily
from fedprompt.tensor_names import LORA_PREFIX
from fedprompt_client_agent.models.backbone import BackboneKind, Tokenizer, load_backbone
from fedprompt_client_agent.models.headed import (
    FeatureFn,
    HeadedClassifier,
    ImageSpec,
    load_image_backbone,
    log_image_baseline,
    register_weight_family,
    transformer_wiring,
)
from fedprompt_client_agent.models.toolbox import module_device

__all__ = [
    "LORA_SUGGESTED_LR",
    "VISION_LORA_TARGETS",
    "LoraClassifier",
    "build_lora_classifier",
    "build_vision_lora_classifier",
    "default_lora_targets",
]

logger = logging.getLogger(__name__)

LORA_SUGGESTED_LR: Final = 2e-3
VISION_LORA_TARGETS: Final = ("_project_conv", "_conv_head")
"""EfficientNet-Lite0's 1x1 convolutions that get adapters by default."""

_ADAPTER: Final = "default"
_LORA_MATRICES: Final = frozenset({"lora_A", "lora_B"})
_TARGET_FALLBACKS: Final = (("query", "value"), ("q_proj", "v_proj"))


def default_lora_targets(backbone: nn.Module) -> tuple[str, ...]:
    """Choose the LoRA target modules of a Hugging Face backbone.

    peft's own table by ``config.model_type`` is used when its module names occur in the
    model (BERT: ``query``/``value``; Llama, Qwen, Mistral: ``q_proj``/``v_proj``);
    otherwise the first pair among ``query``/``value`` and ``q_proj``/``v_proj`` that
    the model has.

    Parameters
    ----------
    backbone : torch.nn.Module
        The model the adapters will be injected into.

    Returns
    -------
    tuple of str
        Module name suffixes for ``LoraConfig.target_modules``.

    Raises
    ------
    ValueError
        If no known attention projections are found: pass ``target_modules`` explicitly.
    """
    leaves = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    mapped = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(str(model_type))
    if mapped and set(mapped) <= leaves:
        return tuple(mapped)
    for pair in _TARGET_FALLBACKS:
        if set(pair) <= leaves:
            return pair
    raise ValueError(
        f"{type(backbone).__name__}: no query/value or q_proj/v_proj modules found; "
        "pass target_modules explicitly"
    )


class LoraClassifier(HeadedClassifier):
    """A frozen backbone with peft LoRA adapters, features and a linear head.

    The adapters are injected in place with ``peft.inject_adapter_in_model``; every
    other backbone weight is frozen and stays bit-identical. ``lora_A`` is drawn
    from the seed (peft's Kaiming-uniform bound ``1 / sqrt(fan_in)``) and ``lora_B``
    starts at zero, so the untrained model computes exactly the backbone's features.

    Parameters
    ----------
    backbone : torch.nn.Module
        Any module; modified in place (adapters injected, weights frozen).
    features : FeatureFn
        ``features(backbone, *inputs) -> [batch, feature_dim]``.
    feature_dim : int
        Width of the features, the head's input.
    num_labels : int
        Number of classes.
    target_modules : sequence of str
        Module name suffixes (or names) to adapt: ``nn.Linear``, ``nn.Conv2d`` and the
        other layer types peft's LoRA supports.
    seed : int
        Seed of the head and ``lora_A``: equal seeds give equal initial values on every
        client and device.
    r : int
        LoRA rank.
    lora_alpha : int
        LoRA scaling numerator (the update is scaled by ``lora_alpha / r``).
    lora_dropout : float
        Dropout on the adapter input.
    kind : BackboneKind, optional
        The text backbone's kind (informational; ``None`` for other backbones).
    max_text_tokens : int, optional
        Token limit reported to the trainer; ``None`` for non-text backbones.
    backbone_eval : bool
        Keep the backbone in eval mode whatever ``train()`` says (no dropout, frozen
        BatchNorm statistics).
    spec : ImageSpec, optional
        Input layout of an image backbone (``VisionTrainer`` reads ``spec.image_size``).

    Raises
    ------
    ValueError
        If no module matches ``target_modules`` or a size is invalid.
    """

    personal_format = "fedprompt-personal-lora/1"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        features: FeatureFn,
        feature_dim: int,
        num_labels: int,
        target_modules: Sequence[str],
        seed: int = 0,
        r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        kind: BackboneKind | None = None,
        max_text_tokens: int | None = None,
        backbone_eval: bool = False,
        spec: ImageSpec | None = None,
    ) -> None:
        if isinstance(target_modules, str) or not target_modules:
            raise ValueError("target_modules must be a non-empty sequence of module names")
        config = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=list(target_modules),
        )
        backbone.requires_grad_(False)
        _inject_lora(backbone, config)
        super().__init__(
            backbone,
            features=features,
            feature_dim=feature_dim,
            num_labels=num_labels,
            kind=kind,
            max_text_tokens=max_text_tokens,
            backbone_eval=backbone_eval,
            spec=spec,
        )
        self.lora_config = config
        self._finish(seed=seed)
        logger.info(
            "LoRA r=%d on %d modules: %d adapter parameters",
            r,
            len(self._lora_named()) // 2,
            sum(p.numel() for p in self.prompt_parameters()),
        )

    @classmethod
    def from_transformer(
        cls,
        backbone: PreTrainedModel,
        *,
        kind: BackboneKind | str,
        num_labels: int,
        seed: int = 0,
        r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: Sequence[str] | None = None,
    ) -> LoraClassifier:
        """Wrap a Hugging Face base model (e.g. from ``load_backbone``).

        Parameters
        ----------
        backbone : transformers.PreTrainedModel
            Base model without a task head.
        kind : BackboneKind or str
            Encoder (mean pooling) or causal LM (last token).
        num_labels : int
            Number of classes.
        seed : int
            Initialisation seed.
        r, lora_alpha, lora_dropout : int, int, float
            LoRA settings.
        target_modules : sequence of str, optional
            Defaults to ``default_lora_targets(backbone)``.

        Returns
        -------
        LoraClassifier
            The classifier; features are ``TransformerFeatures(kind)``.
        """
        return cls(
            backbone,
            **transformer_wiring(backbone, kind),
            num_labels=num_labels,
            target_modules=(
                default_lora_targets(backbone) if target_modules is None else target_modules
            ),
            seed=seed,
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
        )

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return every LoRA matrix (the trainer's ``lr`` applies; see ``LORA_SUGGESTED_LR``)."""
        return [param for _, param in self._lora_named()]

    def base_parameters(self) -> dict[str, torch.Tensor]:
        """Return the frozen backbone weights by name (everything but the adapters)."""
        return {
            name: param
            for name, param in self.backbone.named_parameters()
            if not _LORA_MATRICES.intersection(name.split("."))
        }

    def _lora_named(self) -> list[tuple[str, nn.Parameter]]:
        """The adapter parameters with their backbone-relative names."""
        return [
            (name, param)
            for name, param in self.backbone.named_parameters()
            if _LORA_MATRICES.intersection(name.split("."))
        ]

    def _backbone_views(self) -> dict[str, torch.Tensor]:
        """``lora.<module>.lora_{A,B}.weight`` for every adapter."""
        return {
            f"{LORA_PREFIX}{_drop_adapter_name(name)}": param for name, param in self._lora_named()
        }

    def _initialise_backbone_side(self, generator: torch.Generator) -> None:
        """``lora_A`` uniform in ``±1 / sqrt(fan_in)`` (peft's default), ``lora_B`` zero."""
        with torch.no_grad():
            for name, param in self._lora_named():
                if ".lora_B." in f".{name}.":
                    param.zero_()
                    continue
                fan_in = param[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                draw = torch.rand(param.shape, generator=generator) * (2 * bound) - bound
                param.copy_(draw.to(param.device, param.dtype))


def build_lora_classifier(
    model_dir: str | Path | None = None,
    *,
    num_labels: int,
    seed: int = 0,
    device: str | torch.device = "auto",
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> tuple[LoraClassifier, Tokenizer]:
    """Load a local Hugging Face model folder and add LoRA adapters and a head.

    Parameters
    ----------
    model_dir : str or Path, optional
        Local model folder; defaults to the bundled all-MiniLM-L6-v2.
    num_labels : int
        Number of classes.
    seed : int
        Initialisation seed.
    device : str or torch.device
        See ``resolve_device``.
    r, lora_alpha, lora_dropout : int, int, float
        LoRA settings.
    target_modules : sequence of str, optional
        Defaults to ``default_lora_targets`` (``query``/``value`` or ``q_proj``/``v_proj``).

    Returns
    -------
    tuple
        ``(classifier, tokenizer)``.
    """
    backbone, tokenizer, kind = load_backbone(model_dir, device=device)
    model = LoraClassifier.from_transformer(
        backbone,
        kind=kind,
        num_labels=num_labels,
        seed=seed,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
    )
    return model, tokenizer


def build_vision_lora_classifier(
    weights: str | Path | None = None,
    *,
    num_labels: int,
    image_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "auto",
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: Sequence[str] = VISION_LORA_TARGETS,
    backbone_eval: bool = True,
) -> LoraClassifier:
    """Load EfficientNet-Lite0 and add LoRA adapters and a head, for the LoRA baseline.

    See ``load_image_backbone`` for the input layout and the convolutions peft can wrap.

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    num_labels : int
        Number of classes.
    image_size : int
        Side the images are resized to (at least ``MIN_INPUT_SIZE``).
    seed : int
        Initialisation seed.
    device : str or torch.device
        See ``resolve_device``.
    r, lora_alpha : int
        LoRA rank and scaling numerator.
    target_modules : sequence of str
        Convolutions that get adapters.
    backbone_eval : bool
        Keep BatchNorm statistics frozen (eval mode), as the visual prompt model does.

    Returns
    -------
    LoraClassifier
        The classifier, on ``device``.
    """
    backbone, wiring = load_image_backbone(weights, image_size=image_size, device=device)
    model = LoraClassifier(
        backbone,
        **wiring,
        num_labels=num_labels,
        target_modules=target_modules,
        seed=seed,
        r=r,
        lora_alpha=lora_alpha,
        backbone_eval=backbone_eval,
    )
    log_image_baseline(model, family=ModelFamily.LORA, image_size=image_size)
    return model


register_weight_family(
    ModelFamily.LORA, text=build_lora_classifier, image=build_vision_lora_classifier
)


def _inject_lora(backbone: nn.Module, config: LoraConfig) -> None:
    """Inject LoRA layers in place, without touching the caller's random state."""
    device = module_device(backbone)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated `is_gradient_checkpointing` while wrapping.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        inject_adapter_in_model(config, backbone, adapter_name=_ADAPTER)


def _drop_adapter_name(name: str) -> str:
    """``a.query.lora_A.default.weight`` -> ``a.query.lora_A.weight``."""
    parts = name.split(".")
    kept = [
        part
        for i, part in enumerate(parts)
        if not (i > 0 and part == _ADAPTER and parts[i - 1] in _LORA_MATRICES)
    ]
    return ".".join(kept)

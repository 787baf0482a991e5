"""Baseline model families for honest comparison: peft LoRA adapters and full fine-tuning.

Both wrap a backbone with the same linear head as
:class:`~fedprompt_client_agent.model.PromptClassifier` and expose the same state and
parameter-group API that ``LocalTrainer`` and the federation code use:

``LoraClassifier``
    The frozen backbone with peft LoRA adapters (``LoraConfig(r=8, lora_alpha=16,
    lora_dropout=0.0)``) on chosen linear or convolution layers; BERT-type encoders get
    the attention ``query``/``value`` projections, Llama-type causal LMs ``q_proj``/
    ``v_proj``. The travelling tensors are every LoRA matrix, keyed
    ``"lora.<module>.lora_A.weight"`` / ``"lora.<module>.lora_B.weight"`` (peft's adapter
    name dropped), plus ``"head.weight"`` and ``"head.bias"``. Suggested learning rate of
    the adapters (the trainer's ``lr``): ``LORA_SUGGESTED_LR`` (1e-3 to 5e-3 works).

``FullFinetuneClassifier``
    Every backbone weight trains and travels, keyed ``"backbone.<parameter name>"``, plus
    the head: the communication reference (about 91 MB of float32 for all-MiniLM-L6-v2).
    Suggested ``lr``: ``FULL_FINETUNE_SUGGESTED_LR`` (2e-5 to 5e-5 works).

Neither has private tensors (``local_state()`` is empty). Their personal state, written by
``save_personal``, is the shared state plus the backbone's floating-point persistent
buffers (``"buffer.<name>"``, e.g. BatchNorm running statistics; none for MiniLM).

Any backbone works through the generic constructors, which take an ``nn.Module`` and a
feature function ``features(backbone, *inputs) -> [batch, feature_dim]``; the model's
``forward(*inputs)`` returns ``head(features(backbone, *inputs))``. For Hugging Face
models, ``TransformerFeatures`` (mean pooling for encoders, last token for causal LMs, as
in ``PromptClassifier``) and the ``from_transformer`` class methods do the wiring;
``build_vision_adapter_classifier`` does it for EfficientNet-Lite0 (``ImageFeatures``:
images in ``[0, 1]``, as ``VisionTrainer`` passes them). By hand, for another image
backbone::

    def my_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return backbone.pooled(images)  # [batch, 512]

    model = LoraClassifier(
        my_cnn,
        features=my_features,
        feature_dim=512,
        num_labels=10,
        target_modules=["layer4.0.conv1", "fc_proj"],  # names or name suffixes
        backbone_eval=True,  # frozen BatchNorm statistics, as in the visual prompt model
        spec=ImageSpec(image_size=64),  # what VisionTrainer resizes to
    )

peft builds a convolution adapter as ``type(base_layer)(in_channels, r, kernel_size,
stride, padding, bias=False)``, so a ``Conv2d`` subclass must keep ``nn.Conv2d``'s
constructor signature to be a LoRA target (EfficientNet's keyword-only ``SamePadConv2d``
does not; the vision builder swaps its 1x1 layers for plain ``nn.Conv2d``). Prefer 1x1
convolutions: for a grouped (depthwise) convolution peft's ``lora_B`` inherits the groups.
``FullFinetuneClassifier(backbone, features=..., feature_dim=..., num_labels=...)``
works the same way (``backbone_eval=False`` lets BatchNorm statistics adapt; they are
saved in the personal state but do not travel).
"""

from __future__ import annotations

import abc
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self, TypedDict, cast

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import PreTrainedModel

from fedprompt_client_agent.efficientnet_lite import (
    FEATURE_DIM,
    MIN_INPUT_SIZE,
    EfficientNetLite0,
    SamePadConv2d,
    load_efficientnet_lite0,
    normalize,
)
from fedprompt_client_agent.model import (
    BackboneKind,
    Tokenizer,
    autocast,
    init_linear_head,
    input_embedding_weight,
    load_backbone,
    pool_hidden,
    resolve_device,
    trainable_mismatch,
)
from fedprompt_client_agent.state_io import TensorStateMixin, preview_keys
from fedprompt_client_agent.vision_model import resize_images

__all__ = [
    "FULL_FINETUNE_SUGGESTED_LR",
    "LORA_SUGGESTED_LR",
    "VISION_LORA_TARGETS",
    "FeatureFn",
    "FullFinetuneClassifier",
    "ImageFeatures",
    "ImageSpec",
    "LoraClassifier",
    "TransformerFeatures",
    "build_full_classifier",
    "build_lora_classifier",
    "build_vision_adapter_classifier",
    "default_lora_targets",
]

logger = logging.getLogger(__name__)

FeatureFn = Callable[..., torch.Tensor]
"""``features(backbone, *inputs) -> [batch, feature_dim]``: the backbone's pooled features."""

LORA_SUGGESTED_LR: Final = 2e-3
FULL_FINETUNE_SUGGESTED_LR: Final = 3e-5
VISION_LORA_TARGETS: Final = ("_project_conv", "_conv_head")
"""EfficientNet-Lite0's 1x1 convolutions that get adapters by default."""

_ADAPTER: Final = "default"
_LORA_MATRICES: Final = frozenset({"lora_A", "lora_B"})
_TARGET_FALLBACKS: Final = (("query", "value"), ("q_proj", "v_proj"))


@dataclass(frozen=True)
class TransformerFeatures:
    """Pooled features of a Hugging Face base model, pooled as ``PromptClassifier`` does.

    Called as ``features(backbone, input_ids, attention_mask)`` with right-padded
    ``[batch, seq]`` tensors; returns ``[batch, hidden]``: the mean over non-padding
    positions (encoder) or the last non-padding position (causal LM).

    Attributes
    ----------
    kind : BackboneKind
        Decides the pooling.
    """

    kind: BackboneKind

    def __call__(
        self, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Run the backbone and pool its last hidden state.

        Parameters
        ----------
        backbone : torch.nn.Module
            A Hugging Face base model (no task head).
        input_ids : torch.Tensor
            ``[batch, seq]`` token ids, padding on the right.
        attention_mask : torch.Tensor
            ``[batch, seq]``, 1 for real tokens and 0 for padding.

        Returns
        -------
        torch.Tensor
            ``[batch, hidden]`` pooled features.
        """
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden(hidden, attention_mask, kind=self.kind)


@dataclass(frozen=True)
class ImageSpec:
    """Input layout of an image backbone (``VisionTrainer`` reads ``spec.image_size``).

    Attributes
    ----------
    image_size : int
        Side the images are resized to before the backbone; at least ``MIN_INPUT_SIZE``.
    """

    image_size: int = 32

    def __post_init__(self) -> None:
        """Reject sizes the backbone cannot take."""
        if isinstance(self.image_size, bool) or self.image_size < MIN_INPUT_SIZE:
            raise ValueError(
                f"image_size must be an integer >= {MIN_INPUT_SIZE}, got {self.image_size!r}"
            )


@dataclass(frozen=True)
class ImageFeatures:
    """Pooled EfficientNet-Lite0 features of images in ``[0, 1]``.

    Called as ``features(backbone, images)`` with ``[batch, 1 or 3, H, W]`` float images:
    resized to ``spec.image_size`` if needed, grayscale repeated to RGB, normalised
    for the backbone, then ``backbone.features`` (``[batch, FEATURE_DIM]``).

    Attributes
    ----------
    spec : ImageSpec
        The input size.
    """

    spec: ImageSpec

    def __call__(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Prepare the images like the visual prompt model does and pool the feature map.

        Parameters
        ----------
        backbone : torch.nn.Module
            An ``EfficientNetLite0``.
        images : torch.Tensor
            ``[batch, 1 or 3, H, W]`` float images in ``[0, 1]``.

        Returns
        -------
        torch.Tensor
            ``[batch, FEATURE_DIM]`` features.

        Raises
        ------
        ValueError
            If the tensor is not ``[batch, 1 or 3, H, W]``.
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected [batch, 1 or 3, height, width] images, got {tuple(images.shape)}"
            )
        size = self.spec.image_size
        x = images.to(_module_device(backbone), torch.float32)
        if tuple(x.shape[-2:]) != (size, size):
            x = resize_images(x, size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return cast(EfficientNetLite0, backbone).features(normalize(x))


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


class _HeadedClassifier(TensorStateMixin, nn.Module):
    """Backbone + feature function + linear head, with the federation's state API.

    Subclasses decide which backbone parameters train and travel (``_backbone_views``,
    ``prompt_parameters``), and call ``_finish`` at the end of their constructor.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        features: FeatureFn,
        feature_dim: int,
        num_labels: int,
        kind: BackboneKind | None,
        max_text_tokens: int | None,
        backbone_eval: bool,
        spec: ImageSpec | None,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.num_labels = num_labels
        self.hidden_size = feature_dim
        self.kind = kind
        self.backbone_eval = backbone_eval
        self.spec = spec
        self._max_text_tokens = max_text_tokens
        self._features = features
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_labels)

    # ----------------------------------------------------------------- structure

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.head.weight.device

    @property
    def max_text_tokens(self) -> int | None:
        """Longest tokenised text the backbone's position embeddings allow (no prompt here)."""
        return self._max_text_tokens

    @abc.abstractmethod
    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the trainable backbone-side parameters (the trainer's ``lr`` group)."""

    def head_parameters(self) -> list[torch.Tensor]:
        """Return the trainable head parameters (weight and bias)."""
        return [self.head.weight, self.head.bias]

    def trainable_parameter_names(self) -> list[str]:
        """Return the names of all parameters that require gradients."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> Self:
        """Set the training mode; with ``backbone_eval`` the backbone always stays in eval mode.

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
        if self.backbone_eval:
            self.backbone.eval()
        return self

    # ----------------------------------------------------------------- forward

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Classify a batch: ``head(features(backbone, *inputs))``.

        Parameters
        ----------
        *inputs : torch.Tensor
            What the feature function takes; for text backbones ``input_ids`` and
            ``attention_mask`` (``[batch, seq]``, right-padded).

        Returns
        -------
        torch.Tensor
            ``[batch, num_labels]`` float32 logits.
        """
        with autocast(self.device):
            logits: torch.Tensor = self.head(self._features(self.backbone, *inputs))
        return logits.float()

    # ----------------------------------------------------------------- state exchange

    @abc.abstractmethod
    def _backbone_views(self) -> dict[str, torch.Tensor]:
        """Map each travelling backbone-side key to the parameter that holds it."""

    def _shared_views(self) -> dict[str, torch.Tensor]:
        """The backbone-side views, then the head's two tensors (keyed as in ``PromptClassifier``)."""
        return {
            **self._backbone_views(),
            "head.weight": self.head.weight,
            "head.bias": self.head.bias,
        }

    def _local_views(self) -> dict[str, torch.Tensor]:
        """No private tensors in these baselines."""
        return {}

    def _personal_views(self) -> dict[str, torch.Tensor]:
        """Shared views plus the backbone's floating-point persistent buffers."""
        views = self._shared_views()
        persistent = set(self.backbone.state_dict(keep_vars=True))
        for name, buffer in self.backbone.named_buffers():
            if name in persistent and buffer.is_floating_point():
                views[f"buffer.{name}"] = buffer
        return views

    def _personal_metadata(self) -> dict[str, str]:
        """Feature width and label count of the personal file."""
        return {"feature_dim": str(self.hidden_size), "num_labels": str(self.num_labels)}

    # ----------------------------------------------------------------- internals

    def _initialise_backbone_side(self, generator: torch.Generator) -> None:
        """Draw the backbone-side trainable tensors from ``generator`` (nothing by default)."""

    def _finish(self, *, seed: int) -> None:
        """Seeded initialisation, device placement, mode and a trainability check."""
        generator = torch.Generator().manual_seed(seed)
        init_linear_head(self.head, generator)
        self._initialise_backbone_side(generator)
        self.to(_module_device(self.backbone))
        self.train()
        stray, frozen = trainable_mismatch(
            self, [*self.prompt_parameters(), *self.head_parameters()]
        )
        if stray or frozen or not self.prompt_parameters():
            raise RuntimeError(
                f"{type(self).__name__}: trainable parameters do not match the declared groups; "
                f"stray: {preview_keys(stray)}, frozen in a group: {frozen}"
            )


class LoraClassifier(_HeadedClassifier):
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
            **_transformer_wiring(backbone, kind),
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
        return {f"lora.{_drop_adapter_name(name)}": param for name, param in self._lora_named()}

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


class FullFinetuneClassifier(_HeadedClassifier):
    """Every backbone weight trainable, features and a linear head: the communication reference.

    Every parameter of the backbone travels (``"backbone.<name>"``), with the head; buffers
    (position ids, BatchNorm statistics) do not. The backbone keeps its pretrained weights;
    only the head is drawn from the seed.

    Parameters
    ----------
    backbone : torch.nn.Module
        Any module; all its parameters are set to require gradients.
    features : FeatureFn
        ``features(backbone, *inputs) -> [batch, feature_dim]``.
    feature_dim : int
        Width of the features, the head's input.
    num_labels : int
        Number of classes.
    seed : int
        Seed of the head.
    kind : BackboneKind, optional
        The text backbone's kind (informational; ``None`` for other backbones).
    max_text_tokens : int, optional
        Token limit reported to the trainer; ``None`` for non-text backbones.
    backbone_eval : bool
        Keep the backbone in eval mode whatever ``train()`` says.
    frozen_modules : sequence of str
        Submodules that stay frozen and do not travel, e.g. an unused task head such as
        EfficientNet's ImageNet classifier ``"_fc"``.
    spec : ImageSpec, optional
        Input layout of an image backbone (``VisionTrainer`` reads ``spec.image_size``).

    Raises
    ------
    AttributeError
        If a name in ``frozen_modules`` is not a submodule.
    """

    personal_format = "fedprompt-personal-full/1"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        features: FeatureFn,
        feature_dim: int,
        num_labels: int,
        seed: int = 0,
        kind: BackboneKind | None = None,
        max_text_tokens: int | None = None,
        backbone_eval: bool = False,
        frozen_modules: Sequence[str] = (),
        spec: ImageSpec | None = None,
    ) -> None:
        backbone.requires_grad_(True)
        for name in frozen_modules:
            backbone.get_submodule(name).requires_grad_(False)
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
        self._finish(seed=seed)

    @classmethod
    def from_transformer(
        cls,
        backbone: PreTrainedModel,
        *,
        kind: BackboneKind | str,
        num_labels: int,
        seed: int = 0,
        frozen_modules: Sequence[str] = (),
    ) -> FullFinetuneClassifier:
        """Wrap a Hugging Face base model (e.g. from ``load_backbone``) and unfreeze it.

        Parameters
        ----------
        backbone : transformers.PreTrainedModel
            Base model without a task head.
        kind : BackboneKind or str
            Encoder (mean pooling) or causal LM (last token).
        num_labels : int
            Number of classes.
        seed : int
            Seed of the head.
        frozen_modules : sequence of str
            Submodules kept frozen and at home, e.g. ``("pooler",)``: BERT's pooler is
            never used by mean pooling, so its weights would travel unchanged.

        Returns
        -------
        FullFinetuneClassifier
            The classifier; features are ``TransformerFeatures(kind)``.
        """
        return cls(
            backbone,
            **_transformer_wiring(backbone, kind),
            num_labels=num_labels,
            seed=seed,
            frozen_modules=frozen_modules,
        )

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the trainable backbone parameters (``lr``; see ``FULL_FINETUNE_SUGGESTED_LR``)."""
        return [param for param in self.backbone.parameters() if param.requires_grad]

    def _backbone_views(self) -> dict[str, torch.Tensor]:
        """``backbone.<name>`` for every trainable backbone parameter."""
        return {
            f"backbone.{name}": param
            for name, param in self.backbone.named_parameters()
            if param.requires_grad
        }


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


def build_full_classifier(
    model_dir: str | Path | None = None,
    *,
    num_labels: int,
    seed: int = 0,
    device: str | torch.device = "auto",
    frozen_modules: Sequence[str] = (),
) -> tuple[FullFinetuneClassifier, Tokenizer]:
    """Load a local Hugging Face model folder, unfreeze it and add a head.

    Parameters
    ----------
    model_dir : str or Path, optional
        Local model folder; defaults to the bundled all-MiniLM-L6-v2.
    num_labels : int
        Number of classes.
    seed : int
        Seed of the head.
    device : str or torch.device
        See ``resolve_device``.
    frozen_modules : sequence of str
        Submodules kept frozen and at home (default: none, every weight travels;
        ``("pooler",)`` saves BERT's unused pooler, 591 KB for MiniLM).

    Returns
    -------
    tuple
        ``(classifier, tokenizer)``.
    """
    backbone, tokenizer, kind = load_backbone(model_dir, device=device)
    model = FullFinetuneClassifier.from_transformer(
        backbone, kind=kind, num_labels=num_labels, seed=seed, frozen_modules=frozen_modules
    )
    return model, tokenizer


def build_vision_adapter_classifier(
    weights: str | Path | None = None,
    *,
    num_labels: int,
    mode: Literal["lora", "full"],
    image_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "auto",
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: Sequence[str] = VISION_LORA_TARGETS,
    backbone_eval: bool = True,
) -> LoraClassifier | FullFinetuneClassifier:
    """Load EfficientNet-Lite0 and wrap it for the LoRA or full fine-tuning baseline.

    The model takes ``[batch, 1 or 3, H, W]`` images in ``[0, 1]`` (see ``ImageFeatures``)
    and has ``spec.image_size``, so ``VisionTrainer`` trains it like the visual prompt
    model. The backbone's 1x1 stride-1 ``SamePadConv2d`` layers are swapped for plain
    ``nn.Conv2d`` layers sharing their weights (identical output; peft can wrap those).
    In full mode the ImageNet classifier ``_fc``, which the features never use, stays
    frozen and does not travel.

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    num_labels : int
        Number of classes.
    mode : {"lora", "full"}
        LoRA adapters on ``target_modules``, or every backbone weight trainable.
    image_size : int
        Side the images are resized to (at least ``MIN_INPUT_SIZE``).
    seed : int
        Initialisation seed.
    device : str or torch.device
        See ``resolve_device``.
    r, lora_alpha : int
        LoRA rank and scaling numerator (``mode="lora"`` only).
    target_modules : sequence of str
        Convolutions that get adapters (``mode="lora"`` only).
    backbone_eval : bool
        Keep BatchNorm statistics frozen (eval mode), as the visual prompt model does.

    Returns
    -------
    LoraClassifier or FullFinetuneClassifier
        The classifier, on ``device``.

    Raises
    ------
    ValueError
        For an unknown ``mode`` or a too small ``image_size``.
    """
    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    spec = ImageSpec(image_size=image_size)
    backbone = load_efficientnet_lite0(weights, device=resolve_device(device))
    _plain_pointwise_convs(backbone)
    model: LoraClassifier | FullFinetuneClassifier
    if mode == "lora":
        model = LoraClassifier(
            backbone,
            features=ImageFeatures(spec),
            feature_dim=FEATURE_DIM,
            num_labels=num_labels,
            target_modules=target_modules,
            seed=seed,
            r=r,
            lora_alpha=lora_alpha,
            backbone_eval=backbone_eval,
            spec=spec,
        )
    else:
        model = FullFinetuneClassifier(
            backbone,
            features=ImageFeatures(spec),
            feature_dim=FEATURE_DIM,
            num_labels=num_labels,
            seed=seed,
            backbone_eval=backbone_eval,
            frozen_modules=("_fc",),
            spec=spec,
        )
    logger.info(
        "EfficientNet-Lite0 %s baseline on %s, %d px images, %d labels: %d trainable parameters",
        mode,
        model.device,
        image_size,
        num_labels,
        sum(p.numel() for p in (*model.prompt_parameters(), *model.head_parameters())),
    )
    return model


# --------------------------------------------------------------------------- helpers


def _inject_lora(backbone: nn.Module, config: LoraConfig) -> None:
    """Inject LoRA layers in place, without touching the caller's random state."""
    device = _module_device(backbone)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated `is_gradient_checkpointing` while wrapping.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        inject_adapter_in_model(config, backbone, adapter_name=_ADAPTER)


def _plain_pointwise_convs(backbone: nn.Module) -> None:
    """Replace 1x1 stride-1 ``SamePadConv2d`` layers by ``nn.Conv2d`` sharing the weight.

    ``SAME`` padding of a 1x1 stride-1 convolution is zero, so the output is identical;
    peft builds its adapter as ``type(base_layer)(in, r, kernel_size, stride, padding,
    bias=False)``, which ``SamePadConv2d``'s keyword-only constructor does not accept.
    """
    for name, module in list(backbone.named_modules()):
        if not isinstance(module, SamePadConv2d):
            continue
        if module.kernel_size != (1, 1) or module.stride != (1, 1) or module.dilation != (1, 1):
            continue
        plain = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            kernel_size=1,
            groups=module.groups,
            bias=module.bias is not None,
            device=module.weight.device,
        )
        plain.weight = module.weight
        plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name), child, plain)


def _drop_adapter_name(name: str) -> str:
    """``a.query.lora_A.default.weight`` -> ``a.query.lora_A.weight``."""
    parts = name.split(".")
    kept = [
        part
        for i, part in enumerate(parts)
        if not (i > 0 and part == _ADAPTER and parts[i - 1] in _LORA_MATRICES)
    ]
    return ".".join(kept)


def _module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (CPU for a module without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class _TransformerWiring(TypedDict):
    """The constructor arguments that wire a Hugging Face base model (``from_transformer``)."""

    features: FeatureFn
    feature_dim: int
    kind: BackboneKind
    max_text_tokens: int | None


def _transformer_wiring(backbone: PreTrainedModel, kind: BackboneKind | str) -> _TransformerWiring:
    """Pooled features, their width, the kind and the token limit of a Hugging Face base model."""
    resolved = BackboneKind(kind)
    return _TransformerWiring(
        features=TransformerFeatures(resolved),
        feature_dim=int(input_embedding_weight(backbone).shape[1]),
        kind=resolved,
        max_text_tokens=_position_limit(backbone),
    )


def _position_limit(backbone: nn.Module) -> int | None:
    """``config.max_position_embeddings`` of a Hugging Face model, if it has one."""
    limit = getattr(getattr(backbone, "config", None), "max_position_embeddings", None)
    return None if limit is None else int(limit)

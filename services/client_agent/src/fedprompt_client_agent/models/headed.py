"""What the weight-adapting families share: a backbone, a feature function and a linear head.

:class:`HeadedClassifier` is the base of the LoRA (:mod:`.lora`) and full fine-tuning
(:mod:`.full_finetune`) families. It wraps any backbone with the same linear head as
:class:`~fedprompt_client_agent.models.text_prompt.PromptClassifier` and exposes the same
state and parameter-group API that the trainers and the federation code use. Neither
family has private tensors (``local_state()`` is empty); their personal state, written by
``save_personal``, is the shared state plus the backbone's floating-point persistent
buffers (``"buffer.<name>"``, e.g. BatchNorm running statistics; none for MiniLM).

Any backbone works through the generic constructors, which take an ``nn.Module`` and a
feature function ``features(backbone, *inputs) -> [batch, feature_dim]``; the model's
``forward(*inputs)`` returns ``head(features(backbone, *inputs))``. For Hugging Face
models, :class:`TransformerFeatures` (mean pooling for encoders, last token for causal
LMs, as in ``PromptClassifier``) and :func:`transformer_wiring` (used by the families'
``from_transformer`` class methods) do the wiring; :func:`load_image_backbone` does it
for EfficientNet-Lite0 (:class:`ImageFeatures`: images in ``[0, 1]``, as
``VisionTrainer`` passes them). By hand, for another image backbone::

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

``FullFinetuneClassifier(backbone, features=..., feature_dim=..., num_labels=...)``
works the same way (``backbone_eval=False`` lets BatchNorm statistics adapt; they are
saved in the personal state but do not travel).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, TypedDict, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from fedprompt.strategies import ModelFamily
from fedprompt.tensor_names import BUFFER_PREFIX, HEAD_BIAS, HEAD_WEIGHT
from fedprompt_client_agent.config import Modality
from fedprompt_client_agent.models.backbone import (
    BackboneKind,
    Tokenizer,
    input_embedding_weight,
    pool_hidden,
    position_limit,
)
from fedprompt_client_agent.models.efficientnet_lite import (
    FEATURE_DIM,
    MIN_INPUT_SIZE,
    EfficientNetLite0,
    SamePadConv2d,
    default_weights_path,
    load_efficientnet_lite0,
    normalize,
)
from fedprompt_client_agent.models.registry import (
    BuiltModel,
    ModelRequest,
    model_builder,
    register_model_family,
)
from fedprompt_client_agent.models.state import TensorStateMixin, preview_keys
from fedprompt_client_agent.models.toolbox import (
    autocast,
    init_linear_head,
    module_device,
    resolve_device,
    trainable_mismatch,
)
from fedprompt_client_agent.models.visual_prompt import resize_images

__all__ = [
    "WEIGHT_FAMILIES",
    "FeatureFn",
    "HeadedClassifier",
    "ImageBuilder",
    "ImageFeatures",
    "ImageSpec",
    "ImageWiring",
    "TextBuilder",
    "TransformerFeatures",
    "TransformerWiring",
    "build_vision_adapter_classifier",
    "load_image_backbone",
    "log_image_baseline",
    "register_weight_family",
    "transformer_wiring",
]

logger = logging.getLogger(__name__)

#: The families built on ``HeadedClassifier`` (they adapt backbone weights, not a prompt).
WEIGHT_FAMILIES: Final = (ModelFamily.LORA, ModelFamily.FULL)

FeatureFn = Callable[..., torch.Tensor]
"""``features(backbone, *inputs) -> [batch, feature_dim]``: the backbone's pooled features."""


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
        x = images.to(module_device(backbone), torch.float32)
        if tuple(x.shape[-2:]) != (size, size):
            x = resize_images(x, size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return cast(EfficientNetLite0, backbone).features(normalize(x))


class HeadedClassifier(TensorStateMixin, nn.Module):
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
            HEAD_WEIGHT: self.head.weight,
            HEAD_BIAS: self.head.bias,
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
                views[f"{BUFFER_PREFIX}{name}"] = buffer
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
        self.to(module_device(self.backbone))
        self.train()
        stray, frozen = trainable_mismatch(
            self, [*self.prompt_parameters(), *self.head_parameters()]
        )
        if stray or frozen or not self.prompt_parameters():
            raise RuntimeError(
                f"{type(self).__name__}: trainable parameters do not match the declared groups; "
                f"stray: {preview_keys(stray)}, frozen in a group: {frozen}"
            )


class TransformerWiring(TypedDict):
    """The constructor arguments that wire a Hugging Face base model (``from_transformer``)."""

    features: FeatureFn
    feature_dim: int
    kind: BackboneKind
    max_text_tokens: int | None


def transformer_wiring(backbone: PreTrainedModel, kind: BackboneKind | str) -> TransformerWiring:
    """Pooled features, their width, the kind and the token limit of a Hugging Face base model.

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        Base model without a task head.
    kind : BackboneKind or str
        Encoder (mean pooling) or causal LM (last token).

    Returns
    -------
    TransformerWiring
        Keyword arguments for a ``HeadedClassifier`` subclass.
    """
    resolved = BackboneKind(kind)
    return TransformerWiring(
        features=TransformerFeatures(resolved),
        feature_dim=int(input_embedding_weight(backbone).shape[1]),
        kind=resolved,
        max_text_tokens=position_limit(backbone),
    )


class ImageWiring(TypedDict):
    """The constructor arguments that wire EfficientNet-Lite0 (see ``load_image_backbone``)."""

    features: FeatureFn
    feature_dim: int
    spec: ImageSpec


def load_image_backbone(
    weights: str | Path | None, *, image_size: int, device: str | torch.device
) -> tuple[EfficientNetLite0, ImageWiring]:
    """Load EfficientNet-Lite0 for the LoRA or full fine-tuning image baseline.

    The models built on it take ``[batch, 1 or 3, H, W]`` images in ``[0, 1]`` (see
    ``ImageFeatures``) and have ``spec.image_size``, so ``VisionTrainer`` trains them like
    the visual prompt model. The backbone's 1x1 stride-1 ``SamePadConv2d`` layers are
    swapped for plain ``nn.Conv2d`` layers sharing their weights (identical output; peft
    can wrap those).

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    image_size : int
        Side the images are resized to (at least ``MIN_INPUT_SIZE``).
    device : str or torch.device
        See ``resolve_device``.

    Returns
    -------
    tuple
        ``(backbone, wiring)``: the wiring holds the feature function, its width and the
        spec, as keyword arguments of a ``HeadedClassifier`` subclass.

    Raises
    ------
    ValueError
        For a too small ``image_size``.
    """
    spec = ImageSpec(image_size=image_size)
    backbone = load_efficientnet_lite0(weights, device=resolve_device(device))
    _plain_pointwise_convs(backbone)
    return backbone, ImageWiring(features=ImageFeatures(spec), feature_dim=FEATURE_DIM, spec=spec)


TextBuilder = Callable[..., tuple[HeadedClassifier, Tokenizer]]
"""``build(model_dir, *, num_labels, seed, device) -> (classifier, tokenizer)``."""
ImageBuilder = Callable[..., HeadedClassifier]
"""``build(weights, *, num_labels, image_size, seed, device) -> classifier``."""


def register_weight_family(family: ModelFamily, *, text: TextBuilder, image: ImageBuilder) -> None:
    """Register a weight-adapting family's text and image builders with the model registry.

    Parameters
    ----------
    family : ModelFamily
        The family (``lora``, ``full``).
    text : TextBuilder
        Builds the family on a local Hugging Face model folder.
    image : ImageBuilder
        Builds the family on EfficientNet-Lite0.
    """

    @register_model_family(Modality.TEXT, family)
    def _build_text(request: ModelRequest) -> BuiltModel:
        model, tokenizer = text(
            request.source, num_labels=request.num_labels, seed=request.seed, device=request.device
        )
        return BuiltModel(model=model, tokenizer=tokenizer)

    @register_model_family(Modality.IMAGE, family)
    def _build_image(request: ModelRequest) -> BuiltModel:
        model = image(
            request.source,
            num_labels=request.num_labels,
            image_size=request.image_size,
            seed=request.seed,
            device=request.device,
        )
        return BuiltModel(model=model)


def build_vision_adapter_classifier(
    weights: str | Path | None = None,
    *,
    num_labels: int,
    mode: str,
    image_size: int = 32,
    seed: int = 0,
    device: str = "auto",
) -> HeadedClassifier:
    """Build the LoRA or full fine-tuning image baseline by family name, through the registry.

    The families' own builders (``build_vision_lora_classifier``,
    ``build_vision_full_classifier``) take their specific options; this is the entry by
    name, as the runtime builds them.

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    num_labels : int
        Number of classes.
    mode : {"lora", "full"}
        The weight-adapting family.
    image_size : int
        Side the images are resized to (at least ``MIN_INPUT_SIZE``).
    seed : int
        Initialisation seed.
    device : str
        ``auto``, ``cpu`` or ``cuda``.

    Returns
    -------
    HeadedClassifier
        The ``LoraClassifier`` or ``FullFinetuneClassifier``, on ``device``.

    Raises
    ------
    ValueError
        For a ``mode`` other than a weight-adapting family, or a too small ``image_size``.
    """
    if mode not in WEIGHT_FAMILIES:
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    request = ModelRequest(
        source=Path(weights) if weights is not None else default_weights_path(),
        num_labels=num_labels,
        seed=seed,
        device=device,
        image_size=image_size,
    )
    built = model_builder(Modality.IMAGE, ModelFamily(mode))(request)
    return cast(HeadedClassifier, built.model)


def log_image_baseline(model: HeadedClassifier, *, family: str, image_size: int) -> None:
    """Log an EfficientNet-Lite0 baseline's device, input size, labels and trainable size."""
    logger.info(
        "EfficientNet-Lite0 %s baseline on %s, %d px images, %d labels: %d trainable parameters",
        family,
        model.device,
        image_size,
        model.num_labels,
        sum(p.numel() for p in (*model.prompt_parameters(), *model.head_parameters())),
    )


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

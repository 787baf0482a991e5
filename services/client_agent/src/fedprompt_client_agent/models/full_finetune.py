"""Full fine-tuning: every backbone weight trains and travels, with a linear head.

``FullFinetuneClassifier`` is the communication reference of the federation: every
backbone weight travels, keyed ``"backbone.<parameter name>"``, plus ``"head.weight"`` and
``"head.bias"`` (about 91 MB of float32 for all-MiniLM-L6-v2). Suggested learning rate of
the backbone (the trainer's ``lr``): ``FULL_FINETUNE_SUGGESTED_LR`` (2e-5 to 5e-5 works).
It shares its base, feature functions and image wiring with LoRA (:mod:`.headed`).

Builders: :func:`build_full_classifier` (a local Hugging Face folder) and
:func:`build_vision_full_classifier` (EfficientNet-Lite0); both are registered for the
``full`` family (:mod:`.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch
from torch import nn
from transformers import PreTrainedModel

from fedprompt.strategies import ModelFamily
from fedprompt.tensor_names import BACKBONE_PREFIX
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

__all__ = [
    "FULL_FINETUNE_SUGGESTED_LR",
    "FullFinetuneClassifier",
    "build_full_classifier",
    "build_vision_full_classifier",
]

FULL_FINETUNE_SUGGESTED_LR: Final = 3e-5


class FullFinetuneClassifier(HeadedClassifier):
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
            **transformer_wiring(backbone, kind),
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
            f"{BACKBONE_PREFIX}{name}": param
            for name, param in self.backbone.named_parameters()
            if param.requires_grad
        }


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


def build_vision_full_classifier(
    weights: str | Path | None = None,
    *,
    num_labels: int,
    image_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "auto",
    backbone_eval: bool = True,
) -> FullFinetuneClassifier:
    """Load EfficientNet-Lite0 and make every weight trainable, for the full fine-tuning baseline.

    The ImageNet classifier ``_fc``, which the features never use, stays frozen and does
    not travel; see ``load_image_backbone`` for the input layout.

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    num_labels : int
        Number of classes.
    image_size : int
        Side the images are resized to (at least ``MIN_INPUT_SIZE``).
    seed : int
        Seed of the head.
    device : str or torch.device
        See ``resolve_device``.
    backbone_eval : bool
        Keep BatchNorm statistics frozen (eval mode), as the visual prompt model does.

    Returns
    -------
    FullFinetuneClassifier
        The classifier, on ``device``.
    """
    backbone, wiring = load_image_backbone(weights, image_size=image_size, device=device)
    model = FullFinetuneClassifier(
        backbone,
        **wiring,
        num_labels=num_labels,
        seed=seed,
        backbone_eval=backbone_eval,
        frozen_modules=("_fc",),
    )
    log_image_baseline(model, family=ModelFamily.FULL, image_size=image_size)
    return model


register_weight_family(
    ModelFamily.FULL, text=build_full_classifier, image=build_vision_full_classifier
)

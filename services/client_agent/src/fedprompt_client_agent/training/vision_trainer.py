"""Local training and evaluation of an image model on one image silo.

The image counterpart of :class:`~fedprompt_client_agent.training.trainer.LocalTrainer`, on the
same loop (:class:`~fedprompt_client_agent.training.trainer.BaseTrainer`) with the same API and
result types. Each split is converted once to a float tensor at the model's inner
image size (``spec.image_size``, 32x32 by default), so a step costs one backbone pass
on the prompted canvas. Any model with the ``VisionModel`` API trains with it (visual
prompt, LoRA, full fine-tuning). ``TrainConfig.max_length`` (a token budget) has no
meaning here and is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from fedprompt_client_agent.data.image_silos import ImageSiloData
from fedprompt_client_agent.data.silo_files import SPLIT_NAMES
from fedprompt_client_agent.models.visual_prompt import images_to_tensor
from fedprompt_client_agent.training.trainer import BaseTrainer, TrainableModel, TrainConfig

__all__ = ["VisionExtraLoss", "VisionModel", "VisionTrainer"]


class _ImageSizeSpec(Protocol):
    """The part of a model's spec that the trainer reads."""

    @property
    def image_size(self) -> int:
        """Side the images are resized to, in pixels."""
        ...


class VisionModel(TrainableModel, Protocol):
    """A model over ``[batch, 1 or 3, H, W]`` images in ``[0, 1]``: ``model(images)``."""

    @property
    def spec(self) -> _ImageSizeSpec | None:
        """Input layout; ``image_size`` is what the splits are resized to."""
        ...


VisionExtraLoss = Callable[[VisionModel], torch.Tensor]


class VisionTrainer(BaseTrainer[VisionModel]):
    """Trains and evaluates an image model on one image silo's splits.

    Parameters
    ----------
    model : VisionModel
        The model (``VisualPromptClassifier``, or an image ``LoraClassifier`` /
        ``FullFinetuneClassifier``); only its prompt (or adapter) parameters and head
        are updated. The visual prompt model's backbone stays in eval mode throughout.
    silo : ImageSiloData
        The silo; its label set must match ``model.num_labels``.
    config : TrainConfig
        Hyper-parameters (``max_length`` is ignored).

    Raises
    ------
    ValueError
        If the label counts differ, the training split is empty or the model has
        no image spec.
    """

    def __init__(self, model: VisionModel, silo: ImageSiloData, config: TrainConfig) -> None:
        super().__init__(model, silo, config)
        spec = model.spec
        if spec is None:
            raise ValueError(f"{type(model).__name__} has no image spec; it is not an image model")
        size = spec.image_size
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in SPLIT_NAMES:
            split = silo.split(name)
            self._splits[name] = (
                images_to_tensor(split.images, size=size),
                torch.from_numpy(np.array(split.labels, dtype=np.int64)),
            )

    def twin(self, model: VisionModel) -> VisionTrainer:
        """A ``VisionTrainer`` of ``model`` on this trainer's converted splits.

        See :meth:`BaseTrainer.twin <fedprompt_client_agent.training.trainer.BaseTrainer.twin>`.

        Parameters
        ----------
        model : VisionModel
            The twin's model (the same image size).

        Returns
        -------
        VisionTrainer
            The twin (no image is converted again).
        """
        twin = VisionTrainer.__new__(VisionTrainer)
        self._start_twin(twin, model)
        twin._splits = self._splits
        return twin

    def _split_size(self, split: str) -> int:
        """Number of images in a split."""
        return len(self._splits[split][1])

    def _batch(
        self, split: str, indices: np.ndarray
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The selected images and labels, on the model's device."""
        images, labels = self._splits[split]
        rows = torch.from_numpy(indices)
        device = self.model.device
        return (images[rows].to(device),), labels[rows].to(device)

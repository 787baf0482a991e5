"""Frozen EfficientNet-Lite0 + a visual prompt in input space (three rings) + linear head.

The vision counterpart of :class:`~fedprompt_client_agent.models.text_prompt.PromptClassifier`,
with the same state API and tensor names, so a runtime can use either. An
input image is resized to ``image_size`` pixels, normalised for the backbone and
placed in the centre of a larger canvas; the border around it is made of
learnable pixels (in the backbone's normalised input space, like the image),
split into three concentric rings owned by the federation levels::

    +---------------------------+  canvas: image_size + 2 * (n_global + n_cluster + n_local)
    | "prompt.global"  (outer)  |  n_global pixels wide, averaged by every client
    |  +---------------------+  |
    |  | "prompt.cluster"    |  |  n_cluster pixels wide, averaged within a cluster
    |  |  +---------------+  |  |
    |  |  | "prompt.local"|  |  |  n_local pixels wide, never leaves the silo
    |  |  |  +---------+  |  |  |
    |  |  |  |  image  |  |  |  |
    |  |  |  +---------+  |  |  |

Only a ring's own pixels are stored: segment ``s`` is a ``[3, P_s]`` tensor
(RGB x pixels of the ring, in row-major order of the canvas), with
``P_s = (S - 2 o)^2 - (S - 2 o - 2 w)^2`` for canvas side ``S``, ring offset
``o`` from the canvas edge and ring width ``w``; a ring of width 0 is omitted.
The default 32-pixel image with rings 2/1/1 gives a 40x40 canvas and segments
``[3, 304]``, ``[3, 140]`` and ``[3, 132]``. The head is ``[num_labels, 1280]``.

The backbone stays frozen and in eval mode (its BatchNorm statistics never
change), whatever ``train()`` is called with. The prompt is added to the
padded input by broadcasting over the batch, so per-sample gradients are well
defined: Opacus' ``GradSampleModule`` gives exact per-sample gradients of rings
and head in both ``hooks`` and ``functorch`` modes (tested).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from torch import nn

from fedprompt.strategies import ModelFamily
from fedprompt.tensor_names import (
    PROMPT_SEGMENTS,
)
from fedprompt_client_agent.config import Modality
from fedprompt_client_agent.models.efficientnet_lite import (
    FEATURE_DIM,
    MIN_INPUT_SIZE,
    EfficientNetLite0,
    default_weights_path,
    load_efficientnet_lite0,
    normalize,
)
from fedprompt_client_agent.models.registry import BuiltModel, ModelRequest, register_model_family
from fedprompt_client_agent.models.state import PromptStateMixin
from fedprompt_client_agent.models.toolbox import (
    autocast,
    check_shared_pass,
    init_linear_head,
    require_prompt_and_head_trainable,
    resolve_device,
    shared_instance,
)

__all__ = [
    "BACKBONE_NAME",
    "VisualPromptClassifier",
    "VisualPromptSpec",
    "build_visual_prompt_classifier",
    "forward_many_visual",
    "images_to_tensor",
    "resize_images",
]

logger = logging.getLogger(__name__)

BACKBONE_NAME: Final = "efficientnet-lite0"


@dataclass(frozen=True, kw_only=True)
class VisualPromptSpec:
    """Geometry of the visual prompt: inner image size and the three ring widths.

    The ring widths reuse the text model's field names (``n_global`` ...) so
    that one configuration can size either prompt; here they count pixels.

    Attributes
    ----------
    image_size : int
        Side of the (square) resized input image, in pixels.
    n_global : int
        Width of the outer ring, shared by all clients.
    n_cluster : int
        Width of the middle ring, shared within a cluster.
    n_local : int
        Width of the inner ring, private to the silo.
    init_std : float
        Standard deviation of the seeded Gaussian initialisation of the rings,
        in the backbone's normalised input space (pixel values span ``[-1, 1]``).
    """

    image_size: int = 32
    n_global: int = 2
    n_cluster: int = 1
    n_local: int = 1
    init_std: float = 0.1

    def __post_init__(self) -> None:
        """Reject negative widths, an empty prompt and a canvas the backbone cannot read."""
        for name in ("image_size", "n_global", "n_cluster", "n_local"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.total < 1:
            raise ValueError(
                "the prompt needs at least one ring pixel (n_global + n_cluster + n_local >= 1)"
            )
        if self.canvas_size < MIN_INPUT_SIZE:
            raise ValueError(
                f"image_size + 2 * border = {self.canvas_size} pixels; the backbone needs at "
                f"least {MIN_INPUT_SIZE}"
            )
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be finite and >= 0, got {self.init_std}")

    @property
    def total(self) -> int:
        """Border width on each side of the image (sum of the ring widths)."""
        return self.n_global + self.n_cluster + self.n_local

    @property
    def canvas_size(self) -> int:
        """Side of the square canvas that the backbone sees."""
        return self.image_size + 2 * self.total

    def ring_bounds(self) -> dict[str, tuple[int, int]]:
        """Return ``(offset from the canvas edge, width)`` of each ring, outermost first."""
        widths = (self.n_global, self.n_cluster, self.n_local)
        offsets = (0, self.n_global, self.n_global + self.n_cluster)
        return {
            name: (offset, width)
            for name, offset, width in zip(PROMPT_SEGMENTS, offsets, widths, strict=True)
        }

    def ring_indices(self) -> dict[str, np.ndarray]:
        """Return the flat canvas positions (row-major) of each non-empty ring.

        Returns
        -------
        dict of str to numpy.ndarray
            ``global``/``cluster``/``local`` to sorted int64 positions in
            ``[0, canvas_size ** 2)``; rings of width 0 are omitted.
        """
        side = self.canvas_size
        rows, cols = np.indices((side, side))
        depth = np.minimum(np.minimum(rows, cols), np.minimum(side - 1 - rows, side - 1 - cols))
        flat_depth = depth.reshape(-1)
        return {
            name: np.flatnonzero((flat_depth >= offset) & (flat_depth < offset + width)).astype(
                np.int64
            )
            for name, (offset, width) in self.ring_bounds().items()
            if width > 0
        }


def images_to_tensor(images: np.ndarray, *, size: int | None = None) -> torch.Tensor:
    """Convert uint8 images to a float tensor in ``[0, 1]``, optionally resized.

    Parameters
    ----------
    images : numpy.ndarray
        ``[N, H, W]`` grayscale or ``[N, H, W, 3]`` RGB, dtype uint8.
    size : int, optional
        Resize to ``size x size`` (bilinear, antialiased when shrinking).

    Returns
    -------
    torch.Tensor
        ``[N, C, H', W']`` float32 with ``C`` 1 or 3.

    Raises
    ------
    ValueError
        For another dtype or shape.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {array.dtype}")
    if array.ndim == 3:
        tensor = torch.from_numpy(np.array(array, copy=True)).unsqueeze(1)
    elif array.ndim == 4 and array.shape[-1] == 3:
        tensor = torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, 3], got {array.shape}")
    result = tensor.to(torch.float32) / 255.0
    if size is not None and len(result) and tuple(result.shape[-2:]) != (size, size):
        result = resize_images(result, size)
    return result.contiguous()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of images bilinearly to ``size x size``, antialiased when shrinking.

    Parameters
    ----------
    images : torch.Tensor
        ``[N, C, H, W]`` float images in ``[0, 1]``.
    size : int
        Output side in pixels.

    Returns
    -------
    torch.Tensor
        ``[N, C, size, size]``, clamped to ``[0, 1]``.
    """
    shrinking = min(images.shape[-2:]) > size
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    ).clamp(0.0, 1.0)


class _RingPrompt(nn.Module):
    """The learnable border: one ``[3, P]`` parameter per non-empty ring.

    Parameters are registered under the segment names, so the classifier's
    ``state_dict`` calls them ``prompt.global``, ``prompt.cluster`` and
    ``prompt.local``. The module has no buffers (Opacus refuses trainable
    modules with buffers): the canvas positions are a plain CPU tensor, copied
    to the parameters' device on first use there.
    """

    def __init__(self, spec: VisualPromptSpec) -> None:
        super().__init__()
        self.spec = spec
        indices = spec.ring_indices()
        self.segments = tuple(indices)
        for name, positions in indices.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(3, len(positions))))
        order = np.concatenate([indices[name] for name in self.segments])
        self._canvas_index = torch.from_numpy(order)

    def segment(self, name: str) -> nn.Parameter:
        """Return the parameter of one ring."""
        param: nn.Parameter = self.get_parameter(name)
        return param

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pad normalised ``[B, 3, s, s]`` images with the rings: ``[B, 3, S, S]``."""
        side = self.spec.canvas_size
        border = self.spec.total
        # getattr, not get_parameter: functional_call (Opacus functorch mode) swaps in tensors.
        values = torch.cat([getattr(self, name) for name in self.segments], dim=1)
        if self._canvas_index.device != values.device:
            self._canvas_index = self._canvas_index.to(values.device)
        flat = values.new_zeros(3, side * side).index_copy(1, self._canvas_index, values)
        padded = F.pad(images, (border, border, border, border))
        return padded + flat.view(1, 3, side, side).to(padded.dtype)


class VisualPromptClassifier(PromptStateMixin, nn.Module):
    """A frozen EfficientNet-Lite0, a three-ring visual prompt and a linear head.

    Parameters
    ----------
    backbone : EfficientNetLite0
        The image model (e.g. from ``load_efficientnet_lite0``); it is frozen and
        kept in eval mode.
    num_labels : int
        Number of classes of the head.
    spec : VisualPromptSpec, optional
        Image size and ring widths; defaults to ``VisualPromptSpec()`` (40x40 canvas).
    seed : int
        Seed of the ring and head initialisation: equal seeds give equal initial
        values on every client and device.
    """

    personal_format = "fedprompt-visual-prompt/1"
    personal_noun = "personal visual prompt"
    personal_label = "a visual prompt"

    def __init__(
        self,
        backbone: EfficientNetLite0,
        *,
        num_labels: int,
        spec: VisualPromptSpec | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.spec = spec if spec is not None else VisualPromptSpec()
        self.num_labels = num_labels
        self.hidden_size = FEATURE_DIM
        self.backbone_name = BACKBONE_NAME
        backbone.requires_grad_(False)
        device = next(backbone.parameters()).device
        self.backbone = backbone
        self.prompt = _RingPrompt(self.spec)
        self.head = nn.Linear(self.hidden_size, num_labels)
        self._initialise(seed=seed)
        self.to(device)
        self.train()
        require_prompt_and_head_trainable(
            self, [*self.prompt_parameters(), *self.head_parameters()]
        )

    # ----------------------------------------------------------------- structure

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.head.weight.device

    def train(self, mode: bool = True) -> Self:
        """Set prompt and head to ``mode``; the backbone always stays in eval mode.

        Parameters
        ----------
        mode : bool
            Training (True) or evaluation (False) mode.

        Returns
        -------
        VisualPromptClassifier
            ``self``.
        """
        super().train(mode)
        self.backbone.eval()
        return self

    def segment_parameter(self, segment: str) -> nn.Parameter:
        """Return one ring's parameter (``global``, ``cluster`` or ``local``), e.g. for a loss term.

        Raises
        ------
        KeyError
            If the segment is unknown or has width 0.
        """
        if segment not in self.prompt.segments:
            raise KeyError(f"no prompt segment {segment!r}; present: {list(self.prompt.segments)}")
        return self.prompt.segment(segment)

    def prompt_parameters(self) -> list[torch.Tensor]:
        """Return the trainable ring parameters, outermost first."""
        return [self.prompt.segment(name) for name in self.prompt.segments]

    def head_parameters(self) -> list[torch.Tensor]:
        """Return the trainable head parameters (weight and bias)."""
        return [self.head.weight, self.head.bias]

    def trainable_parameter_names(self) -> list[str]:
        """Return the names of all parameters that require gradients."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    # ----------------------------------------------------------------- forward

    def prompted_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Build the canvas the backbone sees: resized, normalised image inside the rings.

        Parameters
        ----------
        images : torch.Tensor
            ``[batch, C, H, W]`` float images in ``[0, 1]``, ``C`` 1 (grayscale,
            repeated to RGB) or 3; any size (resized to ``spec.image_size``).

        Returns
        -------
        torch.Tensor
            ``[batch, 3, canvas_size, canvas_size]`` in the backbone's input space.

        Raises
        ------
        ValueError
            If the tensor is not ``[batch, 1 or 3, H, W]``.
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected [batch, 1 or 3, height, width] images, got {tuple(images.shape)}"
            )
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.spec.image_size, self.spec.image_size):
            x = resize_images(x, self.spec.image_size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        prompted: torch.Tensor = self.prompt(normalize(x))
        return prompted

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Parameters
        ----------
        images : torch.Tensor
            See ``prompted_inputs``.

        Returns
        -------
        torch.Tensor
            ``[batch, num_labels]`` float32 logits.
        """
        canvas = self.prompted_inputs(images)
        with autocast(self.device):
            logits: torch.Tensor = self.head(self.backbone.features(canvas))
        return logits.float()

    # ----------------------------------------------------------------- state exchange

    def _segment_views(self) -> dict[str, torch.Tensor]:
        """The rings of width > 0, outermost first: ``[3, P_s]`` each.

        With them, ``head.weight`` (``[num_labels, 1280]``) and ``head.bias``
        (``[num_labels]``) make the personal state.
        """
        return {name: self.prompt.segment(name) for name in self.prompt.segments}

    def _personal_metadata(self) -> dict[str, str]:
        """Backbone, image size, ring widths, feature width and label count of the file."""
        return {
            "backbone": self.backbone_name,
            "image_size": str(self.spec.image_size),
            "n_global": str(self.spec.n_global),
            "n_cluster": str(self.spec.n_cluster),
            "n_local": str(self.spec.n_local),
            "hidden_size": str(self.hidden_size),
            "num_labels": str(self.num_labels),
        }

    # ----------------------------------------------------------------- internals

    def _initialise(self, *, seed: int) -> None:
        """Set head and rings from one seeded CPU generator (device-independent).

        The head is the generator's first draw, as in every model family, so that
        strategies of different families start a seed from the same head.
        """
        generator = torch.Generator().manual_seed(seed)
        init_linear_head(self.head, generator)
        with torch.no_grad():
            for name in self.prompt.segments:
                ring = self.prompt.segment(name)
                ring.copy_(torch.randn(ring.shape, generator=generator) * self.spec.init_std)


def forward_many_visual(
    models: Sequence[VisualPromptClassifier], batches: Sequence[tuple[torch.Tensor, ...]]
) -> list[torch.Tensor]:
    """Classify several silos' image batches in one backbone pass, each with its own rings and head.

    Each batch is drawn on its own model's prompted canvas; the canvases go through the
    shared frozen backbone (eval mode: BatchNorm uses its running statistics, so every image
    is independent of the others in the pass) as one batch, and each model's head reads its
    own features. Each model's logits equal ``model(images)`` up to float rounding.

    Parameters
    ----------
    models : sequence of VisualPromptClassifier
        One model per batch, sharing one backbone object and image spec.
    batches : sequence of (images,)
        ``[b_i, C, H, W]`` images per model.

    Returns
    -------
    list of torch.Tensor
        ``[b_i, num_labels_i]`` float32 logits per batch, in order.

    Raises
    ------
    ValueError
        If the lists differ in length, are empty, or the models do not share a backbone
        and image spec.
    """
    check_shared_pass(models, batches, layout=lambda m: m.spec)
    first = models[0]
    canvases = [m.prompted_inputs(batch[0]) for m, batch in zip(models, batches, strict=True)]
    sizes = [int(c.shape[0]) for c in canvases]
    with autocast(first.device):
        features = torch.split(first.backbone.features(torch.cat(canvases)), sizes)
        heads = [m.head(f) for m, f in zip(models, features, strict=True)]
    return [logits.float() for logits in heads]


def build_visual_prompt_classifier(
    weights: str | Path | None = None,
    *,
    num_labels: int,
    spec: VisualPromptSpec | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    share_backbone: bool = False,
) -> VisualPromptClassifier:
    """Load EfficientNet-Lite0 and wrap it in a ``VisualPromptClassifier`` in one call.

    Parameters
    ----------
    weights : str or Path, optional
        Backbone checkpoint; defaults to the packaged ImageNet weights.
    num_labels : int
        Number of classes.
    spec : VisualPromptSpec, optional
        Image size and ring widths.
    seed : int
        Initialisation seed.
    device : str or torch.device
        See ``resolve_device``.
    share_backbone : bool
        Use the process's one copy of these frozen weights on this device (classifiers
        built this way differ only in their rings and head).

    Returns
    -------
    VisualPromptClassifier
        The classifier, on ``device``.
    """
    target = resolve_device(device)
    if share_backbone:
        path = Path(weights) if weights is not None else default_weights_path()
        backbone = shared_instance(
            ("efficientnet-lite0", str(path.resolve()), str(target)),
            lambda: load_efficientnet_lite0(path, device=target),
        )
    else:
        backbone = load_efficientnet_lite0(weights, device=target)
    model = VisualPromptClassifier(backbone, num_labels=num_labels, spec=spec, seed=seed)
    logger.info(
        "visual prompt classifier: %s on %s, %dx%d canvas, rings %d/%d/%d px, %d labels",
        BACKBONE_NAME,
        target,
        model.spec.canvas_size,
        model.spec.canvas_size,
        model.spec.n_global,
        model.spec.n_cluster,
        model.spec.n_local,
        num_labels,
    )
    return model


@register_model_family(Modality.IMAGE, ModelFamily.PROMPT)
def _build_image(request: ModelRequest) -> BuiltModel:
    """A three-ring visual prompt on EfficientNet-Lite0, and a head."""
    spec = VisualPromptSpec(image_size=request.image_size, **request.segment_sizes())
    model = build_visual_prompt_classifier(
        request.source,
        num_labels=request.num_labels,
        spec=spec,
        seed=request.seed,
        device=request.device,
        share_backbone=request.share_backbone,
    )
    segments = [spec.n_global, spec.n_cluster, spec.n_local]
    return BuiltModel(model=model, fingerprint_parts={"segments": segments})

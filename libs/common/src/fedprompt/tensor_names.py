"""Names of the tensors a federation exchanges, and the centroids of cluster prompts.

Every adapted model exposes its trainable state as named tensors. The prompt models
(text and visual) split one prompt into three segments owned by the federation's levels,
plus a linear head::

    prompt.global    averaged by every client (DP-FedAvg when on)
    prompt.cluster   averaged within a cluster
    prompt.local     never leaves the silo
    head.weight, head.bias

LoRA adapters travel as ``lora.<module>.lora_{A,B}.weight`` and full fine-tuning as
``backbone.<parameter>``; personal files also keep ``buffer.<name>`` (BatchNorm statistics).

Round-start models of contrastive strategies also carry read-only ``centroid.<k>``
tensors: the token-mean of cluster k's ``prompt.cluster`` segment (the InfoNCE positive and
negatives). :func:`centroid` is the one definition of that mean, used by the coordinator
(for the broadcast and its alignment weights) and, through the tensors it sends, by clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np

#: The three prompt segments, outermost level first.
PROMPT_SEGMENTS: Final = ("global", "cluster", "local")
GLOBAL_PROMPT: Final = "prompt.global"
CLUSTER_PROMPT: Final = "prompt.cluster"
LOCAL_PROMPT: Final = "prompt.local"
HEAD_WEIGHT: Final = "head.weight"
HEAD_BIAS: Final = "head.bias"
HEAD_KEYS: Final = (HEAD_WEIGHT, HEAD_BIAS)

#: What a prompt model sends (segments that are not empty), keeps private, and keeps at home.
SHARED_PROMPT_KEYS: Final = (GLOBAL_PROMPT, CLUSTER_PROMPT, *HEAD_KEYS)
LOCAL_PROMPT_KEYS: Final = (LOCAL_PROMPT,)
PERSONAL_PROMPT_KEYS: Final = (GLOBAL_PROMPT, CLUSTER_PROMPT, LOCAL_PROMPT, *HEAD_KEYS)

#: Prefixes of the weight-adapting families' tensors.
LORA_PREFIX: Final = "lora."
BACKBONE_PREFIX: Final = "backbone."
BUFFER_PREFIX: Final = "buffer."

#: Read-only tensors of round-start models: ``centroid.<cluster id>``.
CENTROID_PREFIX: Final = "centroid."

#: The weight entries (shape (1,)) a member masks with its weighted update under secure
#: aggregation: the coordinator divides each level's masked sum by its weight's sum.
SECAGG_WEIGHT_GLOBAL: Final = "secagg.weight.global"
SECAGG_WEIGHT_CLUSTER: Final = "secagg.weight.cluster"


def prompt_key(segment: str) -> str:
    """The tensor name of a prompt segment (``global`` -> ``prompt.global``)."""
    if segment not in PROMPT_SEGMENTS:
        raise ValueError(f"unknown prompt segment {segment!r}; known: {PROMPT_SEGMENTS}")
    return f"prompt.{segment}"


def centroid(segment: np.ndarray) -> np.ndarray:
    """Token-mean of a prompt segment ``[tokens, width]`` -> ``[width]``, in float64.

    A 1-D array is already a centroid and is returned as float64.
    """
    arr = np.asarray(segment, dtype=np.float64)
    return arr.mean(axis=0) if arr.ndim > 1 else arr


def centroid_name(cluster_id: int) -> str:
    """``centroid.<cluster_id>``."""
    return f"{CENTROID_PREFIX}{int(cluster_id)}"


def centroid_tensors(segments: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``centroid.<k>`` tensors (float32) of the given cluster segments, by cluster id."""
    return {
        centroid_name(k): centroid(seg).astype(np.float32) for k, seg in sorted(segments.items())
    }


def split_centroids(
    tensors: Mapping[str, np.ndarray],
) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """Separate ``centroid.<k>`` tensors from a model's own tensors.

    Returns
    -------
    tuple
        ``(centroids by cluster id, the remaining tensors)``.

    Raises
    ------
    ValueError
        For a ``centroid.`` name whose suffix is not an integer cluster id.
    """
    centroids: dict[int, np.ndarray] = {}
    rest: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not name.startswith(CENTROID_PREFIX):
            rest[name] = value
            continue
        suffix = name.removeprefix(CENTROID_PREFIX)
        try:
            centroids[int(suffix)] = value
        except ValueError:
            raise ValueError(f"tensor {name!r}: a centroid's suffix must be a cluster id") from None
    return centroids, rest

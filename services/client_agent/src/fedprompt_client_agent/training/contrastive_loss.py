"""The client-side InfoNCE regulariser of the cluster prompt segment (DESIGN.md §3 step 3).

``λ · InfoNCE(mean(C_i); positive μ_k, negatives {μ_j, j ≠ k}; τ)`` with cosine similarity:
it pulls the member's cluster segment towards its own cluster's centroid and away from the
other clusters'. Centroids are token-means of each cluster's segment (``[width]``); the
member's segment is averaged the same way (over dim 0: tokens for text, colour channels for
the visual prompt rings), so both sides are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn


def cluster_segment(model: nn.Module) -> torch.Tensor | None:
    """The trainable cluster segment of a prompt model, or None if it has none."""
    segment_parameter = getattr(model, "segment_parameter", None)
    if callable(segment_parameter):
        try:
            tensor: torch.Tensor = segment_parameter("cluster")
            return tensor
        except (KeyError, ValueError):
            return None
    spec = getattr(model, "spec", None)
    embedding = getattr(model, "prompt_embedding", None)
    if spec is None or embedding is None or not hasattr(spec, "segment_slices"):
        return None
    rows = spec.segment_slices()["cluster"]
    if rows.stop <= rows.start:
        return None
    weight: torch.Tensor = embedding.weight[rows]
    return weight


def info_nce(
    segment: torch.Tensor,
    *,
    own: int,
    centroids: Mapping[int, torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """InfoNCE loss of ``segment``'s mean against the centroids (own cluster = positive)."""
    ids = sorted(centroids)
    c = segment.float().mean(dim=0)
    stacked = torch.stack([centroids[j].to(c.device, torch.float32) for j in ids])
    logits = torch.nn.functional.cosine_similarity(c.unsqueeze(0), stacked, dim=1) / temperature
    return torch.logsumexp(logits, dim=0) - logits[ids.index(own)]


def make_info_nce_loss(
    *,
    weight: float,
    temperature: float,
    own: int,
    centroids: Mapping[int, np.ndarray],
) -> Callable[[nn.Module], torch.Tensor] | None:
    """``extra_loss`` for the trainers, or None when it would be constant or switched off.

    With fewer than two clusters there are no negatives and the term is constant.
    """
    if weight <= 0 or len(centroids) < 2 or own not in centroids:
        return None
    fixed = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in centroids.items()}

    def loss(model: nn.Module) -> torch.Tensor:
        segment = cluster_segment(model)
        if segment is None:
            return torch.zeros((), requires_grad=False)
        return weight * info_nce(segment, own=own, centroids=fixed, temperature=temperature)

    return loss

"""The InfoNCE alignment score of a proposed cluster prompt (DESIGN.md §3 step 5).

One formula, used by the coordinator's contrastive aggregator (scores of every member's
proposal) and, under secure aggregation, by each member for its own proposal (the
coordinator then never sees it):

    s_i = log( exp(cos(c_i, μ_k)/τ) / Σ_j exp(cos(c_i, μ_j)/τ) ),

c_i the token-mean of the proposal, μ_j the centroid of cluster j.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.tensor_names import centroid

__all__ = ["alignment_scores"]


def alignment_scores(
    proposals: Sequence[np.ndarray],
    *,
    own: int,
    centroids: Mapping[int, np.ndarray],
    temperature: float,
) -> np.ndarray:
    """InfoNCE log-probability of the own centroid for each proposed segment."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    ids = sorted(centroids)
    if not proposals:
        return np.zeros(0, dtype=np.float64)
    # vectorised over members: token-means, cosines to every centroid, log-softmax
    means = np.stack([centroid(p) for p in proposals])
    mus = np.stack([np.asarray(centroids[j], dtype=np.float64) for j in ids])
    mean_norms = np.linalg.norm(means, axis=1, keepdims=True)
    mu_norms = np.linalg.norm(mus, axis=1, keepdims=True)
    unit_means = np.divide(means, mean_norms, out=np.zeros_like(means), where=mean_norms > 0)
    unit_mus = np.divide(mus, mu_norms, out=np.zeros_like(mus), where=mu_norms > 0)
    logits = unit_means @ unit_mus.T / temperature
    log_norm = np.logaddexp.reduce(logits, axis=1)
    out: np.ndarray = logits[:, ids.index(own)] - log_norm
    return out

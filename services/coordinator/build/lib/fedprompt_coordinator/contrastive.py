"""Contrastive alignment of cluster prompts (DESIGN.md §3 step 5).

Each member i of cluster k proposes a cluster segment ``C_k + ΔC_i``; its token-mean c_i is
scored by the InfoNCE log-probability of its own cluster's centroid among all centroids,

    s_i = log( exp(cos(c_i, μ_k)/τ) / Σ_j exp(cos(c_i, μ_j)/τ) ),

the alignment weights are the softmax of s_i over the members of k, and the aggregation
weights are w_i ∝ n_i · a_i. A member whose proposal looks like another cluster counts less.
With ``mean`` weighting (the ablation) a_i is uniform and w_i ∝ n_i.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def centroid(segment: np.ndarray) -> np.ndarray:
    """Token-mean of a prompt segment [tokens, width] -> [width] (float64)."""
    arr = np.asarray(segment, dtype=np.float64)
    return arr.mean(axis=0) if arr.ndim > 1 else arr


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


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
    scores = []
    for proposal in proposals:
        c = centroid(proposal)
        logits = np.array([_cos(c, centroids[j]) / temperature for j in ids])
        log_norm = float(np.logaddexp.reduce(logits))
        scores.append(logits[ids.index(own)] - log_norm)
    return np.asarray(scores, dtype=np.float64)


def alignment_weights(scores: np.ndarray) -> np.ndarray:
    """Softmax of the scores over the cluster's members."""
    z = scores - scores.max()
    e = np.exp(z)
    out: np.ndarray = e / e.sum()
    return out


def contrastive_cluster_weights(
    proposals: Sequence[np.ndarray],
    num_examples: Sequence[int],
    *,
    own: int,
    centroids: Mapping[int, np.ndarray],
    temperature: float,
) -> np.ndarray:
    """Normalised aggregation weights w_i ∝ n_i · a_i for one cluster's members."""
    a = alignment_weights(
        alignment_scores(proposals, own=own, centroids=centroids, temperature=temperature)
    )
    w = np.asarray(num_examples, dtype=np.float64) * a
    out: np.ndarray = w / w.sum()
    return out

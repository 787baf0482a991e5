"""Contrastive alignment of cluster prompts (DESIGN.md §3 step 5).

Each member i of cluster k proposes a cluster segment ``C_k + ΔC_i``; its token-mean c_i is
scored by the InfoNCE log-probability of its own cluster's centroid among all centroids,

    s_i = log( exp(cos(c_i, μ_k)/τ) / Σ_j exp(cos(c_i, μ_j)/τ) ),

the alignment weights are the softmax of s_i over the members of k, and the aggregation
weights are w_i ∝ n_i · a_i, capped per member like every mean's weights
(:mod:`~fedprompt_coordinator.aggregation.weighting`). A member whose proposal looks like
another cluster counts less. With ``mean`` weighting (the ablation) a_i is uniform.
The score itself is :func:`fedprompt.alignment.alignment_scores`, shared with the client
agent, which computes its own score under secure aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.alignment import alignment_scores
from fedprompt.tensor_names import CLUSTER_PROMPT, centroid
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.weighting import UNCAPPED, ShareCap
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


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
    weighting: ShareCap = UNCAPPED,
) -> np.ndarray:
    """Normalised aggregation weights w_i ∝ n_i · a_i for one cluster's members.

    ``weighting`` gives ``n_i`` (sample counts, or ones when uniform) and caps the final
    shares, so that neither a declared count nor a crafted alignment lifts one member above
    the cap.
    """
    a = alignment_weights(
        alignment_scores(proposals, own=own, centroids=centroids, temperature=temperature)
    )
    return weighting.shares(weighting.raw(num_examples) * a)


class ContrastiveFedAvg(WeightedFedAvg):
    """:class:`WeightedFedAvg` whose cluster weights are ``w_i ∝ n_i · a_i`` (DESIGN.md §3.5).

    ``a_i`` is the softmax over the cluster's members of the InfoNCE alignment score of the
    member's proposed cluster segment ``C_k + ΔC_i`` against all cluster centroids, so a
    member whose proposal looks like another cluster counts less.
    """

    name = "contrastive"

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        segment: str = CLUSTER_PROMPT,
        weighting: ShareCap = UNCAPPED,
    ) -> None:
        super().__init__(weighting=weighting)
        self.temperature = temperature
        self.segment = segment

    def cluster_weights(
        self, model: FederationModel, cluster_id: int, members: Sequence[ClientUpdate]
    ) -> np.ndarray:
        """Contrastive alignment weights (n-weighted when there is no cluster segment)."""
        base = model.cluster_tensors.get(cluster_id, model.cluster_template)
        if self.segment not in base:
            return super().cluster_weights(model, cluster_id, members)
        centroids = model.centroids(self.segment)
        base_centroid = centroid(base[self.segment])
        centroids.setdefault(cluster_id, base_centroid)
        # the token-mean is linear: centroid(C_k + ΔC_i) = centroid(C_k) + centroid(ΔC_i),
        # so each proposal is scored from its delta's mean without building C_k + ΔC_i
        proposals = [base_centroid + centroid(u.tensors[self.segment]) for u in members]
        return contrastive_cluster_weights(
            proposals,
            [u.num_examples for u in members],
            own=cluster_id,
            centroids=centroids,
            temperature=self.temperature,
            weighting=self.weighting,
        )

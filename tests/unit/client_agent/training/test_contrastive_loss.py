"""The client-side InfoNCE regulariser of the cluster segment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedprompt_client_agent.training.contrastive_loss import info_nce, make_info_nce_loss


class Rings(nn.Module):
    """A model exposing its cluster segment the way the prompt models do."""

    def __init__(self, segment: torch.Tensor) -> None:
        super().__init__()
        self.cluster = nn.Parameter(segment.clone())

    def segment_parameter(self, name: str) -> nn.Parameter:
        if name != "cluster":
            raise KeyError(name)
        return self.cluster


def _cos(a: torch.Tensor, b: np.ndarray) -> float:
    return float(torch.nn.functional.cosine_similarity(a, torch.as_tensor(b), dim=0))


def test_the_gradient_moves_the_cluster_segment_towards_its_own_centroid() -> None:
    torch.manual_seed(0)
    centroids = {0: np.array([1.0, 0.0, 0.0], np.float32), 1: np.array([0.0, 1.0, 0.0], np.float32)}
    model = Rings(torch.tensor([[0.2, 0.9, 0.1], [0.4, 0.7, -0.1]]))  # closer to cluster 1
    loss_fn = make_info_nce_loss(weight=1.0, temperature=0.5, own=0, centroids=centroids)
    assert loss_fn is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    own_before = _cos(model.cluster.detach().mean(0), centroids[0])
    other_before = _cos(model.cluster.detach().mean(0), centroids[1])
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(model)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
    mean = model.cluster.detach().mean(0)
    assert _cos(mean, centroids[0]) > own_before + 0.2
    assert _cos(mean, centroids[1]) < other_before - 0.2
    assert losses[-1] < losses[0]


def test_loss_is_the_cross_entropy_of_the_own_centroid() -> None:
    seg = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cents = {3: torch.tensor([1.0, 0.0]), 7: torch.tensor([0.0, 1.0])}
    loss = info_nce(seg, own=3, centroids=cents, temperature=1.0)
    assert float(loss) == pytest.approx(np.log(1 + np.exp(-1.0)), rel=1e-6)


@pytest.mark.parametrize(
    ("weight", "centroids", "own"),
    [
        (0.0, {0: np.ones(2), 1: -np.ones(2)}, 0),  # switched off
        (1.0, {0: np.ones(2)}, 0),  # one cluster: no negatives, constant term
        (1.0, {0: np.ones(2), 1: -np.ones(2)}, 5),  # own centroid unknown
    ],
)
def test_no_regulariser_when_it_would_be_constant(
    weight: float, centroids: dict[int, np.ndarray], own: int
) -> None:
    assert make_info_nce_loss(weight=weight, temperature=0.5, own=own, centroids=centroids) is None

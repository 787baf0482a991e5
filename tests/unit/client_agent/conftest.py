"""Fixtures the client agent's tests share: one intra-op thread, a small real text silo."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedprompt_client_agent.data.text_silos import SiloData, TextExample
from fedprompt_client_agent.tools.drug_review_silos import load_drug_reviews


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Small batches gain nothing from intra-op threads on a busy (shared) machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_class_silo() -> SiloData:
    """8 birth-control and 8 depression reviews for training, 2 + 2 more for val and test."""
    by_condition: dict[str, list[str]] = {"Birth Control": [], "Depression": []}
    for review in load_drug_reviews():
        texts = by_condition.get(review.condition)
        if texts is not None and len(texts) < 12:
            texts.append(review.text)
    labels = ("Birth Control", "Depression")
    split = {
        name: tuple(TextExample(t, i) for i, c in enumerate(labels) for t in by_condition[c][lo:hi])
        for name, (lo, hi) in {"train": (0, 8), "val": (8, 10), "test": (10, 12)}.items()
    }
    return SiloData(name="two-class", labels=labels, metadata={}, **split)

"""Fixtures the training tests share: one real MiniLM prompt classifier per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fedprompt_client_agent.models.text_prompt import (
    PromptClassifier,
    PromptSpec,
    build_prompt_classifier,
)

#: 4 global, 2 cluster and 2 local virtual tokens (rows 0-3, 4-5, 6-7 of the prompt table).
SPEC = PromptSpec(n_global=4, n_cluster=2, n_local=2)


@pytest.fixture(scope="module")
def built() -> tuple[PromptClassifier, Any]:
    """One MiniLM prompt classifier (``SPEC``, 2 labels) per module: loading it is the slow part."""
    return build_prompt_classifier(num_labels=2, spec=SPEC, seed=0, device="cpu")


@pytest.fixture
def model(built: tuple[PromptClassifier, Any]) -> Iterator[PromptClassifier]:
    """The module's model, reset to its initial prompt and head after every test."""
    initial = built[0].personal_state()
    yield built[0]
    built[0].load_personal_state(initial)


@pytest.fixture
def tokenizer(built: tuple[PromptClassifier, Any]) -> Any:
    """The backbone's tokenizer."""
    return built[1]

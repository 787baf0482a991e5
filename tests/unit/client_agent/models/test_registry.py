"""The model-family registry: every family of every strategy is built for both modalities."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.strategies import STRATEGIES, ModelFamily
from fedprompt_client_agent.config import Modality
from fedprompt_client_agent.models.registry import (
    MODEL_FAMILIES,
    BuiltModel,
    ModelRequest,
    model_builder,
    register_model_family,
)


def test_every_strategy_family_has_a_builder_per_modality() -> None:
    families = {spec.family for spec in STRATEGIES.values()}
    assert set(MODEL_FAMILIES) == {
        (modality, family) for modality in (Modality.TEXT, Modality.IMAGE) for family in families
    }
    for key in MODEL_FAMILIES:
        assert model_builder(*key) is MODEL_FAMILIES[key]


def test_a_pair_registers_once_and_unknown_pairs_are_named() -> None:
    with pytest.raises(ValueError, match="registered"):
        register_model_family(Modality.TEXT, ModelFamily.LORA)(lambda request: BuiltModel(None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no 'prompt' model family for auto data; registered: "):
        model_builder(Modality.AUTO, ModelFamily.PROMPT)


def test_a_request_passes_only_the_configured_segment_sizes() -> None:
    request = ModelRequest(source=Path("m"), num_labels=2, seed=0, device="cpu")
    assert request.segment_sizes() == {}
    sized = ModelRequest(
        source=request.source, num_labels=2, seed=0, device="cpu", n_global=3, n_local=0
    )
    assert sized.segment_sizes() == {"n_global": 3, "n_local": 0}

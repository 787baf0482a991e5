"""Turn clients' public metadata (flat JSON objects) into a numeric feature matrix.

Each metadata field becomes one or more columns, in sorted field-name order:

* **Numeric fields** (every present value an ``int`` or ``float``, not ``bool``) become one
  column. When all present values are >= 0 the column is first transformed with
  ``log1p``: sizes and counts such as ``num_records`` span orders of magnitude, and on a
  linear scale one very large silo would make every other silo look alike. Such a column
  is named ``log1p(<field>)`` and is only centred, not divided by its spread: one unit is a
  factor of e, so silos of 811 and 814 records stay near-identical instead of being blown
  apart to ±1 (standardising would give a meaningless size difference the weight of a
  specialty). Other numeric columns are standardised with
  :class:`~sklearn.preprocessing.StandardScaler`. Missing values are imputed with the
  column mean (after the transform); a constant column becomes all zeros.
* **Categorical fields** (every present value a ``str`` or ``bool``) are one-hot encoded
  with unscaled 0/1 columns named ``<field>=<value>`` (booleans as ``true``/``false``).
  A member that lacks the field gets the field's own ``<field>=<missing>`` category.
* A field whose values mix numbers with strings or booleans is treated as categorical,
  with each number as a category of its own.

What metadata is acceptable is decided by :mod:`fedprompt.client_input`, the validator the
coordinator applies at Join: a flat JSON object of finite scalars within size limits; a
JSON ``null`` counts as a missing field. Anything else is refused with
:class:`~fedprompt.errors.InvalidArgumentError` naming the client and field (never the
value: metadata is not logged or echoed), so that coordinator and clusterer never disagree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import numpy.typing as npt
from sklearn.preprocessing import StandardScaler

from fedprompt.client_input import MetadataValue, check_metadata

logger = logging.getLogger(__name__)

#: Name suffix of the category a member gets when it lacks a categorical field.
MISSING_CATEGORY = "<missing>"


@dataclass(frozen=True)
class FeatureMatrix:
    """Members' metadata as numbers: one row per member, one column per feature.

    Attributes
    ----------
    values
        Array of shape ``(n_members, n_features)``, rows in the members' order.
    names
        One name per column: ``field``, ``log1p(field)`` or ``field=category``.
    """

    values: npt.NDArray[np.float64]
    names: tuple[str, ...]


def metadata_field(client_id: str) -> str:
    """How a member's metadata is named in error messages."""
    return f"metadata of client {client_id!r}"


def build_features(
    client_ids: Sequence[str], metadata: Sequence[Mapping[str, object]]
) -> FeatureMatrix:
    """Encode members' metadata as a standardised, one-hot feature matrix.

    Parameters
    ----------
    client_ids
        The members' ids, used in error messages; same length as ``metadata``.
    metadata
        One mapping per member; each is checked with
        :func:`fedprompt.client_input.check_metadata`.

    Returns
    -------
    FeatureMatrix
        Rows in the members' order, columns grouped by field in sorted field-name order.

    Raises
    ------
    InvalidArgumentError
        If a value is not a finite number, a string or a boolean.
    """
    if len(client_ids) != len(metadata):
        raise ValueError("client_ids and metadata must have the same length")
    rows = [
        check_metadata(md, field=metadata_field(cid))
        for cid, md in zip(client_ids, metadata, strict=True)
    ]
    fields = sorted({field for row in rows for field in row})
    columns: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    for field in fields:
        values = [row.get(field) for row in rows]
        present = [v for v in values if v is not None]
        if all(_is_number(v) for v in present):
            column, name = _numeric_column(field, values)
            columns.append(column)
            names.append(name)
        else:
            if any(_is_number(v) for v in present):
                logger.warning("metadata field %r mixes numbers and text; one-hot encoded", field)
            one_hot, category_names = _one_hot_columns(field, values)
            columns.extend(one_hot)
            names.extend(category_names)
    matrix = np.column_stack(columns) if columns else np.zeros((len(rows), 0), dtype=np.float64)
    return FeatureMatrix(values=matrix.astype(np.float64, copy=False), names=tuple(names))


def _numeric_column(
    field: str, values: Sequence[MetadataValue | None]
) -> tuple[npt.NDArray[np.float64], str]:
    """One standardised column for a numeric field; missing values get the mean."""
    raw = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    name = field
    if np.nanmin(raw) >= 0.0:
        logged = np.log1p(raw)
        logged[np.isnan(logged)] = np.nanmean(logged)
        centred: npt.NDArray[np.float64] = logged - logged.mean()
        return centred, f"log1p({field})"
    peak = float(np.nanmax(np.abs(raw)))
    if peak > 0.0:
        raw = raw / peak  # standardising is scale-free; this keeps the variance finite
    raw[np.isnan(raw)] = np.nanmean(raw)
    scaled: npt.NDArray[np.float64] = StandardScaler().fit_transform(raw.reshape(-1, 1))[:, 0]
    return scaled, name


def _one_hot_columns(
    field: str, values: Sequence[MetadataValue | None]
) -> tuple[list[npt.NDArray[np.float64]], list[str]]:
    """0/1 columns, one per category of a categorical field, ``<missing>`` last."""
    keys = [None if v is None else _category_key(v) for v in values]
    categories = sorted({k for k in keys if k is not None})
    columns = [np.array([k == c for k in keys], dtype=np.float64) for c in categories]
    names = [f"{field}={label}" for _, label in categories]
    if any(k is None for k in keys):
        columns.append(np.array([k is None for k in keys], dtype=np.float64))
        names.append(f"{field}={MISSING_CATEGORY}")
    return columns, names


def _category_key(value: MetadataValue) -> tuple[int, str]:
    """Sortable, type-aware category of a value: ``True`` and ``"true"`` differ."""
    if isinstance(value, bool):
        return (0, "true" if value else "false")
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value))


def _is_number(value: object) -> TypeGuard[int | float]:
    """Tell whether a value is an int or a float (booleans are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)

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

A JSON ``null`` counts as a missing field. Nested objects, lists and non-finite numbers are
rejected with :class:`~fedprompt.errors.InvalidArgumentError` naming the client and field
(never the value: metadata is not logged or echoed).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
from sklearn.preprocessing import StandardScaler

from fedprompt.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

#: A value a metadata field may hold.
MetadataValue = str | bool | int | float
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


def parse_metadata_json(client_id: str, text: str) -> dict[str, MetadataValue]:
    """Decode one member's metadata JSON into a flat mapping of scalar values.

    Parameters
    ----------
    client_id
        The member's id, used in error messages.
    text
        A JSON object whose values are numbers, strings, booleans or ``null``. An empty
        string is read as an empty object.

    Returns
    -------
    dict[str, MetadataValue]
        The fields with non-null values.

    Raises
    ------
    InvalidArgumentError
        If ``text`` is not valid JSON, not an object, or holds a nested value, a list or a
        non-finite number.
    """
    if not text.strip():
        return {}
    try:
        decoded = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"metadata of client {client_id!r} is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise InvalidArgumentError(
            f"metadata of client {client_id!r} is not valid JSON: {detail}"
        ) from None
    if not isinstance(decoded, dict):
        raise InvalidArgumentError(
            f"metadata of client {client_id!r} must be a JSON object, "
            f"not {_json_type_name(decoded)}"
        )
    return validate_metadata(client_id, decoded)


def validate_metadata(client_id: str, metadata: Mapping[str, Any]) -> dict[str, MetadataValue]:
    """Check that every value is a finite number, a string or a boolean; drop ``None``.

    Parameters
    ----------
    client_id
        The member's id, used in error messages.
    metadata
        Field name to value.

    Returns
    -------
    dict[str, MetadataValue]
        The fields with non-``None`` values.

    Raises
    ------
    InvalidArgumentError
        If a field name is not a string, or a value is nested, a list or a non-finite number.
    """
    clean: dict[str, MetadataValue] = {}
    for field, value in metadata.items():
        if not isinstance(field, str):
            raise InvalidArgumentError(
                f"metadata of client {client_id!r} has a field name that is not a string"
            )
        if value is None:
            continue
        if _is_number(value) and not _is_finite(value):
            raise InvalidArgumentError(
                f"metadata field {field!r} of client {client_id!r} is not a finite number"
            )
        if not isinstance(value, str | bool | int | float):
            raise InvalidArgumentError(
                f"metadata field {field!r} of client {client_id!r} must be a number, string "
                f"or boolean, not {_json_type_name(value)}"
            )
        clean[field] = value
    return clean


def build_features(
    client_ids: Sequence[str], metadata: Sequence[Mapping[str, object]]
) -> FeatureMatrix:
    """Encode members' metadata as a standardised, one-hot feature matrix.

    Parameters
    ----------
    client_ids
        The members' ids, used in error messages; same length as ``metadata``.
    metadata
        One mapping per member; each is checked with :func:`validate_metadata`.

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
    rows = [validate_metadata(cid, md) for cid, md in zip(client_ids, metadata, strict=True)]
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


def _is_finite(value: int | float) -> bool:
    """Tell whether ``value`` converts to a finite float (huge ints overflow)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _reject_constant(name: str) -> float:
    """``json.loads`` hook that refuses ``NaN`` and ``Infinity``."""
    raise ValueError(f"non-finite number {name} is not allowed")


def _json_type_name(value: object) -> str:
    """JSON name of a decoded value's type, for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__

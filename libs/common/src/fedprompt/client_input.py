"""The one validation of what a client sends: ids, counts, metadata, strings, metrics.

Every service that reads a client-supplied field checks it here, so that the coordinator
and the clusterer can never disagree on what is acceptable. One function per field kind:

- :func:`check_client_id`: 1-128 letters, digits, ``.``, ``_``, ``-``; never a reserved
  identity (``ca``, ``coordinator``, ``clusterer``, ``operator``).
- :func:`check_count`: an integer count (training examples) between 1 (or 0 where a field
  allows it) and a configured maximum (the coordinator's ``max_client_examples``, 10^9 by
  default).
- :func:`parse_metadata` / :func:`check_metadata`: public metadata is a *flat* JSON object
  of at most :data:`MAX_METADATA_KEYS` fields, each named by 1 to :data:`MAX_METADATA_KEY_CHARS`
  characters, whose values are strings (at most :data:`MAX_METADATA_STRING_CHARS`
  characters), booleans, finite numbers (integers within +-2^53, so that every value is
  exact as a double) or ``null``. ``null`` is accepted and means "not published": the field
  is dropped, as if absent. The document is at most :data:`MAX_METADATA_BYTES` bytes
  (UTF-8), before and after normalisation. Nesting is refused *before* the JSON parser
  runs, so a deeply nested document costs one linear scan, never a recursion.
- :func:`check_text`: a bounded string field (device, model name, fingerprint, strategy,
  tensor and metric names): no control characters, no lone surrogates, at most the given
  number of characters.
- :func:`check_names`: a bounded list of bounded names (the trainable tensors).
- :func:`check_metrics`: at most :data:`MAX_METRICS` metrics, named by 1 to
  :data:`MAX_METRIC_NAME_CHARS` characters, with finite values.

Every refusal is an :class:`~fedprompt.errors.InvalidArgumentError` (``INVALID_ARGUMENT``)
whose message names the field and the rule, never the offending value (metadata is not
echoed or logged). Nothing here raises any other exception for any input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

from fedprompt.errors import InvalidArgumentError
from fedprompt.tls import RESERVED_IDENTITIES

#: A value a metadata field may hold once parsed (``null`` fields are dropped).
MetadataValue = str | bool | int | float

#: Client ids: what ``fedprompt certs`` accepts as a silo id, and a TLS identity's CN.
CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Largest metadata document (UTF-8 bytes), as sent and as normalised.
MAX_METADATA_BYTES: Final = 16 * 1024
#: Most fields one metadata object may have.
MAX_METADATA_KEYS: Final = 64
#: Longest metadata field name (characters).
MAX_METADATA_KEY_CHARS: Final = 64
#: Longest metadata string value (characters).
MAX_METADATA_STRING_CHARS: Final = 256
#: Largest magnitude of an integer metadata value: every one is exact as a double.
MAX_METADATA_INT: Final = 2**53
#: Longest short string field: device, model name, fingerprint, strategy (characters).
MAX_TEXT_CHARS: Final = 256
#: Longest tensor name (characters).
MAX_TENSOR_NAME_CHARS: Final = 256
#: Most trainable tensors a client may declare.
MAX_TENSOR_NAMES: Final = 4096
#: Most metrics one report (or one upload header) may carry.
MAX_METRICS: Final = 64
#: Longest metric name (characters).
MAX_METRIC_NAME_CHARS: Final = 64
#: Default bound of a declared example count (the coordinator's ``max_client_examples``).
DEFAULT_MAX_EXAMPLES: Final = 10**9

#: C0/C1 control characters and lone surrogates: never in a field a client sends.
_FORBIDDEN_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: A JSON string literal (escapes included); linear, no backtracking.
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)


def check_client_id(value: str, *, field: str = "client_id") -> str:
    """Return ``value`` if it is a valid client id, else raise ``INVALID_ARGUMENT``.

    Parameters
    ----------
    value
        The id a client names itself by.
    field
        The field's name, for the message.
    """
    if not CLIENT_ID_PATTERN.fullmatch(value):
        raise InvalidArgumentError(
            f"{field} must be 1-128 characters of letters, digits, '.', '_' or '-' "
            "(it is the client id and the certificate's name)"
        )
    if value.lower() in RESERVED_IDENTITIES:
        raise InvalidArgumentError(
            f"{field} {value!r} is reserved (it names the CA, a service or the operator)"
        )
    return value


def check_count(value: int, *, field: str, maximum: int, minimum: int = 1) -> int:
    """Return ``value`` if ``minimum <= value <= maximum``, else raise ``INVALID_ARGUMENT``.

    Parameters
    ----------
    value
        A count a client declares (e.g. its training examples).
    field
        The field's name, for the message.
    maximum
        The largest accepted value (e.g. the coordinator's ``max_client_examples``).
    minimum
        The smallest accepted value (1 unless the field allows 0).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{field} must be an integer")
    if value < minimum or value > maximum:
        raise InvalidArgumentError(f"{field} must be between {minimum} and {maximum}")
    return value


def check_text(value: str, *, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Return ``value`` if it is at most ``max_chars`` characters without control characters.

    Parameters
    ----------
    value
        A string a client sends.
    field
        The field's name, for the message.
    max_chars
        The longest accepted value.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{field} must be a string")
    if len(value) > max_chars:
        raise InvalidArgumentError(f"{field} is longer than {max_chars} characters")
    if _FORBIDDEN_CHARS.search(value):
        raise InvalidArgumentError(f"{field} contains control characters or lone surrogates")
    return value


def check_names(
    values: Iterable[str],
    *,
    field: str,
    max_count: int = MAX_TENSOR_NAMES,
    max_chars: int = MAX_TENSOR_NAME_CHARS,
) -> tuple[str, ...]:
    """Return the names as a tuple if there are at most ``max_count``, each a valid name.

    Parameters
    ----------
    values
        Names a client declares (e.g. its trainable tensors).
    field
        The field's name, for the message.
    max_count
        The most names accepted.
    max_chars
        The longest accepted name; names must not be empty.
    """
    names = tuple(values)
    if len(names) > max_count:
        raise InvalidArgumentError(f"{field} lists more than {max_count} names")
    for name in names:
        if not name:
            raise InvalidArgumentError(f"{field} holds an empty name")
        check_text(name, field=f"a name in {field}", max_chars=max_chars)
    return names


def check_metrics(metrics: Mapping[str, float], *, field: str = "metrics") -> dict[str, float]:
    """The metrics a client reports, as floats, or ``INVALID_ARGUMENT`` for the first bad one.

    At most :data:`MAX_METRICS` metrics, each named by 1 to :data:`MAX_METRIC_NAME_CHARS`
    characters (no control characters), each value a finite number.

    Parameters
    ----------
    metrics
        Metric name to value (a protobuf map or a dict).
    field
        The field's name, for the message.
    """
    if len(metrics) > MAX_METRICS:
        raise InvalidArgumentError(
            f"{field}: at most {MAX_METRICS} metrics per report, got {len(metrics)}"
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not key:
            raise InvalidArgumentError(f"{field}: metric names must not be empty")
        check_text(key, field=f"a metric name in {field}", max_chars=MAX_METRIC_NAME_CHARS)
        if not _is_real(value) or not math.isfinite(value):
            raise InvalidArgumentError(f"{field}: metric {key!r} is not finite")
        out[key] = float(value)
    return out


def parse_metadata(text: str, *, field: str = "metadata_json") -> dict[str, MetadataValue]:
    """Parse a client's public metadata: a flat JSON object of finite scalars.

    Parameters
    ----------
    text
        The JSON document; an empty (or all-blank) string is an empty object.
    field
        What the metadata is called in messages (``metadata_json``, or ``metadata of
        client 'x'``).

    Returns
    -------
    dict[str, MetadataValue]
        The fields with non-null values, in document order.

    Raises
    ------
    InvalidArgumentError
        If the document is too large, not valid JSON, not an object, nested, or breaks a
        limit of :func:`check_metadata`.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{field} must be a string")
    if len(text) > MAX_METADATA_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_METADATA_BYTES
    ):
        raise InvalidArgumentError(f"{field} is over {MAX_METADATA_BYTES} bytes")
    if not text.strip():
        return {}
    _refuse_nesting(text, field)
    try:
        decoded = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys
        )
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"{field} is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from None
    except _MetadataRefusalError as exc:  # NaN/Infinity, a duplicate field name
        raise InvalidArgumentError(f"{field} is not acceptable JSON: {exc}") from None
    except ValueError:  # an integer of more digits than Python converts
        raise InvalidArgumentError(f"{field} holds a number out of range") from None
    except RecursionError:  # unreachable after _refuse_nesting; kept as a last guard
        raise InvalidArgumentError(f"{field} is nested too deeply") from None
    if not isinstance(decoded, dict):
        raise InvalidArgumentError(f"{field} must be a JSON object, not {_json_type(decoded)}")
    return check_metadata(decoded, field=field)


def check_metadata(
    metadata: Mapping[str, object], *, field: str = "metadata"
) -> dict[str, MetadataValue]:
    """Check a decoded metadata object; return its non-null fields.

    Parameters
    ----------
    metadata
        Field name to value, as decoded from JSON (or built in code).
    field
        What the metadata is called in messages.

    Raises
    ------
    InvalidArgumentError
        If there are more than :data:`MAX_METADATA_KEYS` fields, a name is not a string of
        1 to :data:`MAX_METADATA_KEY_CHARS` characters, a value is nested, a list, a
        non-finite number, an integer beyond +-2^53, a string over
        :data:`MAX_METADATA_STRING_CHARS` characters, or the normalised document is over
        :data:`MAX_METADATA_BYTES` bytes.
    """
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidArgumentError(f"{field} has more than {MAX_METADATA_KEYS} fields")
    clean: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"{field} has a field name that is not a non-empty string")
        check_text(key, field=f"a field name of {field}", max_chars=MAX_METADATA_KEY_CHARS)
        if value is None:
            continue
        clean[key] = _check_metadata_value(key, value, field)
    if len(canonical_metadata_json(clean).encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"{field} is over {MAX_METADATA_BYTES} bytes once normalised")
    return clean


def canonical_metadata_json(metadata: Mapping[str, MetadataValue]) -> str:
    """The normalised JSON text of checked metadata: sorted keys, non-ASCII kept as is.

    Non-ASCII characters are not re-escaped (``\\uXXXX`` would make a character up to 12
    bytes), so the normalised text stays close to the size the client sent; it is checked
    against :data:`MAX_METADATA_BYTES` all the same.
    """
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, allow_nan=False)


def _check_metadata_value(key: str, value: object, field: str) -> MetadataValue:
    where = f"field {key!r} of {field}"
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_text(value, field=where, max_chars=MAX_METADATA_STRING_CHARS)
    if isinstance(value, int):
        if abs(value) > MAX_METADATA_INT:
            raise InvalidArgumentError(f"{where} is an integer beyond +-2^53")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{where} is not a finite number")
        return value
    raise InvalidArgumentError(
        f"{where} must be a string, number, boolean or null, not {_json_type(value)}"
    )


def _refuse_nesting(text: str, field: str) -> None:
    """Refuse any nested object or array, in one linear scan before the parser runs.

    String literals are blanked out first (their brackets are text); what remains may hold
    one ``{`` (the object itself) and no ``[``.
    """
    outside = _JSON_STRING.sub('""', text).strip()
    if outside.startswith("["):
        raise InvalidArgumentError(f"{field} must be a JSON object, not an array")
    if outside.count("{") > 1 or "[" in outside:
        raise InvalidArgumentError(
            f"{field} must be a flat JSON object: nested objects and arrays are not allowed"
        )


class _MetadataRefusalError(ValueError):
    """Raised inside the JSON parser's hooks; turned into an InvalidArgumentError."""


def _refuse_constant(name: str) -> float:
    raise _MetadataRefusalError(f"the non-finite number {name} is not allowed")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _MetadataRefusalError("a field name appears twice")
        out[key] = value
    return out


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    """JSON name of a decoded value's type, for messages."""
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

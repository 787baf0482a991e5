"""Split a protobuf message into parts under a byte budget, and merge the parts again.

A gRPC message is limited to 2 MiB (:data:`fedprompt.server.DEFAULT_MAX_MESSAGE_BYTES`), but
a message whose size grows with the federation (the clustering request of every member's
metadata, the assignment map of the answer) has no bound. Such a message travels as a
stream of parts of the same type:

* :func:`split_message` puts every singular field into the first part and deals out the
  elements of the repeated and map fields in order, starting a new part when the next
  element would take a part over ``max_bytes``;
* :func:`merge_messages` is ``MergeFrom`` over the parts: repeated fields concatenate, map
  entries join, and the singular fields of the first part stay (later parts leave them
  unset).

``merge_messages(split_message(m, max_bytes=b)) == m`` for any message whose map keys are
unique (they always are) and any budget. A part exceeds the budget only when one element
alone does; it then travels in a part of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

#: Upper bound of the bytes one element adds to a message beyond its own content: its field
#: tag and length prefix (and, for a map entry, the tags and prefixes of its key and value).
ELEMENT_OVERHEAD_BYTES = 24
#: Wire size of a varint or fixed-width scalar element, at most.
SCALAR_BYTES = 10


def _content_bytes(value: Any) -> int:
    """Bytes of one element's content (a message, a string, bytes or a number)."""
    if isinstance(value, Message):
        return value.ByteSize()
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    return SCALAR_BYTES


def split_message(message: M, *, max_bytes: int) -> list[M]:
    """Split ``message`` into parts of the same type, each at most ``max_bytes`` if possible.

    Parameters
    ----------
    message
        Any protobuf message.
    max_bytes
        Budget of one part's serialized size (the first part also holds every singular field).

    Returns
    -------
    list
        At least one part; :func:`merge_messages` of them equals ``message``.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    head = type(message)()
    head.CopyFrom(message)
    fields = [f for f, _ in message.ListFields() if f.is_repeated]
    for field in fields:
        head.ClearField(field.name)
    parts = [head]
    used = head.ByteSize()
    filled = False  # whether the current part holds an element yet

    def room_for(size: int) -> None:
        nonlocal used, filled
        if filled and used + size > max_bytes:
            parts.append(type(message)())
            used, filled = 0, False
        used += size
        filled = True

    for field in fields:
        source = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key in source:
                value = source[key]
                room_for(_content_bytes(key) + _content_bytes(value) + ELEMENT_OVERHEAD_BYTES)
                target = getattr(parts[-1], field.name)
                if value_field.message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.message_type is not None:
            for element in source:
                room_for(element.ByteSize() + ELEMENT_OVERHEAD_BYTES)
                getattr(parts[-1], field.name).add().CopyFrom(element)
        else:
            for element in source:
                room_for(_content_bytes(element) + ELEMENT_OVERHEAD_BYTES)
                getattr(parts[-1], field.name).append(element)
    return parts


def merge_messages(parts: Iterable[M], into: M) -> M:
    """Merge ``parts`` (as made by :func:`split_message`) into ``into`` and return it."""
    for part in parts:
        into.MergeFrom(part)
    return into

"""Typed shapes of mnemo's answers (see docs/api.md), as :class:`typing.TypedDict` s.

Answers are returned as the plain JSON objects the server sends; these types describe them
for type checkers and editors. Keys the server may leave out are in ``total=False`` bases.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, TypedDict, Union

JSONValue = Any
"""Any value :func:`json.dumps` accepts."""

# ------------------------------------------------------------------------- conversations


class Conversation(TypedDict):
    """A conversation: ``{"id": "conv_…", "object": "conversation", "created_at", "metadata"}``."""

    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: Dict[str, str]


class ConversationDeleted(TypedDict):
    """The answer to deleting a conversation."""

    id: str
    object: Literal["conversation.deleted"]
    deleted: bool


Item = Dict[str, Any]
"""A conversation item as stored (an OpenAI ``ConversationItem``: ``{"id", "type", …}``)."""

ItemParam = Dict[str, Any]
"""An item to append (an OpenAI ``ResponseInputItemParam``; may carry an ``embedding``)."""


class ItemList(TypedDict):
    """A page of items: ``first_id``/``last_id`` are ``None`` when ``data`` is empty."""

    object: Literal["list"]
    data: List[Item]
    first_id: Optional[str]
    last_id: Optional[str]
    has_more: bool


# ------------------------------------------------------------------------------ memory


@dataclass(frozen=True)
class MemoryValue:
    """A stored memory value: its exact bytes, ``ETag`` and ``Content-Type``."""

    key: str
    value: bytes
    etag: str
    content_type: str

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (raises :class:`UnicodeDecodeError` if it is not)."""
        return self.value.decode("utf-8")

    def json(self) -> JSONValue:
        """The value parsed as JSON (raises :class:`ValueError` if it is not JSON)."""
        return _json.loads(self.value)


class MemoryDeleted(TypedDict):
    """The answer to deleting a key."""

    key: str
    deleted: bool


class MemoryEntry(TypedDict):
    """A key in a listing (the value itself is not included)."""

    key: str
    size: int
    etag: str
    content_type: str
    updated_at: int
    expires_at: Optional[int]


class MemoryList(TypedDict):
    """A page of keys in byte order; pass ``next_after`` as ``after`` for the next page."""

    object: Literal["list"]
    data: List[MemoryEntry]
    has_more: bool
    next_after: Optional[str]


class _BatchOperationBase(TypedDict):
    op: Literal["put", "delete"]
    key: str


class BatchOperation(_BatchOperationBase, total=False):
    """One operation of :meth:`Memory.batch`.

    ``value`` may be ``bytes`` (sent base64-encoded, default content type
    ``application/octet-stream``), ``str`` (stored as UTF-8 text) or any other JSON-able value
    (stored as JSON text with content type ``application/json``). ``value_base64`` is passed
    through as is.
    """

    value: Union[bytes, str, JSONValue]
    value_base64: str
    content_type: str
    if_match: str
    if_none_match: str
    ttl_seconds: int


class BatchResult(TypedDict):
    """The outcome of one batch operation (``etag`` is ``None`` for a delete)."""

    key: str
    etag: Optional[str]
    deleted: bool


# ------------------------------------------------------------------------------ search


class SearchScope(TypedDict, total=False):
    """Narrows a search to one conversation, or to memory keys under a prefix."""

    conversation_id: str
    prefix: str


class SearchFilter(TypedDict, total=False):
    """Filters on items: ``created_after`` inclusive, ``created_before`` exclusive (Unix seconds)."""

    role: str
    created_after: int
    created_before: int
    metadata: Dict[str, str]


class SearchResult(TypedDict, total=False):
    """One result, best first. Items: ``item_id``, ``conversation_id``, ``item``; memory:
    ``key`` and ``value`` (the JSON value without its ``embedding``)."""

    object: Literal["search.result"]
    score: float
    item_id: str
    conversation_id: str
    item: Item
    key: str
    value: JSONValue


# --------------------------------------------------------------------------------- SQL


class SqlColumn(TypedDict):
    """A result column: its name and SQL type (``text``, ``bigint``, ``timestamptz``, …)."""

    name: str
    type: str


class SqlResult(TypedDict):
    """A JSON SQL answer; ``truncated`` is true when more rows than ``--sql-max-rows`` matched."""

    object: Literal["sql.result"]
    columns: List[SqlColumn]
    rows: List[List[Any]]
    truncated: bool


# ------------------------------------------------------------------------- change feed


class _ChangeEventBase(TypedDict):
    id: str
    seq: int
    at: int
    type: str


class ChangeEvent(_ChangeEventBase, total=False):
    """One change: ``id`` is the cursor after it (resume with ``after=id``); the other keys
    depend on ``type`` (``conversation.created``, ``item.created``, ``memory.put``, …)."""

    conversation_id: str
    item_ids: List[str]
    key: str
    user_id: str
    etag: str
    research: bool
    body: Any


class ChangesPage(TypedDict):
    """A page of the change feed; ``next_cursor`` is always set (pass it as ``after``)."""

    object: Literal["list"]
    data: List[ChangeEvent]
    next_cursor: str
    has_more: bool


__all__ = [
    "BatchOperation",
    "BatchResult",
    "ChangeEvent",
    "ChangesPage",
    "Conversation",
    "ConversationDeleted",
    "Item",
    "ItemList",
    "ItemParam",
    "JSONValue",
    "MemoryDeleted",
    "MemoryEntry",
    "MemoryList",
    "MemoryValue",
    "SearchFilter",
    "SearchResult",
    "SearchScope",
    "SqlColumn",
    "SqlResult",
]

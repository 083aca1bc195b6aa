"""A thin typed client for mnemo's HTTP API, synchronous (:class:`MnemoClient`) and
asynchronous (:class:`AsyncMnemoClient`).

Both mirror docs/api.md route by route::

    client.conversations   /v1/conversations and its items
    client.memory          /v1/kv (values, conditional writes, listings, atomic batches)
    client.search(...)     /v1/search
    client.sql(...)        /v1/sql (JSON, or an Arrow table with sql_arrow)
    client.changes         /v1/changes and /v1/changes/stream

Answers are the server's JSON objects (typed in :mod:`mnemo_client.types`); error answers
raise :class:`~mnemo_client.MnemoError` (404 :class:`~mnemo_client.NotFoundError`, 412
:class:`~mnemo_client.PreconditionFailedError`).
"""

from __future__ import annotations

import base64
import json as _json
from dataclasses import dataclass
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)
from urllib.parse import quote

import httpx

from ._http import DEFAULT_TIMEOUT, AsyncTransport, MnemoError, Transport
from .types import (
    BatchOperation,
    BatchResult,
    ChangeEvent,
    ChangesPage,
    Conversation,
    ConversationDeleted,
    Item,
    ItemList,
    ItemParam,
    JSONValue,
    MemoryDeleted,
    MemoryEntry,
    MemoryList,
    MemoryValue,
    SearchFilter,
    SearchResult,
    SearchScope,
    SqlResult,
)

if TYPE_CHECKING:  # pyarrow is optional: imported by sql_arrow only
    import pyarrow

__all__ = [
    "AsyncChangeStream",
    "AsyncMnemoClient",
    "ChangeStream",
    "MnemoClient",
]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""The media type of an Arrow IPC stream, as ``/v1/sql`` answers it."""

STREAM_READ_TIMEOUT = 45.0
"""The least read timeout of a change stream: the server sends a heartbeat every 15 s."""

Order = Literal["asc", "desc"]
TimeoutTypes = Union[float, None, httpx.Timeout]
Value = Union[bytes, bytearray, memoryview, str, JSONValue]

# ------------------------------------------------------------------------------ helpers


def _segment(value: str) -> str:
    """``value`` as one percent-encoded path segment (``/``, ``%``, ``?``, ``#`` included).

    ``.`` and ``..`` are encoded too: URL normalisation would otherwise drop them as dot
    segments.
    """
    seg = quote(value, safe="")
    if seg in (".", ".."):
        seg = seg.replace(".", "%2E")
    return seg


def _kv_path(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError("a memory key is a non-empty string")
    return "/v1/kv/" + _segment(key)


def _conv_path(conversation_id: str, *rest: str) -> str:
    return "/".join(["/v1/conversations", _segment(conversation_id), *(_segment(r) for r in rest)])


def _etag(tag: str) -> str:
    """An entity tag as a header wants it: ``abc`` becomes ``"abc"``; ``"abc"``, ``W/"abc"``
    and ``*`` are kept."""
    if tag == "*" or tag.startswith('"') or tag.startswith("W/"):
        return tag
    return f'"{tag}"'


def _if_match(tags: Union[str, Sequence[str]]) -> str:
    if isinstance(tags, str):
        return _etag(tags)
    if not tags:
        raise ValueError("if_match needs at least one ETag")
    return ", ".join(_etag(t) for t in tags)


def _dumps(value: JSONValue) -> str:
    return _json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encode_value(value: Value, content_type: Optional[str]) -> Tuple[bytes, Optional[str]]:
    """Bytes are sent as they are; ``str`` as UTF-8 text; anything else as JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), content_type
    if isinstance(value, str):
        return value.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    return _dumps(value).encode("utf-8"), content_type or "application/json"


def _put_request(
    value: Value,
    content_type: Optional[str],
    if_match: Union[str, Sequence[str], None],
    if_none_match: Optional[str],
    ttl_seconds: Optional[int],
) -> Tuple[bytes, Dict[str, str], Dict[str, Any]]:
    body, ctype = _encode_value(value, content_type)
    headers: Dict[str, str] = {}
    if ctype is not None:
        headers["Content-Type"] = ctype
    if if_match is not None:
        headers["If-Match"] = _if_match(if_match)
    if if_none_match is not None:
        headers["If-None-Match"] = _etag(if_none_match)
    return body, headers, {"ttl_seconds": ttl_seconds}


def _memory_value(key: str, response: httpx.Response) -> MemoryValue:
    return MemoryValue(
        key=key,
        value=response.content,
        etag=response.headers.get("etag", ""),
        content_type=response.headers.get("content-type", "application/octet-stream"),
    )


def _batch_operation(op: Mapping[str, Any]) -> Dict[str, Any]:
    """One operation in the wire format: ``bytes`` values become ``value_base64``, values
    that are neither bytes nor text become JSON text, ``None`` fields are left out."""
    out = {k: v for k, v in op.items() if v is not None}
    if "value" in out:
        value = out["value"]
        if isinstance(value, (bytes, bytearray, memoryview)):
            del out["value"]
            out["value_base64"] = base64.b64encode(bytes(value)).decode("ascii")
        elif not isinstance(value, str):
            out["value"] = _dumps(value)
            out.setdefault("content_type", "application/json")
    if "if_match" in out:
        out["if_match"] = _if_match(out["if_match"])
    if "if_none_match" in out:
        out["if_none_match"] = _etag(out["if_none_match"])
    return out


def _batch_body(operations: Iterable[BatchOperation]) -> Dict[str, Any]:
    return {"operations": [_batch_operation(op) for op in operations]}


def _conversation_body(
    metadata: Optional[Mapping[str, str]], items: Optional[Sequence[ItemParam]]
) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if items is not None:
        body["items"] = list(items)
    return body


def _search_body(
    query: Optional[str],
    vector: Optional[Sequence[float]],
    mode: Optional[str],
    source: Optional[str],
    scope: Optional[SearchScope],
    conversation_id: Optional[str],
    prefix: Optional[str],
    filter: Optional[SearchFilter],
    top_k: Optional[int],
    consistency: Optional[str],
) -> Dict[str, Any]:
    if query is None and vector is None:
        raise ValueError("search needs a query, a vector or both")
    body: Dict[str, Any] = {}
    if query is not None:
        body["query"] = query
    if vector is not None:
        body["vector"] = [float(x) for x in vector]
    scope_: Dict[str, Any] = dict(scope or {})
    if conversation_id is not None:
        scope_["conversation_id"] = conversation_id
    if prefix is not None:
        scope_["prefix"] = prefix
    if scope_:
        body["scope"] = scope_
    for name, value in (
        ("mode", mode),
        ("source", source),
        ("filter", dict(filter) if filter is not None else None),
        ("top_k", top_k),
        ("consistency", consistency),
    ):
        if value is not None:
            body[name] = value
    return body


def _sql_body(query: str, params: Optional[Sequence[Any]]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"query": query}
    if params is not None:
        body["params"] = list(params)
    return body


def _arrow_table(response: httpx.Response) -> "pyarrow.Table":
    try:
        import pyarrow
        import pyarrow.ipc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sql_arrow needs pyarrow: pip install pyarrow") from e
    ctype = response.headers.get("content-type", "")
    if not ctype.startswith(ARROW_STREAM):
        raise MnemoError(response.status_code, f"expected an Arrow stream, got {ctype!r}")
    try:
        return pyarrow.ipc.open_stream(response.content).read_all()
    except pyarrow.ArrowException as e:
        # The server ends the stream early when the query fails after its first batch.
        raise MnemoError(
            response.status_code, f"the Arrow stream ended early (the query failed): {e}"
        ) from e


def _include(include: Union[str, Sequence[str], None]) -> Optional[str]:
    if include is None or isinstance(include, str):
        return include
    return ",".join(include)


def _changes_params(
    after: Optional[str],
    limit: Optional[int],
    wait_ms: Optional[int],
    include: Union[str, Sequence[str], None],
) -> Dict[str, Any]:
    return {"after": after, "limit": limit, "wait_ms": wait_ms, "include": _include(include)}


def _timeout_of(timeout: TimeoutTypes, http_client: Optional[httpx.Client | httpx.AsyncClient]) -> httpx.Timeout:
    if http_client is not None:
        return http_client.timeout
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def _long_poll_timeout(base: httpx.Timeout, wait_ms: Optional[int]) -> Any:
    """The client's timeout with the read timeout lengthened by the server-side wait."""
    if not wait_ms or base.read is None:
        return httpx.USE_CLIENT_DEFAULT
    return httpx.Timeout(
        connect=base.connect, read=base.read + wait_ms / 1000.0, write=base.write, pool=base.pool
    )


def _stream_timeout(base: httpx.Timeout) -> httpx.Timeout:
    """The client's timeout with a read timeout long enough to span heartbeats."""
    if base.read is None or base.read >= STREAM_READ_TIMEOUT:
        return base
    return httpx.Timeout(
        connect=base.connect, read=STREAM_READ_TIMEOUT, write=base.write, pool=base.pool
    )


# --------------------------------------------------------------------- Server-Sent Events


@dataclass
class _SSEEvent:
    id: Optional[str]
    event: str
    data: str


class _SSEParser:
    """The event-stream interpretation of the HTML standard, fed one line at a time."""

    def __init__(self) -> None:
        self._data: List[str] = []
        self._event = ""
        self._last_id: Optional[str] = None

    def feed(self, line: str) -> Optional[_SSEEvent]:
        """Takes one line (without its line ending); returns an event when one is complete."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = _SSEEvent(self._last_id, self._event or "message", "\n".join(self._data))
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):  # a comment: the server's heartbeat
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        return None  # `retry` and unknown fields are ignored


def _change_event(event: _SSEEvent, status: int) -> ChangeEvent:
    try:
        parsed = _json.loads(event.data)
    except ValueError as e:
        raise MnemoError(status, f"malformed change event: {event.data[:200]!r}") from e
    if not isinstance(parsed, dict):
        raise MnemoError(status, f"malformed change event: {event.data[:200]!r}")
    return parsed  # type: ignore[return-value]


def _stream_params(
    after: Optional[str], limit: Optional[int], include: Union[str, Sequence[str], None]
) -> Dict[str, Any]:
    return {"after": after, "limit": limit, "include": _include(include)}


_STREAM_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}


class ChangeStream:
    """The change feed as Server-Sent Events, one :class:`~mnemo_client.types.ChangeEvent`
    per change, following new changes until closed.

    The connection opens on ``with`` (or on :meth:`open`, or on the first ``next``), so a
    bad or expired cursor raises there and, with ``after="now"``, every change committed
    after ``open`` returned is delivered. Iteration ends if the server ends the stream;
    :attr:`last_id` is then the cursor to resume from (``changes.stream(after=last_id)``).
    """

    def __init__(self, transport: Transport, params: Dict[str, Any], timeout: httpx.Timeout) -> None:
        self._transport = transport
        self._params = params
        self._timeout = timeout
        self._response: Optional[httpx.Response] = None
        self._lines: Optional[Iterator[str]] = None
        self._parser = _SSEParser()
        self._closed = False
        self.last_id: Optional[str] = None
        """The cursor of the last event delivered (``None`` before the first)."""

    def open(self) -> "ChangeStream":
        """Connects (once); raises :class:`~mnemo_client.MnemoError` on an error answer."""
        if self._closed:
            raise RuntimeError("the change stream is closed")
        if self._response is None:
            self._response = self._transport.stream(
                "GET",
                "/v1/changes/stream",
                params=self._params,
                headers=_STREAM_HEADERS,
                timeout=self._timeout,
            )
            self._lines = self._response.iter_lines()
        return self

    def close(self) -> None:
        """Closes the connection; iteration ends."""
        self._closed = True
        if self._response is not None:
            self._response.close()
            self._response = None
            self._lines = None

    def __enter__(self) -> "ChangeStream":
        return self.open()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __iter__(self) -> "ChangeStream":
        return self

    def __next__(self) -> ChangeEvent:
        if self._closed:
            raise StopIteration
        self.open()
        assert self._lines is not None and self._response is not None
        status = self._response.status_code
        for line in self._lines:
            event = self._parser.feed(line)
            if event is not None:
                change = _change_event(event, status)
                self.last_id = event.id or change.get("id")
                return change
        self.close()
        raise StopIteration


class AsyncChangeStream:
    """The asynchronous form of :class:`ChangeStream`: ``async with`` and ``async for``."""

    def __init__(
        self, transport: AsyncTransport, params: Dict[str, Any], timeout: httpx.Timeout
    ) -> None:
        self._transport = transport
        self._params = params
        self._timeout = timeout
        self._response: Optional[httpx.Response] = None
        self._lines: Optional[AsyncIterator[str]] = None
        self._parser = _SSEParser()
        self._closed = False
        self.last_id: Optional[str] = None
        """The cursor of the last event delivered (``None`` before the first)."""

    async def open(self) -> "AsyncChangeStream":
        """Connects (once); raises :class:`~mnemo_client.MnemoError` on an error answer."""
        if self._closed:
            raise RuntimeError("the change stream is closed")
        if self._response is None:
            self._response = await self._transport.stream(
                "GET",
                "/v1/changes/stream",
                params=self._params,
                headers=_STREAM_HEADERS,
                timeout=self._timeout,
            )
            self._lines = self._response.aiter_lines()
        return self

    async def aclose(self) -> None:
        """Closes the connection; iteration ends."""
        self._closed = True
        if self._response is not None:
            response, self._response, self._lines = self._response, None, None
            await response.aclose()

    async def __aenter__(self) -> "AsyncChangeStream":
        return await self.open()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> "AsyncChangeStream":
        return self

    async def __anext__(self) -> ChangeEvent:
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        assert self._lines is not None and self._response is not None
        status = self._response.status_code
        async for line in self._lines:
            event = self._parser.feed(line)
            if event is not None:
                change = _change_event(event, status)
                self.last_id = event.id or change.get("id")
                return change
        await self.aclose()
        raise StopAsyncIteration


# ------------------------------------------------------------------------ sync sub-APIs


class ConversationItems:
    """``/v1/conversations/{id}/items``: append, page through, read and delete items."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def add(self, conversation_id: str, items: Sequence[ItemParam]) -> ItemList:
        """Appends 1–20 items atomically, in order; returns them as stored."""
        return self._t.request(
            "POST", _conv_path(conversation_id, "items"), json={"items": list(items)}
        ).json()

    def list(
        self,
        conversation_id: str,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        order: Optional[Order] = None,
    ) -> ItemList:
        """One page of items (``limit`` 1–100, default 20; ``order`` default ``desc``)."""
        return self._t.request(
            "GET",
            _conv_path(conversation_id, "items"),
            params={"after": after, "limit": limit, "order": order},
        ).json()

    def iter(
        self,
        conversation_id: str,
        *,
        after: Optional[str] = None,
        order: Optional[Order] = None,
        page_size: int = 100,
    ) -> Iterator[Item]:
        """Every item after ``after``, page by page (``order`` default ``desc``: newest first)."""
        while True:
            page = self.list(conversation_id, after=after, limit=page_size, order=order)
            yield from page["data"]
            if not page["has_more"] or not page["last_id"]:
                return
            after = page["last_id"]

    def get(self, conversation_id: str, item_id: str) -> Item:
        """One item; :class:`~mnemo_client.NotFoundError` if it does not exist."""
        return self._t.request("GET", _conv_path(conversation_id, "items", item_id)).json()

    def delete(self, conversation_id: str, item_id: str) -> Conversation:
        """Deletes one item; returns the conversation (as OpenAI does)."""
        return self._t.request("DELETE", _conv_path(conversation_id, "items", item_id)).json()


class Conversations:
    """``/v1/conversations`` (the OpenAI Conversations API); items under :attr:`items`."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.items = ConversationItems(transport)

    def create(
        self,
        *,
        metadata: Optional[Mapping[str, str]] = None,
        items: Optional[Sequence[ItemParam]] = None,
    ) -> Conversation:
        """Creates a conversation, owned by the acting user if there is one."""
        return self._t.request(
            "POST", "/v1/conversations", json=_conversation_body(metadata, items)
        ).json()

    def retrieve(self, conversation_id: str) -> Conversation:
        """One conversation; :class:`~mnemo_client.NotFoundError` if unknown or deleted."""
        return self._t.request("GET", _conv_path(conversation_id)).json()

    def update(self, conversation_id: str, *, metadata: Mapping[str, str]) -> Conversation:
        """Replaces the conversation's metadata."""
        return self._t.request(
            "POST", _conv_path(conversation_id), json={"metadata": dict(metadata)}
        ).json()

    def delete(self, conversation_id: str) -> ConversationDeleted:
        """Deletes the conversation and all its items."""
        return self._t.request("DELETE", _conv_path(conversation_id)).json()


class Memory:
    """``/v1/kv``: key-value memory with ETags, conditional writes, TTLs and atomic batches.

    Keys are any UTF-8 text of 1–1024 bytes (``/``, spaces, ``%``, ``?``, ``#`` included);
    the client percent-encodes them.
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def put(
        self,
        key: str,
        value: Value,
        *,
        content_type: Optional[str] = None,
        if_match: Union[str, Sequence[str], None] = None,
        if_none_match: Optional[str] = None,
        ttl_seconds: Optional[int] = None,
    ) -> str:
        """Stores ``value`` and returns its ETag.

        ``bytes`` are stored as they are (default content type ``application/octet-stream``),
        ``str`` as UTF-8 (``text/plain; charset=utf-8``), anything else as JSON
        (``application/json``). ``if_match`` (one ETag or several, or ``"*"``) and
        ``if_none_match="*"`` make the write conditional (412
        :class:`~mnemo_client.PreconditionFailedError`).
        """
        body, headers, params = _put_request(value, content_type, if_match, if_none_match, ttl_seconds)
        return self._t.request(
            "PUT", _kv_path(key), content=body, headers=headers, params=params
        ).json()["etag"]

    def get(self, key: str) -> MemoryValue:
        """The value's bytes, ETag and content type; :class:`~mnemo_client.NotFoundError` if
        absent or expired. ``.json()`` and ``.text`` decode it."""
        return _memory_value(key, self._t.request("GET", _kv_path(key)))

    def delete(self, key: str, *, if_match: Union[str, Sequence[str], None] = None) -> MemoryDeleted:
        """Deletes the key (404 if absent; 412 if ``if_match`` does not hold)."""
        headers = {"If-Match": _if_match(if_match)} if if_match is not None else None
        return self._t.request("DELETE", _kv_path(key), headers=headers).json()

    def list(
        self,
        *,
        prefix: Optional[str] = None,
        after: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> MemoryList:
        """One page of keys in byte order, after ``after`` (``limit`` 1–1000, default 100)."""
        return self._t.request(
            "GET", "/v1/kv", params={"prefix": prefix, "after": after, "limit": limit}
        ).json()

    def iter(
        self,
        *,
        prefix: Optional[str] = None,
        after: Optional[str] = None,
        page_size: int = 1000,
    ) -> Iterator[MemoryEntry]:
        """Every key under ``prefix`` after ``after``, page by page."""
        while True:
            page = self.list(prefix=prefix, after=after, limit=page_size)
            yield from page["data"]
            if not page["has_more"] or not page["next_after"]:
                return
            after = page["next_after"]

    def batch(self, operations: Iterable[BatchOperation]) -> List[BatchResult]:
        """Applies 1–100 puts and deletes atomically: all or none.

        If a condition fails nothing is written and
        :class:`~mnemo_client.PreconditionFailedError` is raised with ``param``
        ``"operations[i]"`` naming the first failing operation.
        """
        return self._t.request("POST", "/v1/kv/batch", json=_batch_body(operations)).json()["data"]


class Changes:
    """``/v1/changes``: every acknowledged mutation in commit order, as pages or a stream."""

    def __init__(self, transport: Transport, timeout: httpx.Timeout) -> None:
        self._t = transport
        self._timeout = timeout

    def list(
        self,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        wait_ms: Optional[int] = None,
        include: Union[str, Sequence[str], None] = None,
    ) -> ChangesPage:
        """One page of events after the cursor ``after`` (omitted: the oldest retained;
        ``"now"``: only later changes). With ``wait_ms`` the call waits up to that long for a
        change (the read timeout is lengthened to match). ``include="body"`` adds each object."""
        return self._t.request(
            "GET",
            "/v1/changes",
            params=_changes_params(after, limit, wait_ms, include),
            timeout=_long_poll_timeout(self._timeout, wait_ms),
        ).json()

    def stream(
        self,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        include: Union[str, Sequence[str], None] = None,
    ) -> ChangeStream:
        """Follows the feed from ``after`` as Server-Sent Events (see :class:`ChangeStream`)."""
        return ChangeStream(self._t, _stream_params(after, limit, include), _stream_timeout(self._timeout))


# ----------------------------------------------------------------------- async sub-APIs


class AsyncConversationItems:
    """The asynchronous form of :class:`ConversationItems`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def add(self, conversation_id: str, items: Sequence[ItemParam]) -> ItemList:
        """Appends 1–20 items atomically, in order; returns them as stored."""
        response = await self._t.request(
            "POST", _conv_path(conversation_id, "items"), json={"items": list(items)}
        )
        return response.json()

    async def list(
        self,
        conversation_id: str,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        order: Optional[Order] = None,
    ) -> ItemList:
        """One page of items (``limit`` 1–100, default 20; ``order`` default ``desc``)."""
        response = await self._t.request(
            "GET",
            _conv_path(conversation_id, "items"),
            params={"after": after, "limit": limit, "order": order},
        )
        return response.json()

    async def iter(
        self,
        conversation_id: str,
        *,
        after: Optional[str] = None,
        order: Optional[Order] = None,
        page_size: int = 100,
    ) -> AsyncIterator[Item]:
        """Every item after ``after``, page by page (``order`` default ``desc``: newest first)."""
        while True:
            page = await self.list(conversation_id, after=after, limit=page_size, order=order)
            for item in page["data"]:
                yield item
            if not page["has_more"] or not page["last_id"]:
                return
            after = page["last_id"]

    async def get(self, conversation_id: str, item_id: str) -> Item:
        """One item; :class:`~mnemo_client.NotFoundError` if it does not exist."""
        return (await self._t.request("GET", _conv_path(conversation_id, "items", item_id))).json()

    async def delete(self, conversation_id: str, item_id: str) -> Conversation:
        """Deletes one item; returns the conversation (as OpenAI does)."""
        response = await self._t.request("DELETE", _conv_path(conversation_id, "items", item_id))
        return response.json()


class AsyncConversations:
    """The asynchronous form of :class:`Conversations`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport
        self.items = AsyncConversationItems(transport)

    async def create(
        self,
        *,
        metadata: Optional[Mapping[str, str]] = None,
        items: Optional[Sequence[ItemParam]] = None,
    ) -> Conversation:
        """Creates a conversation, owned by the acting user if there is one."""
        response = await self._t.request(
            "POST", "/v1/conversations", json=_conversation_body(metadata, items)
        )
        return response.json()

    async def retrieve(self, conversation_id: str) -> Conversation:
        """One conversation; :class:`~mnemo_client.NotFoundError` if unknown or deleted."""
        return (await self._t.request("GET", _conv_path(conversation_id))).json()

    async def update(self, conversation_id: str, *, metadata: Mapping[str, str]) -> Conversation:
        """Replaces the conversation's metadata."""
        response = await self._t.request(
            "POST", _conv_path(conversation_id), json={"metadata": dict(metadata)}
        )
        return response.json()

    async def delete(self, conversation_id: str) -> ConversationDeleted:
        """Deletes the conversation and all its items."""
        return (await self._t.request("DELETE", _conv_path(conversation_id))).json()


class AsyncMemory:
    """The asynchronous form of :class:`Memory`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def put(
        self,
        key: str,
        value: Value,
        *,
        content_type: Optional[str] = None,
        if_match: Union[str, Sequence[str], None] = None,
        if_none_match: Optional[str] = None,
        ttl_seconds: Optional[int] = None,
    ) -> str:
        """Stores ``value`` and returns its ETag (see :meth:`Memory.put`)."""
        body, headers, params = _put_request(value, content_type, if_match, if_none_match, ttl_seconds)
        response = await self._t.request(
            "PUT", _kv_path(key), content=body, headers=headers, params=params
        )
        return response.json()["etag"]

    async def get(self, key: str) -> MemoryValue:
        """The value's bytes, ETag and content type (see :meth:`Memory.get`)."""
        return _memory_value(key, await self._t.request("GET", _kv_path(key)))

    async def delete(
        self, key: str, *, if_match: Union[str, Sequence[str], None] = None
    ) -> MemoryDeleted:
        """Deletes the key (404 if absent; 412 if ``if_match`` does not hold)."""
        headers = {"If-Match": _if_match(if_match)} if if_match is not None else None
        return (await self._t.request("DELETE", _kv_path(key), headers=headers)).json()

    async def list(
        self,
        *,
        prefix: Optional[str] = None,
        after: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> MemoryList:
        """One page of keys in byte order, after ``after`` (``limit`` 1–1000, default 100)."""
        response = await self._t.request(
            "GET", "/v1/kv", params={"prefix": prefix, "after": after, "limit": limit}
        )
        return response.json()

    async def iter(
        self,
        *,
        prefix: Optional[str] = None,
        after: Optional[str] = None,
        page_size: int = 1000,
    ) -> AsyncIterator[MemoryEntry]:
        """Every key under ``prefix`` after ``after``, page by page."""
        while True:
            page = await self.list(prefix=prefix, after=after, limit=page_size)
            for entry in page["data"]:
                yield entry
            if not page["has_more"] or not page["next_after"]:
                return
            after = page["next_after"]

    async def batch(self, operations: Iterable[BatchOperation]) -> List[BatchResult]:
        """Applies 1–100 puts and deletes atomically (see :meth:`Memory.batch`)."""
        response = await self._t.request("POST", "/v1/kv/batch", json=_batch_body(operations))
        return response.json()["data"]


class AsyncChanges:
    """The asynchronous form of :class:`Changes`."""

    def __init__(self, transport: AsyncTransport, timeout: httpx.Timeout) -> None:
        self._t = transport
        self._timeout = timeout

    async def list(
        self,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        wait_ms: Optional[int] = None,
        include: Union[str, Sequence[str], None] = None,
    ) -> ChangesPage:
        """One page of events after ``after`` (see :meth:`Changes.list`)."""
        response = await self._t.request(
            "GET",
            "/v1/changes",
            params=_changes_params(after, limit, wait_ms, include),
            timeout=_long_poll_timeout(self._timeout, wait_ms),
        )
        return response.json()

    def stream(
        self,
        *,
        after: Optional[str] = None,
        limit: Optional[int] = None,
        include: Union[str, Sequence[str], None] = None,
    ) -> AsyncChangeStream:
        """Follows the feed from ``after``: ``async with client.changes.stream(...) as s``."""
        return AsyncChangeStream(
            self._t, _stream_params(after, limit, include), _stream_timeout(self._timeout)
        )


# ------------------------------------------------------------------------------ clients


class MnemoClient:
    """A synchronous client for one mnemo server.

    ``base_url`` is the server root (``http://127.0.0.1:8080``; a trailing ``/v1`` is
    accepted). ``api_key`` (a JWT or API key) is sent as a bearer token, ``user`` as
    ``X-Mnemo-User`` (the user an application acts for). ``timeout`` applies to the client's
    own connection pool; with ``http_client`` that client's settings apply and it is not
    closed by :meth:`close`. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self._own = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)
        self._transport = Transport(
            base_url=base_url, api_key=api_key, user=user, http_client=self._http
        )
        self.base_url: str = self._transport.base_url
        """The server root."""
        self.user: Optional[str] = user
        """The user this client acts for (``None``: the caller's own scope)."""
        self._api_key = api_key
        timeout_ = _timeout_of(timeout, http_client)
        self.conversations = Conversations(self._transport)
        """``/v1/conversations`` and its items."""
        self.memory = Memory(self._transport)
        """``/v1/kv``."""
        self.changes = Changes(self._transport, timeout_)
        """``/v1/changes`` and its stream."""

    def with_user(self, user: Optional[str]) -> "MnemoClient":
        """A client acting for ``user`` (``None``: for no user), with the same credentials and
        the same connection pool. Closing it leaves this client open; close this one last."""
        return MnemoClient(
            base_url=self.base_url, api_key=self._api_key, user=user, http_client=self._http
        )

    def search(
        self,
        query: Optional[str] = None,
        *,
        vector: Optional[Sequence[float]] = None,
        mode: Optional[Literal["vector", "text", "hybrid"]] = None,
        source: Optional[Literal["items", "memory"]] = None,
        scope: Optional[SearchScope] = None,
        conversation_id: Optional[str] = None,
        prefix: Optional[str] = None,
        filter: Optional[SearchFilter] = None,
        top_k: Optional[int] = None,
        consistency: Optional[Literal["eventual", "strong"]] = None,
    ) -> List[SearchResult]:
        """Searches items (or, with ``source="memory"``, memory values), best first.

        ``conversation_id`` and ``prefix`` are shorthands for the keys of ``scope``.
        """
        body = _search_body(
            query, vector, mode, source, scope, conversation_id, prefix, filter, top_k, consistency
        )
        return self._transport.request("POST", "/v1/search", json=body).json()["data"]

    def sql(self, query: str, params: Optional[Sequence[Any]] = None) -> SqlResult:
        """Runs a read-only SQL query; ``params`` are bound to ``$1``, ``$2``, …"""
        return self._transport.request("POST", "/v1/sql", json=_sql_body(query, params)).json()

    def sql_arrow(self, query: str, params: Optional[Sequence[Any]] = None) -> "pyarrow.Table":
        """Runs a read-only SQL query and returns every row (not capped) as a
        ``pyarrow.Table``. Needs pyarrow."""
        response = self._transport.request(
            "POST", "/v1/sql", json=_sql_body(query, params), headers={"Accept": ARROW_STREAM}
        )
        return _arrow_table(response)

    def close(self) -> None:
        """Closes the connection pool, unless it was given as ``http_client``."""
        if self._own:
            self._http.close()

    def __enter__(self) -> "MnemoClient":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MnemoClient(base_url={self.base_url!r}, user={self.user!r})"


class AsyncMnemoClient:
    """An asynchronous client for one mnemo server; the same API as :class:`MnemoClient`
    with coroutines, ``async for`` iterators and ``async with``."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._own = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        self._transport = AsyncTransport(
            base_url=base_url, api_key=api_key, user=user, http_client=self._http
        )
        self.base_url: str = self._transport.base_url
        """The server root."""
        self.user: Optional[str] = user
        """The user this client acts for (``None``: the caller's own scope)."""
        self._api_key = api_key
        timeout_ = _timeout_of(timeout, http_client)
        self.conversations = AsyncConversations(self._transport)
        """``/v1/conversations`` and its items."""
        self.memory = AsyncMemory(self._transport)
        """``/v1/kv``."""
        self.changes = AsyncChanges(self._transport, timeout_)
        """``/v1/changes`` and its stream."""

    def with_user(self, user: Optional[str]) -> "AsyncMnemoClient":
        """A client acting for ``user`` (``None``: for no user), with the same credentials and
        the same connection pool. Closing it leaves this client open; close this one last."""
        return AsyncMnemoClient(
            base_url=self.base_url, api_key=self._api_key, user=user, http_client=self._http
        )

    async def search(
        self,
        query: Optional[str] = None,
        *,
        vector: Optional[Sequence[float]] = None,
        mode: Optional[Literal["vector", "text", "hybrid"]] = None,
        source: Optional[Literal["items", "memory"]] = None,
        scope: Optional[SearchScope] = None,
        conversation_id: Optional[str] = None,
        prefix: Optional[str] = None,
        filter: Optional[SearchFilter] = None,
        top_k: Optional[int] = None,
        consistency: Optional[Literal["eventual", "strong"]] = None,
    ) -> List[SearchResult]:
        """Searches items or memory values, best first (see :meth:`MnemoClient.search`)."""
        body = _search_body(
            query, vector, mode, source, scope, conversation_id, prefix, filter, top_k, consistency
        )
        return (await self._transport.request("POST", "/v1/search", json=body)).json()["data"]

    async def sql(self, query: str, params: Optional[Sequence[Any]] = None) -> SqlResult:
        """Runs a read-only SQL query; ``params`` are bound to ``$1``, ``$2``, …"""
        response = await self._transport.request("POST", "/v1/sql", json=_sql_body(query, params))
        return response.json()

    async def sql_arrow(
        self, query: str, params: Optional[Sequence[Any]] = None
    ) -> "pyarrow.Table":
        """Runs a read-only SQL query and returns every row as a ``pyarrow.Table``."""
        response = await self._transport.request(
            "POST", "/v1/sql", json=_sql_body(query, params), headers={"Accept": ARROW_STREAM}
        )
        return _arrow_table(response)

    async def aclose(self) -> None:
        """Closes the connection pool, unless it was given as ``http_client``."""
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncMnemoClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncMnemoClient(base_url={self.base_url!r}, user={self.user!r})"

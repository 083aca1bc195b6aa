"""A LangGraph :class:`~langgraph.store.base.BaseStore` kept in mnemo's key-value memory.

Every item is one memory key; a namespace is a key prefix::

    ("docs", "guides"), "intro"            ->  docs/guides/intro
    ("users", "alice", "prefs"), "theme"   ->  users/alice/prefs/theme

so a namespace starting with ``("users", "<u>")`` lives in mnemo's per-user space
``users/<u>/`` and gets its isolation: a store acting for another user reads nothing there
and is refused writing. Labels and item keys are percent-escaped (``%`` -> ``%25``, ``/`` ->
``%2F``, control characters likewise), so the mapping is injective and the key prefix of a
namespace prefix selects exactly the items under it.

The stored value (content type :data:`CONTENT_TYPE`) is a JSON envelope::

    {"langgraph_item": 1, "created_at": <µs>, "updated_at": <µs>, "ttl_minutes": 5.0,
     "text": "<the indexed text>", "value": {"embedding": {...the item's value...}}}

mnemo's search indexes every string of a JSON-object memory value except those under a key
named ``embedding``: the item's value sits there, so only ``text`` (the fields chosen by
``index``) is searchable, by words (BM25) and, on a server started with
``--embedding-model``, by meaning. Timestamps are numbers for the same reason.

Reads go through ``POST /v1/sql`` (many keys or a whole prefix in one request), natural
language queries through ``POST /v1/search``, writes through the atomic ``POST /v1/kv/batch``
(at most 100 operations per request).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Optional, TypeVar, Union

import httpx
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    validate_op_namespace,
)

from ._http import DEFAULT_TIMEOUT, AsyncTransport, LoopTransport, MnemoError, Transport

__all__ = [
    "CONTENT_TYPE",
    "MnemoStore",
    "encode_label",
    "memory_key",
    "namespace_key_prefix",
    "parse_memory_key",
]

CONTENT_TYPE = "application/vnd.mnemo.langgraph-item+json"
"""The content type of every value the store writes; reads skip keys with another one."""

FORMAT_VERSION = 1
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 65_536
MAX_BATCH_OPERATIONS = 100
MAX_TOP_K = 1000
MAX_TTL_SECONDS = 315_360_000  # ten years, the server's limit

# Keys per SQL statement when reading keys one by one (a UNION ALL of point selects).
_KEYS_PER_STATEMENT = 50
# Rows per SQL page: key-only listings, and rows with their values.
_KEY_PAGE = 5000
_VALUE_PAGE = 500
# Attempts at a put batch whose conditions keep failing because other writers are busy.
_PUT_ATTEMPTS = 8

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ESCAPED = re.compile(r"[%/\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
_OPERATION = re.compile(r"^operations\[(\d+)\]")

T = TypeVar("T")


# --------------------------------------------------------------------------- key mapping


def encode_label(text: str) -> str:
    """One namespace label or item key as it appears in a memory key (percent-escaped)."""
    return _ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", text)


def _decode_segment(segment: str) -> Optional[str]:
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)
    # Only the canonical escaping of a text is accepted: the mapping stays injective.
    return text if encode_label(text) == segment else None


def namespace_key_prefix(namespace: Sequence[str]) -> str:
    """The key prefix shared by every item under ``namespace`` (``""`` for ``()``)."""
    return "".join(encode_label(label) + "/" for label in namespace)


def memory_key(namespace: Sequence[str], key: str) -> str:
    """The memory key of the item ``key`` in ``namespace``.

    Search results without a query come in the byte order of these keys.
    """
    return namespace_key_prefix(namespace) + encode_label(key)


def parse_memory_key(key: str) -> Optional[tuple[tuple[str, ...], str]]:
    """``(namespace, item key)`` of a memory key written by the store, else ``None``."""
    parts = key.split("/")
    if len(parts) < 2:
        return None
    decoded = [_decode_segment(p) for p in parts]
    labels, item_key = decoded[:-1], decoded[-1]
    if item_key is None:
        return None
    namespace: list[str] = []
    for label in labels:
        if not label or "." in label:
            return None
        namespace.append(label)
    return tuple(namespace), item_key


def _checked_key(namespace: tuple[str, ...], key: str) -> str:
    mkey = memory_key(namespace, key)
    size = len(mkey.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise ValueError(
            f"namespace {namespace!r} and key {key[:40]!r}… make a memory key of {size} bytes; "
            f"mnemo keys are at most {MAX_KEY_BYTES} bytes of UTF-8 (after escaping)"
        )
    return mkey


def _check_put_namespace(namespace: tuple[str, ...]) -> None:
    if not namespace:
        raise InvalidNamespaceError("Namespace cannot be empty.")
    if namespace[0] == "langgraph":
        raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {namespace}')
    if len(namespace) >= 2 and namespace[0] == "users" and encode_label(namespace[1]) != namespace[1]:
        raise InvalidNamespaceError(
            f"the user label {namespace[1]!r} of {namespace!r} would be escaped in the memory key, so "
            "the item would not be in that user's space users/<user>/: user ids in namespaces "
            "must not contain '/', '%' or control characters"
        )


# --------------------------------------------------------------------------- envelope


def _micros(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _ttl_seconds(ttl_minutes: float) -> int:
    # round() first: 0.05 minutes is 3 s, not ceil(3.0000000000000004) = 4 s.
    seconds = math.ceil(round(ttl_minutes * 60, 6))
    return max(1, seconds)


def _check_ttl(ttl: Optional[float]) -> None:
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of minutes or None, got {ttl!r}")
    if _ttl_seconds(ttl) > MAX_TTL_SECONDS:
        raise ValueError(f"ttl of {ttl} minutes is over mnemo's limit of ten years")


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings(v, out)


def _index_text(value: Mapping[str, Any], fields: Union[Literal[False], Sequence[str]]) -> str:
    if fields is False:
        return ""
    texts: list[str] = []
    for path in fields:
        if path == "$":
            _strings(value, texts)
        else:
            texts.extend(get_text_at_path(value, path))
    return "\n".join(t for t in texts if t)


@dataclass
class _Row:
    """One stored item as read back: its memory key, decoded envelope and (when read by SQL)
    the exact stored text and ETag."""

    key: str
    namespace: tuple[str, ...]
    item_key: str
    value: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    ttl: Optional[float]
    text: Optional[str] = None
    etag: Optional[str] = None

    def item(self) -> Item:
        return Item(
            value=self.value,
            key=self.item_key,
            namespace=self.namespace,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def search_item(self, score: Optional[float] = None) -> SearchItem:
        return SearchItem(
            namespace=self.namespace,
            key=self.item_key,
            value=self.value,
            created_at=self.created_at,
            updated_at=self.updated_at,
            score=score,
        )


def _decode_row(
    key: str, envelope: Any, text: Optional[str] = None, etag: Optional[str] = None
) -> Optional[_Row]:
    """The item stored under ``key``; ``None`` for a key or value the store did not write."""
    parsed = parse_memory_key(key)
    if parsed is None or not isinstance(envelope, dict):
        return None
    if envelope.get("langgraph_item") != FORMAT_VERSION:
        return None
    holder = envelope.get("value")
    created, updated = envelope.get("created_at"), envelope.get("updated_at")
    ttl = envelope.get("ttl_minutes")
    if (
        not isinstance(holder, dict)
        or not isinstance(holder.get("embedding"), dict)
        or not isinstance(created, int)
        or not isinstance(updated, int)
        or not (ttl is None or isinstance(ttl, (int, float)))
    ):
        return None
    return _Row(
        key=key,
        namespace=parsed[0],
        item_key=parsed[1],
        value=holder["embedding"],
        created_at=_from_micros(created),
        updated_at=_from_micros(updated),
        ttl=ttl,
        text=text,
        etag=etag,
    )


def _decode_text(key: str, text: Optional[str], etag: Optional[str]) -> Optional[_Row]:
    if text is None:
        return None
    try:
        envelope = json.loads(text)
    except ValueError:
        return None
    return _decode_row(key, envelope, text, etag)


# --------------------------------------------------------------------------- filters, match conditions


def _matches(value: Mapping[str, Any], flt: Optional[Mapping[str, Any]]) -> bool:
    if not flt:
        return True
    return all(_compare(value.get(k), v) for k, v in flt.items())


def _compare(item_value: Any, filter_value: Any) -> bool:
    """The filter semantics of LangGraph's InMemoryStore (JSONB-like, nested objects)."""
    if isinstance(filter_value, dict):
        if any(k.startswith("$") for k in filter_value):
            return all(_operator(item_value, op, arg) for op, arg in filter_value.items())
        if not isinstance(item_value, dict):
            return False
        return all(_compare(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, (list, tuple)):
        return (
            isinstance(item_value, (list, tuple))
            and len(item_value) == len(filter_value)
            and all(_compare(i, f) for i, f in zip(item_value, filter_value))
        )
    return bool(item_value == filter_value)


def _operator(value: Any, operator: str, arg: Any) -> bool:
    if operator == "$eq":
        return bool(value == arg)
    if operator == "$ne":
        return bool(value != arg)
    if operator not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"Unsupported operator: {operator}")
    try:
        a, b = float(value), float(arg)
    except (TypeError, ValueError):
        return False  # a missing or non-numeric field never satisfies a comparison
    if operator == "$gt":
        return a > b
    if operator == "$gte":
        return a >= b
    if operator == "$lt":
        return a < b
    return a <= b


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path))
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(p == "*" or n == p for n, p in pairs)


def _literal_prefix(conditions: Sequence[MatchCondition]) -> tuple[str, ...]:
    """The longest run of leading labels without wildcards among the prefix conditions."""
    best: tuple[str, ...] = ()
    for c in conditions:
        if c.match_type != "prefix":
            continue
        labels: list[str] = []
        for label in c.path:
            if label == "*":
                break
            labels.append(label)
        if len(labels) > len(best):
            best = tuple(labels)
    return best


# --------------------------------------------------------------------------- requests (sans-IO)


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    ok: tuple[int, ...] = (200,)


# A plan step yields a list of calls (made concurrently by the async driver) and receives
# their responses in the same order.
_Plan = Generator[list[_Call], list[httpx.Response], T]


def _sql(query: str, params: list[Any]) -> _Call:
    return _Call("POST", "/v1/sql", {"query": query, "params": params})


def _batch_call(operations: list[dict[str, Any]]) -> _Call:
    """An atomic ``/v1/kv/batch``; 412 (a condition failed, nothing written) is an answer."""
    return _Call("POST", "/v1/kv/batch", {"operations": operations}, ok=(200, 412))


def _chunks(operations: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    step = MAX_BATCH_OPERATIONS
    return [operations[i : i + step] for i in range(0, len(operations), step)]


def _sql_rows(response: httpx.Response) -> tuple[list[list[Any]], bool]:
    body = response.json()
    return body.get("rows") or [], bool(body.get("truncated"))


class MnemoStore(BaseStore):
    """A LangGraph store whose items live in mnemo's key-value memory.

    Namespaces map onto memory key prefixes (see :func:`memory_key`); a namespace starting with
    ``("users", "<user>")`` is in mnemo's per-user space and isolated by mnemo. Values are JSON
    objects (at most 64 KiB once wrapped). ``ttl`` (minutes) becomes mnemo's ``ttl_seconds``;
    reads with ``refresh_ttl`` re-apply it. ``search(query=...)`` uses mnemo's search: by words
    (BM25) and, on a server started with ``--embedding-model``, by meaning; only the fields
    chosen by ``index`` (or ``index_fields``) are searchable.

    Search results without a query come in memory-key order (see :func:`memory_key`), with a
    query best first (at most the best 1000 hits are considered); ``list_namespaces`` is
    sorted. Within one batch, reads see the store as it was before the batch's writes.

    Args:
        base_url: The server root, e.g. ``http://127.0.0.1:8080``.
        api_key: A JWT or API key, sent as a bearer token.
        user: The user the store acts for (``X-Mnemo-User``).
        timeout: Seconds per HTTP request.
        http_client: An ``httpx.Client`` to use for the sync methods.
        async_http_client: An ``httpx.AsyncClient`` to use for the async methods.
        index_fields: What ``put`` indexes when its ``index`` is ``None``: field paths
            (``"$"``: every string of the value; ``"a.b"``, ``"list[*].text"`` as in
            LangGraph), or ``False`` for nothing.
        search_mode: mnemo's search mode for queries: ``"hybrid"`` (the default: words and,
            with the server's embedding model, meaning), ``"text"`` or ``"vector"``.
        search_consistency: ``"eventual"`` (default) or ``"strong"`` (a query also waits
            until every acknowledged value has its vector; see mnemo's search API).
        ttl: LangGraph's TTL configuration (``default_ttl`` and ``refresh_on_read`` are used;
            mnemo expires keys itself, so ``sweep_interval_minutes`` has no effect).
    """

    supports_ttl: bool = True

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
        async_http_client: Optional[httpx.AsyncClient] = None,
        index_fields: Union[Literal[False], Sequence[str]] = ("$",),
        search_mode: Literal["hybrid", "text", "vector"] = "hybrid",
        search_consistency: Literal["eventual", "strong"] = "eventual",
        ttl: Optional[TTLConfig] = None,
    ) -> None:
        if search_mode not in ("hybrid", "text", "vector"):
            raise ValueError(f"search_mode must be hybrid, text or vector, got {search_mode!r}")
        if search_consistency not in ("eventual", "strong"):
            raise ValueError(
                f"search_consistency must be eventual or strong, got {search_consistency!r}"
            )
        if isinstance(index_fields, str):
            raise TypeError("index_fields is a sequence of field paths, e.g. ['text'], not a string")
        self.base_url = base_url
        self.api_key = api_key
        self.user = user
        self.timeout = timeout
        self.index_fields: Union[Literal[False], tuple[str, ...]] = (
            False if index_fields is False else tuple(index_fields)
        )
        self.search_mode = search_mode
        self.search_consistency = search_consistency
        self.ttl_config = ttl
        if ttl is not None:
            _check_ttl(ttl.get("default_ttl"))
        self._sync = Transport(
            base_url=base_url, api_key=api_key, user=user, timeout=timeout, http_client=http_client
        )
        self._async = LoopTransport(
            base_url=base_url,
            api_key=api_key,
            user=user,
            timeout=timeout,
            http_client=async_http_client,
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Closes the sync HTTP client (if the store created it)."""
        self._sync.close()

    async def aclose(self) -> None:
        """Closes the async HTTP client (if the store created it) and the sync one."""
        await self._async.aclose()
        self._sync.close()

    def __enter__(self) -> "MnemoStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "MnemoStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _async_transport(self) -> AsyncTransport:
        return self._async.get()

    # ------------------------------------------------------------------ BaseStore

    def memory_key(self, namespace: tuple[str, ...], key: str) -> str:
        """The memory key holding ``key`` in ``namespace`` (see :func:`memory_key`)."""
        return memory_key(namespace, key)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Executes a batch of operations synchronously.

        Reads see the store as it was before the batch's writes; of several puts to one
        item, the last wins (as in LangGraph's ``InMemoryStore``).
        """
        plan = self._plan(list(ops))
        try:
            calls = next(plan)
            while True:
                responses = [
                    self._sync.request(c.method, c.path, json=c.json, ok=c.ok) for c in calls
                ]
                calls = plan.send(responses)
        except StopIteration as done:
            return done.value
        finally:
            plan.close()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Executes a batch of operations asynchronously (independent requests concurrently)."""
        plan = self._plan(list(ops))
        transport = self._async_transport()
        try:
            calls = next(plan)
            while True:
                responses = list(
                    await asyncio.gather(
                        *(transport.request(c.method, c.path, json=c.json, ok=c.ok) for c in calls)
                    )
                )
                calls = plan.send(responses)
        except StopIteration as done:
            return done.value
        finally:
            plan.close()

    # ------------------------------------------------------------------ the plan

    def _plan(self, ops: list[Op]) -> _Plan[list[Result]]:
        results: list[Result] = [None] * len(ops)
        gets: dict[str, list[int]] = {}
        searches: list[int] = []
        listings: list[int] = []
        puts: dict[str, PutOp] = {}
        for i, op in enumerate(ops):
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                if op.namespace:
                    gets.setdefault(_checked_key(op.namespace, op.key), []).append(i)
            elif isinstance(op, SearchOp):
                if op.limit < 0 or op.offset < 0:
                    raise ValueError("search limit and offset must not be negative")
                searches.append(i)
            elif isinstance(op, ListNamespacesOp):
                if op.limit < 0 or op.offset < 0:
                    raise ValueError("list_namespaces limit and offset must not be negative")
                if op.max_depth is not None and op.max_depth < 1:
                    raise ValueError("max_depth must be at least 1")
                listings.append(i)
            elif isinstance(op, PutOp):
                _check_put_namespace(op.namespace)
                if op.value is not None:
                    _check_ttl(op.ttl)
                    if not isinstance(op.value, Mapping):
                        raise TypeError(f"a store value is a mapping, got {type(op.value).__name__}")
                mkey = _checked_key(op.namespace, op.key)
                puts.pop(mkey, None)  # the last put of a key wins
                puts[mkey] = op
            else:
                raise ValueError(f"Unknown operation type: {type(op)}")

        refresh: dict[str, _Row] = {}
        if gets:
            rows = yield from self._read_items(list(gets))
            for mkey, indices in gets.items():
                row = rows.get(mkey)
                for i in indices:
                    op = ops[i]
                    assert isinstance(op, GetOp)
                    results[i] = row.item() if row is not None else None
                    if row is not None and row.ttl is not None and op.refresh_ttl:
                        refresh[mkey] = row
        for i in searches:
            op = ops[i]
            assert isinstance(op, SearchOp)
            found = yield from self._search(op)
            results[i] = [row.search_item(score) for row, score in found]
            if op.refresh_ttl:
                refresh.update((row.key, row) for row, _ in found if row.ttl is not None)
        for i in listings:
            op = ops[i]
            assert isinstance(op, ListNamespacesOp)
            results[i] = yield from self._list_namespaces(op)
        stale = [row for key, row in refresh.items() if key not in puts]
        if stale:
            yield from self._refresh(stale)
        if puts:
            yield from self._write(puts)
        return results

    # ------------------------------------------------------------------ reads

    def _point_reads(self, keys: list[str], select: str, fixed: list[Any]) -> _Plan[list[list[Any]]]:
        """The rows of ``select … WHERE … key = $n`` for every key, ``_KEYS_PER_STATEMENT``
        keys to a statement (a UNION ALL of point selects; ``fixed`` are the first params).

        (``key IN (…)`` is not narrowed by mnemo's SQL planner — it would scan every visible
        key — while each ``key = $n`` reads only that key's range.)
        """
        calls = []
        for start in range(0, len(keys), _KEYS_PER_STATEMENT):
            chunk = keys[start : start + _KEYS_PER_STATEMENT]
            query = " UNION ALL ".join(f"{select}${len(fixed) + n + 1}" for n in range(len(chunk)))
            calls.append(_sql(query, [*fixed, *chunk]))
        responses = yield calls
        return [row for response in responses for row in _sql_rows(response)[0]]

    def _read_items(self, keys: list[str]) -> _Plan[dict[str, _Row]]:
        """The store's items under ``keys`` (absent, expired and foreign keys left out)."""
        rows = yield from self._point_reads(
            keys,
            "SELECT key, value_json, etag FROM memory WHERE content_type = $1 AND key = ",
            [CONTENT_TYPE],
        )
        found: dict[str, _Row] = {}
        for key, text, etag in rows:
            row = _decode_text(key, text, etag)
            if row is not None:
                found[key] = row
        return found

    def _read_versions(self, keys: list[str]) -> _Plan[dict[str, tuple[str, Optional[int]]]]:
        """For writers: each existing key's ETag and, for the store's items, ``created_at``."""
        rows = yield from self._point_reads(
            keys,
            "SELECT key, etag, content_type, json_get_int(value_json, 'created_at') "
            "FROM memory WHERE key = ",
            [],
        )
        return {
            key: (etag, created if content_type == CONTENT_TYPE and isinstance(created, int) else None)
            for key, etag, content_type, created in rows
        }

    def _scan(
        self, prefix: str, *, after: str, limit: int, offset: int = 0, values: bool = True
    ) -> _Plan[tuple[list[list[Any]], bool]]:
        """One page of the store's keys under ``prefix`` after ``after``, in key order.

        Returns the rows (``key[, value_json, etag]``) and whether more may follow.
        """
        columns = "key, value_json, etag" if values else "key"
        query = (
            f"SELECT {columns} FROM memory WHERE starts_with(key, $1) AND content_type = $2 "
            "AND key > $3 ORDER BY key LIMIT $4 OFFSET $5"
        )
        (response,) = yield [_sql(query, [prefix, CONTENT_TYPE, after, limit, offset])]
        rows, truncated = _sql_rows(response)
        # `truncated`: the server's row cap (--sql-max-rows) cut the page short.
        return rows, truncated or len(rows) == limit

    def _search(self, op: SearchOp) -> _Plan[list[tuple[_Row, Optional[float]]]]:
        if op.limit == 0:
            return []
        if op.query:
            return (yield from self._query(op))
        prefix = namespace_key_prefix(op.namespace_prefix)
        wanted = op.offset + op.limit
        matched: list[_Row] = []
        after, skip = "", 0
        if not op.filter:
            # No filter: the server skips `offset` rows itself.
            skip = op.offset
            wanted = op.limit
        while len(matched) < wanted:
            page = min(_VALUE_PAGE, wanted - len(matched)) if not op.filter else _VALUE_PAGE
            rows, more = yield from self._scan(prefix, after=after, limit=page, offset=skip)
            skip = 0
            for key, text, etag in rows:
                row = _decode_text(key, text, etag)
                if row is not None and _matches(row.value, op.filter):
                    matched.append(row)
            if not rows or not more:
                break
            after = rows[-1][0]
        if op.filter:
            matched = matched[op.offset :]
        return [(row, None) for row in matched[: op.limit]]

    def _query(self, op: SearchOp) -> _Plan[list[tuple[_Row, Optional[float]]]]:
        assert op.query
        wanted = op.offset + op.limit
        top_k = min(MAX_TOP_K, wanted if not op.filter else max(4 * wanted, 100))
        prefix = namespace_key_prefix(op.namespace_prefix)
        while True:
            body: dict[str, Any] = {
                "query": op.query,
                "source": "memory",
                "top_k": top_k,
                "mode": self.search_mode,
                "consistency": self.search_consistency,
            }
            if prefix:
                body["scope"] = {"prefix": prefix}
            (response,) = yield [_Call("POST", "/v1/search", body)]
            hits = response.json().get("data") or []
            found: list[tuple[_Row, Optional[float]]] = []
            for hit in hits:
                row = _decode_row(str(hit.get("key", "")), hit.get("value"))
                if row is None or row.namespace[: len(op.namespace_prefix)] != op.namespace_prefix:
                    continue
                if _matches(row.value, op.filter):
                    score = hit.get("score")
                    found.append((row, float(score) if isinstance(score, (int, float)) else None))
            if len(found) >= wanted or len(hits) < top_k or top_k >= MAX_TOP_K:
                return found[op.offset : wanted]
            top_k = MAX_TOP_K

    def _list_namespaces(self, op: ListNamespacesOp) -> _Plan[list[tuple[str, ...]]]:
        conditions = tuple(op.match_conditions or ())
        prefix = namespace_key_prefix(_literal_prefix(conditions))
        namespaces: set[tuple[str, ...]] = set()
        after = ""
        while True:
            rows, more = yield from self._scan(prefix, after=after, limit=_KEY_PAGE, values=False)
            for (key,) in rows:
                parsed = parse_memory_key(key)
                if parsed is None:
                    continue
                namespace = parsed[0]
                if all(_does_match(c, namespace) for c in conditions):
                    if op.max_depth is not None:
                        namespace = namespace[: op.max_depth]
                    namespaces.add(namespace)
            if not rows or not more:
                break
            after = rows[-1][0]
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    # ------------------------------------------------------------------ writes

    def _refresh(self, rows: list[_Row]) -> _Plan[None]:
        """Re-applies the TTL of items just read: rewrites each value as it is, on the
        condition that it is still the value read (one changed meanwhile was given its own
        TTL by its writer and is left alone).

        mnemo has no call that extends a key's TTL without rewriting its value.
        """
        unread = [row.key for row in rows if row.etag is None or row.text is None]
        if unread:
            current = yield from self._read_items(unread)
            rows = [row for row in rows if row.etag is not None and row.text is not None]
            rows += [r for r in current.values() if r.ttl is not None]
        operations = [
            {
                "op": "put",
                "key": row.key,
                "value": row.text,
                "content_type": CONTENT_TYPE,
                "if_match": row.etag,
                "ttl_seconds": _ttl_seconds(row.ttl),
            }
            for row in rows
            if row.ttl is not None
        ]
        chunks = _chunks(operations)
        while chunks:
            responses = yield [_batch_call(chunk) for chunk in chunks]
            retry = []
            for chunk, response in zip(chunks, responses):
                if response.status_code == 200:
                    continue
                # The named operation's item changed since it was read: drop it, keep the rest.
                m = _OPERATION.match(str((response.json().get("error") or {}).get("param") or ""))
                if m is None or int(m.group(1)) >= len(chunk):
                    continue
                rest = chunk[: int(m.group(1))] + chunk[int(m.group(1)) + 1 :]
                if rest:
                    retry.append(rest)
            chunks = retry

    def _write(self, puts: dict[str, PutOp]) -> _Plan[None]:
        """Applies puts and deletes, ``MAX_BATCH_OPERATIONS`` to an atomic batch.

        A put keeps the item's ``created_at``: the current ETags and creation times are read
        first (one SQL request), and each put is conditional on the ETag read (or on the key
        being absent), so a concurrent writer makes the batch fail with 412 and it is
        retried with fresh reads.
        """
        now = _micros(datetime.now(timezone.utc))
        pending = dict(puts)
        for _ in range(_PUT_ATTEMPTS):
            upserts = [k for k, op in pending.items() if op.value is not None]
            existing: dict[str, tuple[str, Optional[int]]] = {}
            if upserts:
                existing = yield from self._read_versions(upserts)
            operations = []
            for mkey, op in pending.items():
                if op.value is None:
                    operations.append({"op": "delete", "key": mkey})
                    continue
                etag, created = existing.get(mkey) or (None, None)
                operation: dict[str, Any] = {
                    "op": "put",
                    "key": mkey,
                    "value": self._envelope(op, created if created is not None else now, now),
                    "content_type": CONTENT_TYPE,
                }
                if etag is not None:
                    operation["if_match"] = etag
                else:
                    operation["if_none_match"] = "*"
                if op.ttl is not None:
                    operation["ttl_seconds"] = _ttl_seconds(op.ttl)
                operations.append(operation)
            chunks = _chunks(operations)
            responses = yield [_batch_call(chunk) for chunk in chunks]
            for chunk, response in zip(chunks, responses):
                if response.status_code == 200:
                    for operation in chunk:
                        pending.pop(operation["key"], None)
            if not pending:
                return
        raise MnemoError(
            412,
            f"{len(pending)} item(s) kept changing while being written (e.g. {next(iter(pending))!r}); "
            f"gave up after {_PUT_ATTEMPTS} attempts",
            "precondition_failed",
            "precondition_failed",
        )

    def _envelope(self, op: PutOp, created: int, updated: int) -> str:
        assert op.value is not None
        value = dict(op.value)
        index = self.index_fields if op.index is None else op.index
        envelope: dict[str, Any] = {
            "langgraph_item": FORMAT_VERSION,
            "created_at": created,
            "updated_at": updated,
        }
        if op.ttl is not None:
            envelope["ttl_minutes"] = op.ttl
        text = _index_text(value, index)
        if text:
            envelope["text"] = text
        envelope["value"] = {"embedding": value}
        try:
            encoded = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"the value of {op.namespace!r}/{op.key!r} is not JSON-serializable: {e}"
            ) from e
        size = len(encoded.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            raise ValueError(
                f"the value of {op.namespace!r}/{op.key!r} takes {size} bytes stored (with its "
                f"indexed text and timestamps); mnemo values are at most {MAX_VALUE_BYTES} bytes"
            )
        return encoded

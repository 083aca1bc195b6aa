"""A LangGraph checkpointer that keeps checkpoints in mnemo's key-value memory.

``MnemoSaver`` implements LangGraph's ``BaseCheckpointSaver`` (sync and async): ``put``,
``put_writes``, ``get_tuple``, ``list``, ``delete_thread``, ``copy_thread``,
``delete_for_runs`` and ``prune``::

    from mnemo_client.langgraph_checkpoint import MnemoSaver

    graph = builder.compile(checkpointer=MnemoSaver(base_url="http://127.0.0.1:8080"))
    graph.invoke(inputs, {"configurable": {"thread_id": "t-1"}})

Key layout (``<root>`` is ``users/<user>/<prefix>`` with ``user=``, else ``<prefix>``;
the prefix defaults to ``langgraph/checkpoints``)::

    <root>/t/<thread>/<ns>/c/<rid>                      checkpoint head (JSON)
    <root>/t/<thread>/<ns>/d/<rid>/checkpoint/<i>       chunk i of a large checkpoint
    <root>/t/<thread>/<ns>/d/<rid>/metadata/<i>         chunk i of large metadata
    <root>/t/<thread>/<ns>/d/<rid>/w/<task>/<idx>       one pending write (JSON)
    <root>/t/<thread>/<ns>/d/<rid>/w/<task>/<idx>/<i>   chunk i of a large pending write
    <root>/r/<run_id>/<thread>/<ns>/<rid>               run index (metadata ``run_id``)

``<thread>``, ``<ns>``, ``<task>`` and ``<run_id>`` are percent-encoded (``/`` never
appears inside a segment; ``~`` stands for the empty string). ``<rid>`` is the checkpoint
id with its order reversed: each UTF-8 byte ``b`` of the id written as the two hex digits
of ``255 - b``, then ``~``. Keys list in ascending byte order, so the heads of one thread
and namespace list newest first: the latest checkpoint is the first key under
``…/c/``, and ``list(before=…)`` continues the listing after the ``before`` head.

A head holds the checkpoint id, its parent id, the run id and the checkpoint and metadata,
each serialized with the saver's ``serde`` (``dumps_typed``) and stored base64 inline, or,
when the head would pass mnemo's 65,536-byte value limit, split into raw 65,536-byte
chunk keys recorded in the head with their count, size and SHA-256.

Atomicity: a head, its chunks and its run-index entry are one ``/v1/kv/batch``, so they
land together or not at all; the head is the commit point (a chunk or write without a
head is never read, deletes remove heads first). The head is written with
``if_none_match: "*"``; if that id is already stored the saver reads the stored head and
replaces it with ``if_match`` on its ETag, deleting the older value's surplus chunks in the
same batch, so a checkpoint id written twice (a retry, two runs) ends as exactly one of
the values, never a mix. A pending write with ``idx >= 0`` is created with
``if_none_match: "*"`` and skipped when present (idempotent, like ``InMemorySaver``);
special writes (errors, interrupts, ``idx < 0``) replace the stored one the same way as
heads. Reads go through ``/v1/sql``, one consistent point per query: a checkpoint's head
and its chunks and writes come from one query.

Channel values are stored with each checkpoint (``new_versions`` is not needed): a
checkpoint is one self-contained record, at the cost of storing unchanged channels again.

Limits: one checkpoint (serialized checkpoint plus metadata, with base64 inflation) must
fit one batch (100 operations, 1 MiB JSON body): about 780 KB serialized; larger ones
raise :class:`CheckpointTooLargeError` and nothing is stored. The same bound holds for one
pending write; a ``put_writes`` call larger than one batch is written in several batches
whose writes carry a group marker, and readers show a group only once all of it is stored.
Keys are at most 1,024 bytes, so thread ids, namespaces and task ids must stay well below
that (``ValueError`` otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, TypeVar, Union
from urllib.parse import quote, unquote

import httpx
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from ._http import (
    DEFAULT_TIMEOUT,
    AsyncTransport,
    LoopTransport,
    MnemoError,
    PreconditionFailedError,
    Transport,
)

__all__ = [
    "DEFAULT_PREFIX",
    "CheckpointCorruptError",
    "CheckpointTooLargeError",
    "MnemoSaver",
]

DEFAULT_PREFIX = "langgraph/checkpoints/"
"""Where checkpoints live in the tenant's shared space (and under ``users/<user>/``)."""

MAX_VALUE_BYTES = 65_536
MAX_KEY_BYTES = 1_024
MAX_BATCH_OPS = 100
MAX_BATCH_BODY = 1_048_576
# Room kept free in a batch for the deletes of an older value's chunks when replacing it.
_BATCH_RESERVE = 4_096
_BODY_OVERHEAD = len('{"operations":[]}')
_FORMAT = 1
_LOAD_GROUP = 20  # checkpoints read per SQL query
_EXACT_GROUP = 50  # exact keys read per SQL query when a prefix has too many rows
_KEY_PAGE = 1_000
_JSON = "application/json"
_BINARY = "application/octet-stream"
_OP_INDEX = re.compile(r"^operations\[(\d+)\]")

T = TypeVar("T")


class CheckpointTooLargeError(ValueError):
    """A checkpoint or pending write is larger than one atomic mnemo batch can hold."""


class CheckpointCorruptError(RuntimeError):
    """A stored checkpoint or write does not decode (missing chunk, checksum mismatch)."""


# --------------------------------------------------------------------------- key layout


def _seg(value: str) -> str:
    """One key segment: percent-encoded, never containing ``/``; ``~`` is the empty string."""
    if value == "":
        return "~"
    return quote(value, safe=":|").replace("~", "%7E")


def _unseg(segment: str) -> str:
    return "" if segment == "~" else unquote(segment)


def _rid(checkpoint_id: str) -> str:
    """The checkpoint id as an order-reversed key segment (newer ids sort first)."""
    return "".join(f"{255 - b:02x}" for b in checkpoint_id.encode("utf-8")) + "~"


def _unrid(rid: str) -> Optional[str]:
    if not rid.endswith("~") or len(rid) % 2 != 1:
        return None
    try:
        raw = bytes(255 - int(rid[i : i + 2], 16) for i in range(0, len(rid) - 1, 2))
        return raw.decode("utf-8")
    except ValueError:
        return None


@dataclass(frozen=True)
class _Key:
    """A parsed key under ``<root>/t/``: thread and namespace segments, kind (``c``/``d``), rid."""

    thread_seg: str
    ns_seg: str
    kind: str
    rid: str
    rest: tuple[str, ...]

    @property
    def thread_id(self) -> str:
        return _unseg(self.thread_seg)

    @property
    def checkpoint_ns(self) -> str:
        return _unseg(self.ns_seg)


class _Layout:
    """Key names under one root (``users/<user>/<prefix>`` or ``<prefix>``)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def threads(self) -> str:
        return f"{self.root}t/"

    def thread(self, thread_id: str) -> str:
        return f"{self.root}t/{_seg(thread_id)}/"

    def ns(self, thread_id: str, ns: str) -> str:
        return f"{self.thread(thread_id)}{_seg(ns)}/"

    def heads(self, thread_id: str, ns: str) -> str:
        return f"{self.ns(thread_id, ns)}c/"

    def head(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        return f"{self.heads(thread_id, ns)}{_rid(checkpoint_id)}"

    def data(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        return f"{self.ns(thread_id, ns)}d/{_rid(checkpoint_id)}/"

    def write(self, thread_id: str, ns: str, checkpoint_id: str, task_id: str, idx: int) -> str:
        return f"{self.data(thread_id, ns, checkpoint_id)}w/{_seg(task_id)}/{idx}"

    def run(self, run_id: str) -> str:
        return f"{self.root}r/{_seg(run_id)}/"

    def run_entry(self, run_id: str, thread_seg: str, ns_seg: str, rid: str) -> str:
        return f"{self.run(run_id)}{thread_seg}/{ns_seg}/{rid}"

    def head_of(self, thread_seg: str, ns_seg: str, rid: str) -> str:
        return f"{self.root}t/{thread_seg}/{ns_seg}/c/{rid}"

    def data_of(self, thread_seg: str, ns_seg: str, rid: str) -> str:
        return f"{self.root}t/{thread_seg}/{ns_seg}/d/{rid}/"

    def parse(self, key: str) -> Optional[_Key]:
        """The parts of a key under ``<root>/t/``, or None for anything else."""
        if not key.startswith(self.root):
            return None
        parts = key[len(self.root) :].split("/")
        if len(parts) < 5 or parts[0] != "t" or parts[3] not in ("c", "d"):
            return None
        if parts[3] == "c" and len(parts) != 5:
            return None
        if _unrid(parts[4]) is None:
            return None
        return _Key(parts[1], parts[2], parts[3], parts[4], tuple(parts[5:]))


def _check_key(key: str, what: str) -> str:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(
            f"{what}: the mnemo key {key[:80]!r}… is longer than {MAX_KEY_BYTES} bytes; "
            "use shorter thread ids, namespaces or task ids"
        )
    return key


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Sql:
    query: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class _SqlResult:
    rows: list[list[Any]]
    truncated: bool


@dataclass(frozen=True)
class _ListKeys:
    prefix: str
    after: Optional[str]
    limit: int


@dataclass(frozen=True)
class _KeyPage:
    keys: list[str]
    next_after: Optional[str]


@dataclass(frozen=True)
class _Batch:
    ops: list[dict[str, Any]]

    def body(self) -> bytes:
        return _batch_body(self.ops)


@dataclass(frozen=True)
class _Emit:
    item: CheckpointTuple


_Request = Union[_Sql, _ListKeys, _Batch]
_Op = Generator[Union[_Request, _Emit], Any, T]


@dataclass(frozen=True)
class _Row:
    key: str
    value: bytes
    etag: str
    content_type: str


def _batch_body(ops: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps({"operations": list(ops)}, separators=(",", ":")).encode("ascii")


def _op_cost(op: Mapping[str, Any]) -> int:
    return len(json.dumps(op, separators=(",", ":"))) + 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- records


def _chunk_keys(head: Mapping[str, Any], homes: Mapping[str, str]) -> list[str]:
    """The chunk keys a stored head's blobs refer to."""
    keys: list[str] = []
    for name, home in homes.items():
        blob = head.get(name)
        if isinstance(blob, dict) and isinstance(blob.get("chunks"), int):
            keys.extend(f"{home}{i}" for i in range(blob["chunks"]))
    return keys


@dataclass(eq=False)
class _Record:
    """One JSON head plus its chunks, written in one batch with a condition on the head.

    ``replace``: an existing value is replaced (compare-and-set on its ETag); otherwise an
    existing value wins and this record is dropped.
    """

    key: str
    value: str
    chunks: list[dict[str, Any]]
    replace: bool
    homes: dict[str, str]
    extra: list[dict[str, Any]] = field(default_factory=list)
    stale: Optional[Callable[[Mapping[str, Any]], list[dict[str, Any]]]] = None
    etag: Optional[str] = None
    cleanup: list[dict[str, Any]] = field(default_factory=list)

    def ops(self) -> list[dict[str, Any]]:
        head: dict[str, Any] = {
            "op": "put",
            "key": self.key,
            "value": self.value,
            "content_type": _JSON,
        }
        if self.etag is None:
            head["if_none_match"] = "*"
        else:
            head["if_match"] = self.etag
        return [head, *self.chunks, *self.extra, *self.cleanup]

    def cost(self) -> tuple[int, int]:
        ops = self.ops()
        return len(ops), sum(_op_cost(o) for o in ops)

    def rebase(self, current: Optional[_Row]) -> None:
        """Targets the stored value ``current`` (None: absent) for the next attempt."""
        self.cleanup = []
        if current is None:
            self.etag = None
            return
        self.etag = current.etag
        try:
            old = json.loads(current.value)
        except ValueError:
            old = {}
        if not isinstance(old, dict):
            old = {}
        taken = {self.key, *(o["key"] for o in self.chunks), *(o["key"] for o in self.extra)}
        for key in _chunk_keys(old, self.homes):
            if key not in taken:
                self.cleanup.append({"op": "delete", "key": key})
                taken.add(key)
        if self.stale is not None:
            for op in self.stale(old):
                if op["key"] not in taken:
                    self.cleanup.append(op)
                    taken.add(op["key"])


def _build_record(
    key: str,
    fields: dict[str, Any],
    blobs: Mapping[str, tuple[tuple[str, bytes], str]],
    *,
    replace: bool,
    what: str,
) -> _Record:
    """A record whose blobs are inline when the head fits one value, else chunked."""
    head = dict(fields)
    for name, ((type_, data), _home) in blobs.items():
        head[name] = {"type": type_, "data": _b64(data)}
    chunked: list[dict[str, Any]] = []
    # Move the largest blobs out of the head until it fits one value.
    order = sorted(blobs, key=lambda n: len(blobs[n][0][1]), reverse=True)
    text = json.dumps(head, separators=(",", ":"))
    for name in order:
        if len(text) <= MAX_VALUE_BYTES:
            break
        (type_, data), home = blobs[name]
        pieces = [data[i : i + MAX_VALUE_BYTES] for i in range(0, len(data), MAX_VALUE_BYTES)]
        head[name] = {
            "type": type_,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "chunks": len(pieces),
        }
        for i, piece in enumerate(pieces):
            chunked.append(
                {
                    "op": "put",
                    "key": _check_key(f"{home}{i}", what),
                    "value_base64": _b64(piece),
                    "content_type": _BINARY,
                }
            )
        text = json.dumps(head, separators=(",", ":"))
    if len(text) > MAX_VALUE_BYTES:
        raise CheckpointTooLargeError(
            f"{what}: the head record is {len(text)} bytes even with its data chunked "
            f"(limit {MAX_VALUE_BYTES})"
        )
    return _Record(
        key=_check_key(key, what),
        value=text,
        chunks=chunked,
        replace=replace,
        homes={name: home for name, (_typed, home) in blobs.items()},
    )


def _pack(records: Sequence[_Record], what: str) -> list[list[_Record]]:
    """Records grouped into batches (each record whole in one batch), in order."""
    budget = MAX_BATCH_BODY - _BATCH_RESERVE
    groups: list[list[_Record]] = []
    current: list[_Record] = []
    n_ops, size = 0, _BODY_OVERHEAD
    for record in records:
        n, s = record.cost()
        if n > MAX_BATCH_OPS or _BODY_OVERHEAD + s > budget:
            raise CheckpointTooLargeError(
                f"{what} needs {n} operations and a {_BODY_OVERHEAD + s}-byte request; one "
                f"atomic mnemo batch holds at most {MAX_BATCH_OPS} operations and "
                f"{MAX_BATCH_BODY} bytes (about 780 KB of serialized data, base64-encoded); "
                "nothing was stored"
            )
        if current and (n_ops + n > MAX_BATCH_OPS or size + s > budget):
            groups.append(current)
            current, n_ops, size = [], 0, _BODY_OVERHEAD
        current.append(record)
        n_ops += n
        size += s
    if current:
        groups.append(current)
    return groups


def _pack_ops(groups: Sequence[Sequence[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Operation groups (each kept in one batch) packed into batches, in order."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = _BODY_OVERHEAD
    for group in groups:
        cost = sum(_op_cost(o) for o in group)
        if current and (len(current) + len(group) > MAX_BATCH_OPS or size + cost > MAX_BATCH_BODY):
            batches.append(current)
            current, size = [], _BODY_OVERHEAD
        current.extend(group)
        size += cost
    if current:
        batches.append(current)
    return batches


def _blob_value(
    blob: Any, rows: Mapping[str, bytes], home: str, what: str
) -> tuple[str, bytes]:
    if not isinstance(blob, dict) or not isinstance(blob.get("type"), str):
        raise CheckpointCorruptError(f"{what}: malformed record")
    if "data" in blob:
        return blob["type"], base64.b64decode(blob["data"])
    parts: list[bytes] = []
    for i in range(int(blob.get("chunks", 0))):
        piece = rows.get(f"{home}{i}")
        if piece is None:
            raise CheckpointCorruptError(f"{what}: chunk {home}{i} is missing")
        parts.append(piece)
    data = b"".join(parts)
    if len(data) != blob.get("size") or hashlib.sha256(data).hexdigest() != blob.get("sha256"):
        raise CheckpointCorruptError(f"{what}: chunks under {home} do not match their checksum")
    return blob["type"], data


def _thread_ns(config: RunnableConfig) -> tuple[str, str]:
    conf = config["configurable"]
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def _matches(metadata: Mapping[str, Any], filter: Optional[Mapping[str, Any]]) -> bool:
    return not filter or all(metadata.get(k) == v for k, v in filter.items())


def _groups(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


# --------------------------------------------------------------------------- the saver


class MnemoSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer storing checkpoints in mnemo's key-value memory.

    Args:
        base_url: The mnemo server root (``http://127.0.0.1:8080``; a trailing ``/v1`` is
            accepted).
        api_key: A JWT or API key, sent as a bearer token.
        user: The user the application acts for (sent as ``X-Mnemo-User``). Checkpoints
            then live under ``users/<user>/<prefix>``, where mnemo lets only that user
            read or write them. Without it they live in the tenant's shared space under
            ``prefix`` (a user token must pass its own id here: users cannot write the
            shared space).
        prefix: The key prefix of the checkpoints (default ``langgraph/checkpoints/``).
        timeout: Seconds per HTTP request.
        http_client: An ``httpx.Client`` to send sync requests with (not closed by us).
        async_http_client: An ``httpx.AsyncClient`` for async requests (not closed by
            us). Without it the saver opens one per event loop it is used from.
        serde: The serializer (default: LangGraph's ``JsonPlusSerializer``).

    Every method has an async form (``aput``, ``aget_tuple``, …). Close the saver with
    ``close()`` / ``aclose()`` or use it as a (async) context manager.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
        async_http_client: Optional[httpx.AsyncClient] = None,
        serde: Optional[SerializerProtocol] = None,
    ) -> None:
        super().__init__(serde=serde)
        prefix = prefix.strip("/")
        if not prefix:
            raise ValueError("prefix must not be empty")
        if user is not None:
            if not user or "/" in user or len(user.encode("utf-8")) > 256:
                raise ValueError("user must be 1-256 bytes without '/'")
            root = f"users/{user}/{prefix}/"
        else:
            root = f"{prefix}/"
        self.key_prefix = root
        """The root of every key this saver writes."""
        self._layout = _Layout(root)
        self._base_url = base_url
        self._api_key = api_key
        self._user = user
        self._timeout = timeout
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
        """Closes the sync HTTP client (if the saver opened it)."""
        self._sync.close()

    async def aclose(self) -> None:
        """Closes the HTTP clients the saver opened."""
        await self._async.aclose()
        self._sync.close()

    def __enter__(self) -> "MnemoSaver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "MnemoSaver":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _atransport(self) -> AsyncTransport:
        return self._async.get()

    # ------------------------------------------------------------------ drivers

    def _execute(self, req: _Request) -> Any:
        t = self._sync
        if isinstance(req, _Sql):
            r = t.request("POST", "/v1/sql", json={"query": req.query, "params": list(req.params)})
            return _sql_result(r.json())
        if isinstance(req, _ListKeys):
            r = t.request(
                "GET", "/v1/kv", params={"prefix": req.prefix, "after": req.after, "limit": req.limit}
            )
            return _key_page(r.json())
        t.request("POST", "/v1/kv/batch", content=req.body(), headers={"Content-Type": _JSON})
        return None

    async def _aexecute(self, req: _Request) -> Any:
        t = self._atransport()
        if isinstance(req, _Sql):
            r = await t.request(
                "POST", "/v1/sql", json={"query": req.query, "params": list(req.params)}
            )
            return _sql_result(r.json())
        if isinstance(req, _ListKeys):
            r = await t.request(
                "GET", "/v1/kv", params={"prefix": req.prefix, "after": req.after, "limit": req.limit}
            )
            return _key_page(r.json())
        await t.request("POST", "/v1/kv/batch", content=req.body(), headers={"Content-Type": _JSON})
        return None

    def _iterate(self, op: _Op[Any]) -> Iterator[CheckpointTuple]:
        """Runs an operation with sync requests, yielding what it emits."""
        value: Any = None
        error: Optional[MnemoError] = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(value)
                except StopIteration:
                    return
                value, error = None, None
                if isinstance(step, _Emit):
                    yield step.item
                    continue
                try:
                    value = self._execute(step)
                except MnemoError as exc:
                    error = exc
        finally:
            op.close()

    def _run(self, op: _Op[T]) -> T:
        """Runs an operation with sync requests and returns its result."""
        value: Any = None
        error: Optional[MnemoError] = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                assert not isinstance(step, _Emit)
                try:
                    value = self._execute(step)
                except MnemoError as exc:
                    error = exc
        finally:
            op.close()

    async def _aiterate(self, op: _Op[Any]) -> AsyncIterator[CheckpointTuple]:
        """Runs an operation with async requests, yielding what it emits."""
        value: Any = None
        error: Optional[MnemoError] = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(value)
                except StopIteration:
                    return
                value, error = None, None
                if isinstance(step, _Emit):
                    yield step.item
                    continue
                try:
                    value = await self._aexecute(step)
                except MnemoError as exc:
                    error = exc
        finally:
            op.close()

    async def _arun(self, op: _Op[T]) -> T:
        """Runs an operation with async requests and returns its result."""
        value: Any = None
        error: Optional[MnemoError] = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                assert not isinstance(step, _Emit)
                try:
                    value = await self._aexecute(step)
                except MnemoError as exc:
                    error = exc
        finally:
            op.close()

    # ------------------------------------------------------------------ public API (sync)

    def get_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        """The checkpoint named by ``config`` (its ``checkpoint_id``, else the thread's
        latest in ``checkpoint_ns``) with its pending writes, or None."""
        return self._run(self._op_get_tuple(config))

    def list(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and ``checkpoint_ns`` when
        given; every namespace otherwise), or of every thread when ``config`` is None;
        only those whose metadata has every ``filter`` item, older than ``before``'s
        checkpoint, at most ``limit``."""
        return self._iterate(self._op_list(config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores a checkpoint (atomically, with its chunks and index entry) as the child of
        ``config``'s checkpoint, and returns its config."""
        return self._run(self._op_put(config, checkpoint, metadata))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores a task's pending writes on ``config``'s checkpoint. A write already stored
        for the same (task, index) is kept; special writes (errors, interrupts) replace."""
        self._run(self._op_put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Deletes every checkpoint and write of a thread (every namespace)."""
        self._run(self._op_delete_thread(thread_id))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint and write of a thread to another thread (same ids;
        checkpoints of the target with those ids are replaced)."""
        self._run(self._op_copy_thread(source_thread_id, target_thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (and their writes) whose metadata ``run_id`` is listed."""
        self._run(self._op_delete_for_runs(run_ids))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prunes threads: ``"keep_latest"`` keeps each namespace's latest checkpoint (and
        the ancestors its delta channels still need), ``"delete"`` deletes the threads."""
        self._run(self._op_prune(thread_ids, strategy))

    # ------------------------------------------------------------------ public API (async)

    async def aget_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        """Async :meth:`get_tuple`."""
        return await self._arun(self._op_get_tuple(config))

    async def alist(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        async for item in self._aiterate(self._op_list(config, filter, before, limit)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await self._arun(self._op_put(config, checkpoint, metadata))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        await self._arun(self._op_put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await self._arun(self._op_delete_thread(thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        await self._arun(self._op_copy_thread(source_thread_id, target_thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await self._arun(self._op_delete_for_runs(run_ids))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        await self._arun(self._op_prune(thread_ids, strategy))

    # ------------------------------------------------------------------ reading

    def _keys(self, prefix: str) -> _Op[List[str]]:
        """Every key under a prefix, in byte order."""
        keys: List[str] = []
        after: Optional[str] = None
        while True:
            page: _KeyPage = yield _ListKeys(prefix, after, _KEY_PAGE)
            keys.extend(page.keys)
            if page.next_after is None:
                return keys
            after = page.next_after

    def _select(self, exact: Sequence[str], prefixes: Sequence[str]) -> _Op[List[_Row]]:
        """Rows of the given keys and of every key under the prefixes, from one consistent
        SQL query when the answer fits one response, else in parts."""
        branches = [("key = ${}", k) for k in exact] + [("starts_with(key, ${})", p) for p in prefixes]
        if not branches:
            return []
        res: _SqlResult = yield _union(branches)
        if not res.truncated:
            return _rows(res)
        # More rows than one SQL answer holds: list the prefixes' keys, read keys in groups.
        keys = list(exact)
        for p in prefixes:
            keys.extend((yield from self._keys(p)))
        return (yield from self._select_exact(keys))

    def _select_exact(self, keys: Sequence[str]) -> _Op[List[_Row]]:
        rows: List[_Row] = []
        todo = [list(g) for g in _groups(keys, _EXACT_GROUP)]
        while todo:
            group = todo.pop(0)
            res: _SqlResult = yield _union([("key = ${}", k) for k in group])
            if res.truncated and len(group) > 1:
                half = len(group) // 2
                todo[:0] = [group[:half], group[half:]]
                continue
            rows.extend(_rows(res))
        return rows

    def _load(
        self, thread_id: str, ns: str, checkpoint_ids: Sequence[str]
    ) -> _Op[dict[str, CheckpointTuple]]:
        """The stored checkpoints among ``checkpoint_ids`` (head and data of each one read
        in one query)."""
        found: dict[str, CheckpointTuple] = {}
        lay = self._layout
        for group in _groups(list(dict.fromkeys(checkpoint_ids)), _LOAD_GROUP):
            heads = {lay.head(thread_id, ns, c): c for c in group}
            datas = {lay.data(thread_id, ns, c): c for c in group}
            rows = yield from self._select(list(heads), list(datas))
            head_rows: dict[str, bytes] = {}
            other: dict[str, dict[str, bytes]] = {c: {} for c in group}
            for row in rows:
                if row.key in heads:
                    head_rows[heads[row.key]] = row.value
                    continue
                parsed = lay.parse(row.key)
                if parsed is None or parsed.kind != "d":
                    continue
                cid = datas.get(lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid))
                if cid is not None:
                    other[cid][row.key] = row.value
            for cid in group:
                if cid in head_rows:
                    found[cid] = self._decode(thread_id, ns, cid, head_rows[cid], other[cid])
        return found

    def _decode(
        self, thread_id: str, ns: str, checkpoint_id: str, head_value: bytes, rows: Mapping[str, bytes]
    ) -> CheckpointTuple:
        what = f"checkpoint {checkpoint_id} of thread {thread_id!r}"
        try:
            head = json.loads(head_value)
        except ValueError as exc:
            raise CheckpointCorruptError(f"{what}: the head is not JSON") from exc
        if not isinstance(head, dict):
            raise CheckpointCorruptError(f"{what}: malformed head")
        data = self._layout.data(thread_id, ns, checkpoint_id)
        checkpoint = self.serde.loads_typed(
            _blob_value(head.get("checkpoint"), rows, f"{data}checkpoint/", what)
        )
        metadata = self.serde.loads_typed(
            _blob_value(head.get("metadata"), rows, f"{data}metadata/", what)
        )
        parent = head.get("parent_checkpoint_id")
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=self._decode_writes(f"{data}w/", rows, what),
        )

    def _decode_writes(
        self, prefix: str, rows: Mapping[str, bytes], what: str
    ) -> List[PendingWrite]:
        records: List[tuple[str, dict[str, Any]]] = []
        for key, value in rows.items():
            if not key.startswith(prefix) or len(key[len(prefix) :].split("/")) != 2:
                continue
            try:
                record = json.loads(value)
            except ValueError as exc:
                raise CheckpointCorruptError(f"{what}: pending write {key} is not JSON") from exc
            records.append((key, record))
        # A put_writes call spread over several batches shows only once all of it is stored.
        sizes: dict[tuple[str, str], int] = {}
        for _key, r in records:
            if r.get("group"):
                g = (r["task_id"], r["group"])
                sizes[g] = sizes.get(g, 0) + 1
        out: List[tuple[tuple[str, str, int], PendingWrite]] = []
        for key, r in records:
            if r.get("group") and sizes[(r["task_id"], r["group"])] < int(r.get("group_size", 0)):
                continue
            value = self.serde.loads_typed(_blob_value(r.get("value"), rows, f"{key}/", what))
            sort = writes_sort_key(r.get("task_path", ""), r["task_id"], int(r["idx"]))
            out.append((sort, (r["task_id"], r["channel"], value)))
        out.sort(key=lambda x: x[0])
        return [w for _s, w in out]

    def _op_get_tuple(self, config: RunnableConfig) -> _Op[Optional[CheckpointTuple]]:
        thread_id, ns = _thread_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            found = yield from self._load(thread_id, ns, [checkpoint_id])
            return found.get(checkpoint_id)
        # The latest: the first head key. Retry if it is deleted between listing and reading.
        for _attempt in range(5):
            page: _KeyPage = yield _ListKeys(self._layout.heads(thread_id, ns), None, 1)
            if not page.keys:
                return None
            parsed = self._layout.parse(page.keys[0])
            cid = _unrid(parsed.rid) if parsed is not None else None
            if cid is None:
                return None
            found = yield from self._load(thread_id, ns, [cid])
            if cid in found:
                return found[cid]
        return None

    def _op_list(
        self,
        config: Optional[RunnableConfig],
        filter: Optional[Mapping[str, Any]],
        before: Optional[RunnableConfig],
        limit: Optional[int],
    ) -> _Op[None]:
        if limit is not None and limit <= 0:
            return
        remaining = limit
        before_id = get_checkpoint_id(before) if before else None
        lay = self._layout
        conf = config["configurable"] if config else {}
        only_id = get_checkpoint_id(config) if config else None
        # A config without checkpoint_ns (or with None) lists every namespace of the thread.
        one_ns = config is not None and conf.get("checkpoint_ns") is not None

        if config is not None and one_ns and only_id:
            # One checkpoint.
            thread_id, ns = _thread_ns(config)
            if before_id and only_id >= before_id:
                return
            found = yield from self._load(thread_id, ns, [only_id])
            tup = found.get(only_id)
            if tup is not None and _matches(tup.metadata, filter):
                yield _Emit(tup)
            return

        if config is not None and one_ns:
            # One thread and namespace: page through its heads, newest first.
            thread_id, ns = _thread_ns(config)
            after = lay.head(thread_id, ns, before_id) if before_id else None
            while True:
                size = _LOAD_GROUP if remaining is None or filter else min(remaining, _LOAD_GROUP)
                page: _KeyPage = yield _ListKeys(lay.heads(thread_id, ns), after, size)
                ids = [i for i in (_head_id(lay, k) for k in page.keys) if i is not None]
                found = yield from self._load(thread_id, ns, ids)
                for cid in ids:
                    tup = found.get(cid)
                    if tup is None or not _matches(tup.metadata, filter):
                        continue
                    yield _Emit(tup)
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return
                if page.next_after is None:
                    return
                after = page.next_after

        # Several namespaces (or threads): enumerate their heads first.
        if config is None:
            keys = yield from self._keys(lay.threads())
        else:
            keys = yield from self._keys(lay.thread(str(conf["thread_id"])))
        sources: dict[tuple[str, str], List[str]] = {}
        for key in keys:
            parsed = lay.parse(key)
            if parsed is None or parsed.kind != "c":
                continue
            cid = _unrid(parsed.rid)
            if cid is None:
                continue
            if only_id and cid != only_id:
                continue
            if before_id and cid >= before_id:
                continue
            sources.setdefault((parsed.thread_id, parsed.checkpoint_ns), []).append(cid)
        for (thread_id, ns), ids in sources.items():
            for group in _groups(ids, _LOAD_GROUP):
                found = yield from self._load(thread_id, ns, group)
                for cid in group:
                    tup = found.get(cid)
                    if tup is None or not _matches(tup.metadata, filter):
                        continue
                    yield _Emit(tup)
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return

    # ------------------------------------------------------------------ writing

    def _commit(self, records: Sequence[_Record], what: str) -> _Op[None]:
        for group in _pack(records, what):
            yield from self._commit_group(group, what)

    def _commit_group(self, group: Sequence[_Record], what: str) -> _Op[None]:
        """Writes records in one batch; a failed condition drops a create-only record that
        is already stored, or rebases a replacing record on the stored value, and retries."""
        pending = list(group)
        last: Optional[PreconditionFailedError] = None
        for _attempt in range(4 * len(pending) + 8):
            if not pending:
                return
            ops: List[dict[str, Any]] = []
            owners: List[_Record] = []
            for record in pending:
                record_ops = record.ops()
                ops.extend(record_ops)
                owners.extend([record] * len(record_ops))
            try:
                yield _Batch(ops)
                return
            except PreconditionFailedError as exc:
                last = exc
                m = _OP_INDEX.match(exc.param or "")
                if m is None or int(m.group(1)) >= len(owners):
                    raise
                record = owners[int(m.group(1))]
                if not record.replace:
                    pending.remove(record)
                    continue
                rows = yield from self._select_exact([record.key])
                record.rebase(next((r for r in rows if r.key == record.key), None))
        assert last is not None
        raise last

    def _op_put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> _Op[RunnableConfig]:
        thread_id, ns = _thread_ns(config)
        parent = config["configurable"].get("checkpoint_id")
        cid = checkpoint["id"]
        meta = get_checkpoint_metadata(config, metadata)
        run_id = meta.get("run_id")
        run_id = run_id if isinstance(run_id, str) and run_id else None
        lay = self._layout
        what = f"checkpoint {cid} of thread {thread_id!r}"
        data = lay.data(thread_id, ns, cid)
        fields: dict[str, Any] = {
            "format": _FORMAT,
            "checkpoint_id": cid,
            "parent_checkpoint_id": parent or None,
        }
        if run_id is not None:
            fields["run_id"] = run_id
        record = _build_record(
            lay.head(thread_id, ns, cid),
            fields,
            {
                "checkpoint": (self.serde.dumps_typed(checkpoint), f"{data}checkpoint/"),
                "metadata": (self.serde.dumps_typed(meta), f"{data}metadata/"),
            },
            replace=True,
            what=what,
        )
        t_seg, n_seg, rid = _seg(thread_id), _seg(ns), _rid(cid)
        if run_id is not None:
            entry = {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}
            record.extra.append(
                {
                    "op": "put",
                    "key": _check_key(lay.run_entry(run_id, t_seg, n_seg, rid), what),
                    "value": json.dumps(entry, separators=(",", ":")),
                    "content_type": _JSON,
                }
            )

        def stale(old: Mapping[str, Any]) -> List[dict[str, Any]]:
            old_run = old.get("run_id")
            if isinstance(old_run, str) and old_run and old_run != run_id:
                return [{"op": "delete", "key": lay.run_entry(old_run, t_seg, n_seg, rid)}]
            return []

        record.stale = stale
        yield from self._commit([record], what)
        return _config(thread_id, ns, cid)

    def _op_put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> _Op[None]:
        thread_id, ns = _thread_ns(config)
        cid = config["configurable"]["checkpoint_id"]
        entries: dict[int, tuple[str, Any]] = {}
        for idx, (channel, value) in enumerate(writes):
            k = WRITES_IDX_MAP.get(channel, idx)
            if k >= 0 and k in entries:
                continue
            entries[k] = (channel, value)  # a repeated special write: the last one counts
        if not entries:
            return
        what = f"pending writes of task {task_id!r} on checkpoint {cid} of thread {thread_id!r}"
        typed = {k: self.serde.dumps_typed(v) for k, (_c, v) in entries.items()}

        def records(group: Optional[tuple[str, int]]) -> List[_Record]:
            out = []
            for k, (channel, _value) in entries.items():
                key = self._layout.write(thread_id, ns, cid, task_id, k)
                fields: dict[str, Any] = {
                    "task_id": task_id,
                    "channel": channel,
                    "task_path": task_path,
                    "idx": k,
                }
                if group is not None:
                    fields["group"], fields["group_size"] = group
                out.append(
                    _build_record(
                        key, fields, {"value": (typed[k], f"{key}/")}, replace=k < 0, what=what
                    )
                )
            return out

        batch = records(None)
        if len(_pack(batch, what)) > 1:
            # Several batches: mark the writes as one group, shown only once complete. The
            # marker is a function of the call, so a retry completes the same group.
            token = hashlib.sha256(
                json.dumps([task_id, task_path, [[k, c] for k, (c, _v) in entries.items()]]).encode()
            ).hexdigest()[:16]
            batch = records((token, len(entries)))
        yield from self._commit(batch, what)

    # ------------------------------------------------------------------ deleting, copying

    def _run_entries(self, thread_prefix: str) -> _Op[dict[str, str]]:
        """Head key → its run-index key, for the heads under a thread prefix with a run id."""
        lay = self._layout
        res: _SqlResult = yield _Sql(
            "SELECT key, json_get_str(value_json, 'run_id') AS run_id FROM memory "
            "WHERE starts_with(key, $1) AND json_get_str(value_json, 'run_id') IS NOT NULL",
            (thread_prefix,),
        )
        pairs: List[tuple[str, str]] = [(r[0], r[1]) for r in res.rows]
        if res.truncated:
            heads = [k for k in (yield from self._keys(thread_prefix)) if _is_head(lay, k)]
            pairs = []
            for row in (yield from self._select_exact(heads)):
                run = _json_field(row.value, "run_id")
                if run:
                    pairs.append((row.key, run))
        out: dict[str, str] = {}
        for key, run in pairs:
            parsed = lay.parse(key)
            if parsed is not None and parsed.kind == "c" and run:
                out[key] = lay.run_entry(run, parsed.thread_seg, parsed.ns_seg, parsed.rid)
        return out

    def _delete(self, groups: Sequence[Sequence[str]]) -> _Op[None]:
        """Deletes keys; each group in one batch, groups in order."""
        op_groups = [[{"op": "delete", "key": k} for k in g] for g in groups if g]
        for ops in _pack_ops(op_groups):
            yield _Batch(ops)

    def _op_delete_thread(self, thread_id: str) -> _Op[None]:
        lay = self._layout
        prefix = lay.thread(thread_id)
        keys = yield from self._keys(prefix)
        if not keys:
            return
        runs = yield from self._run_entries(prefix)
        heads = [k for k in keys if _is_head(lay, k)]
        # Heads first (with their run entries): a checkpoint disappears whole.
        groups = [[h, runs[h]] if h in runs else [h] for h in heads]
        groups += [[k] for k in keys if not _is_head(lay, k)]
        yield from self._delete(groups)

    def _op_copy_thread(self, source: str, target: str) -> _Op[None]:
        lay = self._layout
        src, dst = lay.thread(source), lay.thread(target)
        dst_seg = _seg(target)
        keys = yield from self._keys(src)
        heads = [k for k in keys if _is_head(lay, k)]
        for group in _groups(heads, _LOAD_GROUP):
            datas = []
            for h in group:
                parsed = lay.parse(h)
                assert parsed is not None
                datas.append(lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid))
            rows = yield from self._select(group, datas)
            by_data: dict[str, List[_Row]] = {d: [] for d in datas}
            head_rows: dict[str, _Row] = {}
            for row in rows:
                if row.key in group:
                    head_rows[row.key] = row
                    continue
                parsed = lay.parse(row.key)
                if parsed is not None:
                    d = lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid)
                    if d in by_data:
                        by_data[d].append(row)
            op_groups: List[List[dict[str, Any]]] = []
            for h, d in zip(group, datas):
                head = head_rows.get(h)
                if head is None:
                    continue  # deleted meanwhile
                # The data first, the head (the commit point) and its run entry last.
                for row in by_data[d]:
                    op_groups.append([_copy_op(row, dst + row.key[len(src) :])])
                last = [_copy_op(head, dst + head.key[len(src) :])]
                run = _json_field(head.value, "run_id")
                parsed = lay.parse(h)
                if run and parsed is not None:
                    entry = {
                        "thread_id": target,
                        "checkpoint_ns": parsed.checkpoint_ns,
                        "checkpoint_id": _unrid(parsed.rid),
                    }
                    last.append(
                        {
                            "op": "put",
                            "key": lay.run_entry(run, dst_seg, parsed.ns_seg, parsed.rid),
                            "value": json.dumps(entry, separators=(",", ":")),
                            "content_type": _JSON,
                        }
                    )
                op_groups.append(last)
            for ops in _pack_ops(op_groups):
                yield _Batch(ops)

    def _op_delete_for_runs(self, run_ids: Sequence[str]) -> _Op[None]:
        lay = self._layout
        for run_id in dict.fromkeys(run_ids):
            entries = yield from self._keys(lay.run(run_id))
            if not entries:
                continue
            heads: dict[str, str] = {}  # entry → head key
            for entry in entries:
                parts = entry[len(lay.run(run_id)) :].split("/")
                if len(parts) == 3:
                    heads[entry] = lay.head_of(*parts)
            rows = yield from self._select_exact(list(heads.values()))
            stored = {r.key: _json_field(r.value, "run_id") for r in rows}
            first: List[List[str]] = []
            datas: List[str] = []
            for entry in entries:
                head = heads.get(entry)
                if head is not None and stored.get(head) == run_id:
                    first.append([head, entry])
                    parsed = lay.parse(head)
                    assert parsed is not None
                    datas.append(lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid))
                else:
                    first.append([entry])  # a stale entry
            yield from self._delete(first)
            for d in datas:
                data_keys = yield from self._keys(d)
                yield from self._delete([[k] for k in data_keys])

    def _op_prune(self, thread_ids: Sequence[str], strategy: str) -> _Op[None]:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r} (keep_latest or delete)")
        lay = self._layout
        for thread_id in dict.fromkeys(thread_ids):
            if strategy == "delete":
                yield from self._op_delete_thread(thread_id)
                continue
            prefix = lay.thread(thread_id)
            keys = yield from self._keys(prefix)
            by_ns: dict[str, List[str]] = {}  # namespace → head keys, newest first
            for k in keys:
                parsed = lay.parse(k)
                if parsed is not None and parsed.kind == "c":
                    by_ns.setdefault(parsed.ns_seg, []).append(k)
            keep: set[str] = set()
            for ns_seg, heads in by_ns.items():
                ns = _unseg(ns_seg)
                present = set(heads)
                keep.add(heads[0])
                latest = yield from self._load(thread_id, ns, [_head_id(lay, heads[0]) or ""])
                tup = next(iter(latest.values()), None)
                # Delta channels are rebuilt from the ancestors back to their last snapshot:
                # keep those ancestors.
                pending = set((tup.metadata.get("counters_since_delta_snapshot") or {}) if tup else ())
                parent = tup.parent_config if tup else None
                while pending and parent is not None:
                    pid = parent["configurable"]["checkpoint_id"]
                    key = lay.head(thread_id, ns, pid)
                    if key not in present:
                        break
                    found = yield from self._load(thread_id, ns, [pid])
                    anc = found.get(pid)
                    if anc is None:
                        break
                    keep.add(key)
                    pending -= {c for c in pending if c in anc.checkpoint["channel_values"]}
                    parent = anc.parent_config
            victims = [k for heads in by_ns.values() for k in heads if k not in keep]
            if not victims:
                continue
            runs = yield from self._run_entries(prefix)
            victim_data = set()
            for v in victims:
                parsed = lay.parse(v)
                assert parsed is not None
                victim_data.add(lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid))
            groups = [[v, runs[v]] if v in runs else [v] for v in victims]
            for k in keys:
                parsed = lay.parse(k)
                if parsed is not None and parsed.kind == "d":
                    if lay.data_of(parsed.thread_seg, parsed.ns_seg, parsed.rid) in victim_data:
                        groups.append([k])
            yield from self._delete(groups)


# --------------------------------------------------------------------------- helpers


def _union(branches: Sequence[tuple[str, str]]) -> _Sql:
    parts = [
        f"SELECT key, value, etag, content_type FROM memory WHERE {cond.format(i + 1)}"
        for i, (cond, _v) in enumerate(branches)
    ]
    return _Sql(" UNION ALL ".join(parts), tuple(v for _c, v in branches))


def _rows(res: _SqlResult) -> list[_Row]:
    return [_Row(r[0], base64.b64decode(r[1]), r[2], r[3]) for r in res.rows]


def _sql_result(body: Mapping[str, Any]) -> _SqlResult:
    return _SqlResult(list(body.get("rows") or []), bool(body.get("truncated")))


def _key_page(body: Mapping[str, Any]) -> _KeyPage:
    keys = [str(d["key"]) for d in body.get("data") or []]
    more = bool(body.get("has_more")) and bool(keys)
    return _KeyPage(keys, (body.get("next_after") or keys[-1]) if more else None)


def _is_head(layout: _Layout, key: str) -> bool:
    parsed = layout.parse(key)
    return parsed is not None and parsed.kind == "c"


def _head_id(layout: _Layout, key: str) -> Optional[str]:
    parsed = layout.parse(key)
    if parsed is None or parsed.kind != "c":
        return None
    return _unrid(parsed.rid)


def _json_field(value: bytes, name: str) -> Optional[str]:
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    v = obj.get(name) if isinstance(obj, dict) else None
    return v if isinstance(v, str) and v else None


def _copy_op(row: _Row, key: str) -> dict[str, Any]:
    return {
        "op": "put",
        "key": key,
        "value_base64": _b64(row.value),
        "content_type": row.content_type or _BINARY,
    }

"""The typed Python client (`mnemo_client.MnemoClient` / `AsyncMnemoClient`) against a real
server: every method in both forms, error mapping, awkward keys, paging iterators, user
scope, and the change stream. Contract: docs/api.md and docs/integrations.md."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, List, TypeVar

import httpx  # the client's own HTTP library (conftest's `httpx` may be another package)
import pytest

from mnemo_client import (
    AsyncMnemoClient,
    MnemoClient,
    MnemoError,
    NotFoundError,
    PreconditionFailedError,
)
from mnemo_client.client import _SSEParser

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Runs one async test body (no pytest-asyncio here)."""
    return asyncio.run(coro_fn())


STREAM_TIMEOUT = 60.0


def take(stream: Any, n: int) -> List[dict]:
    """The next ``n`` events of a sync change stream, read on a helper thread so that a
    missing event fails the test instead of blocking it (heartbeats keep the stream open)."""
    out: List[dict] = []
    failure: List[BaseException] = []

    def consume() -> None:
        try:
            for event in stream:
                out.append(event)
                if len(out) == n:
                    return
        except BaseException as e:  # surfaced below
            failure.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(STREAM_TIMEOUT)
    if failure:
        raise failure[0]
    assert not t.is_alive(), f"{len(out)} of {n} events within {STREAM_TIMEOUT}s: {out}"
    assert len(out) == n, f"the stream ended after {len(out)} of {n} events: {out}"
    return out


async def atake(stream: Any, n: int) -> List[dict]:
    """The async form of :func:`take`."""

    async def collect() -> List[dict]:
        out: List[dict] = []
        async for event in stream:
            out.append(event)
            if len(out) == n:
                break
        return out

    out = await asyncio.wait_for(collect(), STREAM_TIMEOUT)
    assert len(out) == n, f"the stream ended after {len(out)} of {n} events: {out}"
    return out


@pytest.fixture
def c(server):
    with MnemoClient(base_url=server.base_url) as client:
        yield client


def msg(role: str, text: str) -> dict:
    return {"type": "message", "role": role, "content": text}


# Keys that a naive path join would break: `/` (and encoded-looking text), dot segments, `%`,
# `?`, `#`, spaces, `+`, `;`, backslash, tab, non-ASCII, and the longest key allowed.
AWKWARD_KEYS = [
    "a/b/c",
    "trailing/",
    "//double//slash",
    ".",
    "..",
    "a/../b",
    "./x",
    "100%",
    "100%25",
    "%2F",
    "what?x=1&y=2",
    "frag#ment",
    "with space ",
    "plus+plus",
    "semi;colon=1",
    "back\\slash",
    "tab\there",
    "ünïcödé/日本語/🎉",
    "k" * 1024,
]


# ------------------------------------------------------------------------ conversations


def test_conversations_every_method(c):
    conv = c.conversations.create(metadata={"topic": "travel"}, items=[msg("user", "hello")])
    assert conv["object"] == "conversation" and conv["id"].startswith("conv_")
    assert conv["metadata"] == {"topic": "travel"}
    assert c.conversations.retrieve(conv["id"]) == conv
    updated = c.conversations.update(conv["id"], metadata={"topic": "food"})
    assert updated["id"] == conv["id"] and updated["metadata"] == {"topic": "food"}

    added = c.conversations.items.add(conv["id"], [msg("assistant", "hi"), msg("user", "bye")])
    assert [i["role"] for i in added["data"]] == ["assistant", "user"]
    page = c.conversations.items.list(conv["id"], order="asc", limit=2)
    assert page["object"] == "list" and page["has_more"] is True
    assert [i["role"] for i in page["data"]] == ["user", "assistant"]
    rest = c.conversations.items.list(conv["id"], order="asc", after=page["last_id"])
    assert [i["id"] for i in rest["data"]] == [added["data"][1]["id"]] and rest["has_more"] is False

    item = added["data"][0]
    assert c.conversations.items.get(conv["id"], item["id"]) == item
    assert c.conversations.items.delete(conv["id"], item["id"])["id"] == conv["id"]
    with pytest.raises(NotFoundError):
        c.conversations.items.get(conv["id"], item["id"])

    deleted = c.conversations.delete(conv["id"])
    assert deleted == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    with pytest.raises(NotFoundError) as e:
        c.conversations.retrieve(conv["id"])
    assert e.value.status == 404 and e.value.type == "not_found_error"
    with pytest.raises(NotFoundError):
        c.conversations.items.list(conv["id"])


def test_conversations_every_method_async(server):
    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as c:
            conv = await c.conversations.create(metadata={"a": "1"})
            assert (await c.conversations.retrieve(conv["id"]))["metadata"] == {"a": "1"}
            assert (await c.conversations.update(conv["id"], metadata={"a": "2"}))["metadata"] == {"a": "2"}
            added = await c.conversations.items.add(conv["id"], [msg("user", "x"), msg("assistant", "y")])
            ids = [i["id"] for i in added["data"]]
            page = await c.conversations.items.list(conv["id"], order="desc")
            assert [i["id"] for i in page["data"]] == ids[::-1] and page["has_more"] is False
            assert (await c.conversations.items.get(conv["id"], ids[0]))["id"] == ids[0]
            await c.conversations.items.delete(conv["id"], ids[0])
            with pytest.raises(NotFoundError):
                await c.conversations.items.get(conv["id"], ids[0])
            assert (await c.conversations.delete(conv["id"]))["deleted"] is True
            with pytest.raises(NotFoundError):
                await c.conversations.retrieve(conv["id"])

    run(body)


def test_item_iterators_follow_pages(c, server):
    conv = c.conversations.create(items=[msg("user", f"m{i}") for i in range(20)])
    c.conversations.items.add(conv["id"], [msg("user", f"m{i}") for i in range(20, 25)])
    asc = [i["content"][0]["text"] for i in c.conversations.items.iter(conv["id"], order="asc", page_size=7)]
    assert asc == [f"m{i}" for i in range(25)]
    desc = list(c.conversations.items.iter(conv["id"], page_size=4))  # server default: newest first
    assert [i["content"][0]["text"] for i in desc] == [f"m{i}" for i in reversed(range(25))]
    after = list(c.conversations.items.iter(conv["id"], order="asc", after=desc[-3]["id"], page_size=3))
    assert [i["content"][0]["text"] for i in after] == [f"m{i}" for i in range(3, 25)]

    async def body() -> List[str]:
        async with AsyncMnemoClient(base_url=server.base_url) as ac:
            return [i["content"][0]["text"] async for i in ac.conversations.items.iter(
                conv["id"], order="asc", page_size=6)]

    assert run(body) == [f"m{i}" for i in range(25)]


# ------------------------------------------------------------------------------ memory


def test_memory_values_and_conditions(c, uid):
    k = f"client/{uid}/v"
    etag = c.memory.put(k, b"\x00\xffraw")
    got = c.memory.get(k)
    assert (got.key, got.value, got.etag, got.content_type) == (k, b"\x00\xffraw", etag, "application/octet-stream")

    etag2 = c.memory.put(k, "héllo")
    got = c.memory.get(k)
    assert got.text == "héllo" and got.content_type.startswith("text/plain") and got.etag == etag2 != etag
    c.memory.put(k, {"n": 1, "tags": ["x"]})
    got = c.memory.get(k)
    assert got.json() == {"n": 1, "tags": ["x"]} and got.content_type == "application/json"
    c.memory.put(k, "<a/>", content_type="application/xml")
    assert c.memory.get(k).content_type == "application/xml"

    with pytest.raises(PreconditionFailedError) as e:
        c.memory.put(k, b"x", if_none_match="*")
    assert e.value.status == 412 and e.value.type == "precondition_failed"
    current = c.memory.get(k).etag
    with pytest.raises(PreconditionFailedError):
        c.memory.put(k, b"x", if_match=etag)  # stale
    etag3 = c.memory.put(k, b"x", if_match=[etag, current])  # any of several
    assert c.memory.put(k, b"y", if_match=etag3.strip('"')) != etag3  # unquoted tags are quoted
    assert c.memory.put(f"{k}-new", b"1", if_none_match="*")

    c.memory.put(f"{k}-ttl", b"t", ttl_seconds=3600)
    (entry,) = [e for e in c.memory.iter(prefix=f"{k}-ttl")]
    assert entry["key"] == f"{k}-ttl" and entry["expires_at"] is not None and entry["size"] == 1

    with pytest.raises(PreconditionFailedError):
        c.memory.delete(k, if_match=etag)
    assert c.memory.delete(k, if_match="*") == {"key": k, "deleted": True}
    with pytest.raises(NotFoundError):
        c.memory.get(k)
    with pytest.raises(NotFoundError):
        c.memory.delete(k)


def test_memory_values_and_conditions_async(server, uid):
    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as c:
            k = f"aclient/{uid}/v"
            etag = await c.memory.put(k, {"a": [1, 2]}, ttl_seconds=600)
            got = await c.memory.get(k)
            assert got.json() == {"a": [1, 2]} and got.etag == etag
            with pytest.raises(PreconditionFailedError):
                await c.memory.put(k, "x", if_none_match="*")
            with pytest.raises(PreconditionFailedError):
                await c.memory.delete(k, if_match='"0000"')
            page = await c.memory.list(prefix=f"aclient/{uid}/")
            assert [e["key"] for e in page["data"]] == [k] and page["data"][0]["expires_at"]
            await c.memory.delete(k, if_match=etag)
            with pytest.raises(NotFoundError):
                await c.memory.get(k)

    run(body)


@pytest.mark.parametrize("suffix", AWKWARD_KEYS, ids=range(len(AWKWARD_KEYS)))
def test_awkward_keys_round_trip(c, uid, suffix):
    # `.`, `..` and the longest key allowed are used as they are (a prefix would hide what
    # makes them awkward); the others are made unique with a prefix.
    key = suffix if suffix in (".", "..") or len(suffix) == 1024 else f"awk-{uid}/{suffix}"
    etag = c.memory.put(key, key)
    got = c.memory.get(key)
    assert got.text == key and got.etag == etag and got.key == key
    assert [e["key"] for e in c.memory.list(prefix=key)["data"]][:1] == [key]
    assert c.memory.put(key, b"again", if_match=etag) != etag
    etag = c.memory.get(key).etag
    assert c.memory.delete(key, if_match=etag) == {"key": key, "deleted": True}
    with pytest.raises(NotFoundError):
        c.memory.get(key)


def test_awkward_keys_are_distinct_and_listed_exactly(c, server, uid):
    prefix = f"awk2-{uid}/"
    keys = [prefix + k for k in AWKWARD_KEYS[:-1]]
    for k in keys:
        c.memory.put(k, k)
    # `100%` / `100%25` and `a/../b` / `b` etc. are separate keys holding their own names.
    assert sorted(e["key"] for e in c.memory.iter(prefix=prefix, page_size=5)) == sorted(keys)
    for k in keys:
        assert c.memory.get(k).text == k

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as ac:
            for k in keys:
                assert (await ac.memory.get(k)).text == k
            assert sorted([e["key"] async for e in ac.memory.iter(prefix=prefix, page_size=4)]) == sorted(keys)
            results = await ac.memory.batch([{"op": "delete", "key": k} for k in keys])
            assert [r["key"] for r in results] == keys and all(r["deleted"] for r in results)

    run(body)
    assert c.memory.list(prefix=prefix)["data"] == []


def test_memory_iterators_follow_pages(c, uid):
    prefix = f"pages-{uid}/"
    keys = [f"{prefix}{i:03d}" for i in range(23)]
    c.memory.batch([{"op": "put", "key": k, "value": i} for i, k in enumerate(keys)])
    first = c.memory.list(prefix=prefix, limit=5)
    assert [e["key"] for e in first["data"]] == keys[:5] and first["has_more"] and first["next_after"] == keys[4]
    assert [e["key"] for e in c.memory.iter(prefix=prefix, page_size=5)] == keys
    assert [e["key"] for e in c.memory.iter(prefix=prefix, after=keys[10], page_size=4)] == keys[11:]


def test_batch_is_atomic_and_names_the_failing_operation(c, server, uid):
    a, b, d = (f"batch-{uid}/{n}" for n in "abd")
    c.memory.put(d, b"to delete")
    results = c.memory.batch([
        {"op": "put", "key": a, "value": b"\x00\x01\x02"},
        {"op": "put", "key": b, "value": {"json": True}, "ttl_seconds": 600, "if_none_match": "*"},
        {"op": "delete", "key": d},
    ])
    assert [(r["key"], r["deleted"]) for r in results] == [(a, False), (b, False), (d, True)]
    assert results[2]["etag"] is None
    va, vb = c.memory.get(a), c.memory.get(b)
    assert (va.value, va.content_type, va.etag) == (b"\x00\x01\x02", "application/octet-stream", results[0]["etag"])
    assert (vb.json(), vb.content_type) == ({"json": True}, "application/json")

    with pytest.raises(PreconditionFailedError) as e:
        c.memory.batch([
            {"op": "put", "key": a, "value": "changed", "if_match": results[0]["etag"]},
            {"op": "put", "key": b, "value": "changed", "if_match": "stale"},
        ])
    assert e.value.param == "operations[1]" and e.value.status == 412
    assert c.memory.get(a).value == b"\x00\x01\x02"  # nothing was written

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as ac:
            with pytest.raises(PreconditionFailedError) as e:
                await ac.memory.batch([{"op": "put", "key": a, "value": "t", "if_none_match": "*"}])
            assert e.value.param == "operations[0]"
            out = await ac.memory.batch([{"op": "put", "key": a, "value": "text", "if_match": va.etag}])
            assert out[0]["etag"] == (await ac.memory.get(a)).etag

    run(body)
    assert c.memory.get(a).text == "text"


# ------------------------------------------------------------------------------ errors


def test_error_mapping(c, uid):
    with pytest.raises(NotFoundError) as nf:
        c.memory.get(f"absent-{uid}")
    assert nf.value.status == 404 and nf.value.type == "not_found_error" and nf.value.message

    with pytest.raises(MnemoError) as bad:
        c.sql("SELEC nothing")
    err = bad.value
    assert not isinstance(err, (NotFoundError, PreconditionFailedError))
    assert (err.status, err.type, err.code, err.param) == (400, "invalid_request_error", "sql_syntax_error", "query")

    with pytest.raises(MnemoError) as ro:
        c.sql("DELETE FROM memory")
    assert ro.value.code == "sql_read_only"
    with pytest.raises(MnemoError) as ttl:
        c.memory.put(f"k-{uid}", b"x", ttl_seconds=0)
    assert ttl.value.status == 400 and ttl.value.param == "ttl_seconds"
    with pytest.raises(MnemoError) as cursor:
        c.changes.list(after="not-a-cursor")
    assert cursor.value.status == 400 and cursor.value.param == "after"
    with pytest.raises(MnemoError) as stream:
        c.changes.stream(after="not-a-cursor").open()
    assert stream.value.status == 400 and stream.value.param == "after"
    with pytest.raises(ValueError):
        c.search()
    with pytest.raises(ValueError):
        c.memory.get("")


def test_error_mapping_async(server, uid):
    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as c:
            with pytest.raises(NotFoundError):
                await c.conversations.retrieve("conv_" + "0" * 48)
            with pytest.raises(MnemoError) as e:
                await c.sql("SELECT $1::int", params=["not a number", 2])
            assert e.value.status == 400 and e.value.code == "sql_invalid_param"
            with pytest.raises(MnemoError) as e:
                async with c.changes.stream(after="not-a-cursor"):
                    pass
            assert e.value.status == 400 and e.value.param == "after"

    run(body)


# --------------------------------------------------------------------------- user scope


def test_users_are_isolated(server, uid):
    a, b = f"ua-{uid}", f"ub-{uid}"
    with MnemoClient(base_url=server.base_url, user=b) as cb:
        etag = cb.memory.put(f"users/{b}/secret", b"b's")
        conv_b = cb.conversations.create(items=[msg("user", "b only")])
        ca = cb.with_user(a)  # shares cb's connection pool
        assert ca.user == a and cb.user == b
        with pytest.raises(NotFoundError):
            ca.memory.get(f"users/{b}/secret")
        with pytest.raises(MnemoError) as denied:
            ca.memory.put(f"users/{b}/secret", b"a's", if_match=etag)
        assert denied.value.status == 403
        with pytest.raises(MnemoError) as denied:
            ca.memory.delete(f"users/{b}/secret")  # a delete is a write
        assert denied.value.status == 403
        assert ca.memory.list(prefix=f"users/{b}/")["data"] == []
        with pytest.raises(NotFoundError):
            ca.conversations.retrieve(conv_b["id"])
        ca.memory.put(f"users/{a}/mine", b"a's")
        assert ca.sql("SELECT key FROM memory WHERE key LIKE $1", [f"users/%-{uid}/%"])["rows"] == [[f"users/{a}/mine"]]
        ca.close()  # leaves the shared pool open
        assert cb.memory.get(f"users/{b}/secret").value == b"b's"
        assert cb.conversations.retrieve(conv_b["id"])["id"] == conv_b["id"]
        tenant = cb.with_user(None)
        assert {e["key"] for e in tenant.memory.iter(prefix="users/") if uid in e["key"]} == {
            f"users/{b}/secret", f"users/{a}/mine"}

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url + "/v1", user=a) as aa:
            with pytest.raises(NotFoundError):
                await aa.memory.get(f"users/{b}/secret")
            assert (await aa.memory.get(f"users/{a}/mine")).value == b"a's"
            ab = aa.with_user(b)
            assert (await ab.memory.get(f"users/{b}/secret")).value == b"b's"
            with pytest.raises(NotFoundError):
                await ab.memory.get(f"users/{a}/mine")

    run(body)


def test_given_http_client_is_used_and_left_open(server, uid):
    with httpx.Client(timeout=10) as http:
        with MnemoClient(base_url=server.base_url, http_client=http) as c:
            c.memory.put(f"own-{uid}", b"1")
        assert not http.is_closed
        assert http.get(f"{server.base_url}/v1/kv/own-{uid}").content == b"1"
    own = MnemoClient(base_url=server.base_url)
    own.close()
    with pytest.raises(RuntimeError):
        own.memory.get(f"own-{uid}")


# ------------------------------------------------------------------------ search and SQL


def test_search_items_and_memory(c, server, uid):
    word = f"zebra{uid}"
    conv = c.conversations.create(metadata={"topic": uid}, items=[msg("user", f"a {word} in Lisbon")])
    other = c.conversations.create(items=[msg("assistant", f"another {word} in Porto")])
    c.memory.put(f"search-{uid}/note", {"text": f"the {word} note"})
    c.memory.put(f"elsewhere-{uid}/note", {"text": f"another {word} note"})

    hits = c.search(word, top_k=10)
    assert {h["conversation_id"] for h in hits} == {conv["id"], other["id"]}
    assert all(h["object"] == "search.result" and h["score"] > 0 for h in hits)
    scoped = c.search(word, conversation_id=conv["id"], mode="text", consistency="strong")
    assert [h["conversation_id"] for h in scoped] == [conv["id"]] and "Lisbon" in scoped[0]["item"]["content"][0]["text"]
    assert [h["conversation_id"] for h in c.search(word, filter={"role": "assistant"})] == [other["id"]]
    assert [h["conversation_id"] for h in c.search(word, filter={"metadata": {"topic": uid}})] == [conv["id"]]
    mem = c.search(word, source="memory", prefix=f"search-{uid}/")
    assert [(h["key"], h["value"]) for h in mem] == [(f"search-{uid}/note", {"text": f"the {word} note"})]
    with pytest.raises(MnemoError) as e:
        c.search(word, mode="sideways")
    assert e.value.status == 400

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as ac:
            hits = await ac.search(word, scope={"conversation_id": other["id"]})
            assert [h["item_id"] for h in hits] and {h["conversation_id"] for h in hits} == {other["id"]}

    run(body)


def test_sql_json_and_arrow(c, server, uid):
    pa = pytest.importorskip("pyarrow")
    prefix = f"sql-{uid}/"
    c.memory.batch([{"op": "put", "key": f"{prefix}{i}", "value": {"i": i}} for i in range(5)])
    q = "SELECT key, size, value_json FROM memory WHERE starts_with(key, $1) ORDER BY key"
    res = c.sql(q, [prefix])
    assert res["object"] == "sql.result" and res["truncated"] is False
    assert [col["name"] for col in res["columns"]] == ["key", "size", "value_json"]
    assert [r[0] for r in res["rows"]] == [f"{prefix}{i}" for i in range(5)]
    table = c.sql_arrow(q, [prefix])
    assert isinstance(table, pa.Table) and table.column_names == ["key", "size", "value_json"]
    assert table.column("key").to_pylist() == [r[0] for r in res["rows"]]
    assert table.column("size").to_pylist() == [r[1] for r in res["rows"]]
    with pytest.raises(MnemoError) as e:
        c.sql_arrow("SELECT nope FROM memory")
    assert e.value.status == 400 and e.value.code == "sql_invalid"

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url) as ac:
            assert (await ac.sql("SELECT count(*) FROM memory WHERE starts_with(key, $1)", [prefix]))["rows"] == [[5]]
            t = await ac.sql_arrow("SELECT key FROM memory WHERE starts_with(key, $1) ORDER BY key", [prefix])
            assert t.column("key").to_pylist() == [r[0] for r in res["rows"]]

    run(body)


# --------------------------------------------------------------------------- change feed


def test_changes_pages_and_long_poll(server, uid):
    user = f"feed-{uid}"
    with MnemoClient(base_url=server.base_url, user=user) as c:
        start = c.changes.list(after="now")
        assert start["data"] == [] and start["next_cursor"]
        conv = c.conversations.create(items=[msg("user", "x")])
        c.memory.put(f"users/{user}/k", "v")
        c.memory.delete(f"users/{user}/k")
        events, cursor = [], start["next_cursor"]
        while True:
            page = c.changes.list(after=cursor, limit=1, include="body")
            events += page["data"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert [e["type"] for e in events] == ["conversation.created", "item.created", "memory.put", "memory.deleted"]
        assert events[0]["conversation_id"] == conv["id"] and all(e["user_id"] == user for e in events)
        assert "body" in events[0] and events[0]["body"]["id"] == conv["id"]

    # A long poll longer than the client's read timeout: the read timeout is lengthened.
    with MnemoClient(base_url=server.base_url, user=f"idle-{uid}", timeout=0.5) as idle:
        quiet = idle.changes.list(after="now", wait_ms=1500)
        assert quiet["data"] == [] and quiet["next_cursor"]

    async def body() -> None:
        async with AsyncMnemoClient(base_url=server.base_url, user=user, timeout=0.5) as ac:
            page = await ac.changes.list(after=start["next_cursor"], limit=10)
            assert [e["id"] for e in page["data"]] == [e["id"] for e in events]
            quiet = await ac.changes.list(after=page["next_cursor"], wait_ms=1500)
            assert quiet["data"] == []

    run(body)


def test_change_stream_delivers_writes_made_after_it_started(server, uid):
    user = f"stream-{uid}"
    with MnemoClient(base_url=server.base_url, user=user) as c:
        c.memory.put(f"users/{user}/before", b"0")  # before the stream: not delivered
        with c.changes.stream(after="now") as stream:
            assert stream.last_id is None
            conv = c.conversations.create(items=[msg("user", "hi")])
            keys = [f"users/{user}/k{i}" for i in range(3)]
            for k in keys:
                c.memory.put(k, k)
            c.memory.batch([{"op": "delete", "key": k} for k in keys[:2]])
            seen = take(stream, 7)
            assert stream.last_id == seen[-1]["id"]
        assert [e["type"] for e in seen] == ["conversation.created", "item.created"] + ["memory.put"] * 3 + [
            "memory.deleted"] * 2
        assert seen[0]["conversation_id"] == conv["id"]
        assert [e.get("key") for e in seen[2:]] == keys + keys[:2]
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
        assert next(stream, None) is None  # closed

        # Resuming from an event's id delivers what followed it, here with bodies.
        with c.changes.stream(after=seen[3]["id"], include="body") as resumed:
            tail = take(resumed, 3)
        assert [e["id"] for e in tail] == [e["id"] for e in seen[4:]]
        assert tail[0]["body"]["key"] == keys[2] and tail[0]["body"]["value"] == keys[2]


def test_change_stream_is_scoped_and_async(server, uid):
    me, other = f"sa-{uid}", f"sb-{uid}"

    async def body() -> List[dict]:
        async with AsyncMnemoClient(base_url=server.base_url, user=me) as c:
            async with c.changes.stream(after="now") as stream:
                await c.with_user(other).memory.put(f"users/{other}/x", b"not mine")
                await c.memory.put(f"users/{me}/x", b"mine")
                await c.memory.delete(f"users/{me}/x")
                out = await atake(stream, 2)
                assert stream.last_id == out[-1]["id"]
            return out

    events = run(body)
    assert [(e["type"], e["key"], e["user_id"]) for e in events] == [
        ("memory.put", f"users/{me}/x", me), ("memory.deleted", f"users/{me}/x", me)]


def test_sse_parser_follows_the_event_stream_format():
    p = _SSEParser()
    lines = [": heartbeat", "", "id: c1", "data: {\"a\":", "data:1}", "", "event: custom", "retry: 10",
             "data", "", "id: c2", "", "data: x"]
    events = [e for e in (p.feed(line) for line in lines) if e is not None]
    assert [(e.id, e.event, e.data) for e in events] == [
        ("c1", "message", '{"a":\n1}'), ("c1", "custom", "")]
    assert p.feed("") is not None and p.feed("") is None  # the last id (c2) carries over, then nothing

"""`mnemo_client.langgraph_store.MnemoStore`, a LangGraph `BaseStore` over mnemo's memory.

Differential against LangGraph's `InMemoryStore` (seeded random sequences of puts, deletes,
gets, filtered searches and namespace listings, sync and async), the key mapping, TTL expiry
and refresh, user × user and tenant × tenant isolation, natural-language queries by words
(BM25) and by meaning (built-in embedder, needs MNEMO_MODEL_DIR), and request counts."""
from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import datetime, timedelta
from typing import Any, Optional

import httpx
import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore
from typing_extensions import TypedDict

from conftest import MnemoServer, start_server
from idp import IdentityProvider
from mnemo_client import MnemoError
from mnemo_client.langgraph_store import (
    CONTENT_TYPE,
    MnemoStore,
    memory_key,
    namespace_key_prefix,
    parse_memory_key,
)

MODEL_DIR = os.environ.get("MNEMO_MODEL_DIR")


def start(name: str, args: Optional[list] = None) -> MnemoServer:
    return start_server(name, args)


@pytest.fixture(scope="module")
def diff_server():
    """A server for the differential runs alone: each seed starts from an empty memory."""
    srv = start("mnemo-lg-diff")
    yield srv
    srv.close()


def wipe(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        while True:
            keys = [e["key"] for e in c.get("/v1/kv", params={"limit": 1000}).json()["data"]]
            if not keys:
                return
            for i in range(0, len(keys), 100):
                ops = [{"op": "delete", "key": k} for k in keys[i:i + 100]]
                assert c.post("/v1/kv/batch", json={"operations": ops}).status_code == 200


def poll(condition, what: str, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- key mapping

NASTY = ["a", "b", "/", "%", "%2F", "%25", "a/b", "ü", "日本", "*", "x y", "\x01", "\x7f", "users", "~", "-", "_"]


def test_key_mapping_is_injective_and_prefix_preserving():
    rng = random.Random(7)

    def text(allow_empty: bool, allow_dot: bool) -> str:
        parts = rng.choices(NASTY + ([".", "a.b"] if allow_dot else []), k=rng.randint(0 if allow_empty else 1, 3))
        return "".join(parts)

    seen: dict[str, tuple] = {}
    for _ in range(3000):
        ns = tuple(text(False, False) for _ in range(rng.randint(1, 4)))
        key = text(True, True)
        mk = memory_key(ns, key)
        assert parse_memory_key(mk) == (ns, key)
        assert seen.setdefault(mk, (ns, key)) == (ns, key), f"{mk!r} maps two items"
        for n in range(len(ns) + 1):
            assert mk.startswith(namespace_key_prefix(ns[:n]))
        other = tuple(text(False, False) for _ in range(rng.randint(1, 3)))
        assert mk.startswith(namespace_key_prefix(other)) == (ns[: len(other)] == other)
    assert memory_key(("users", "alice", "prefs"), "theme") == "users/alice/prefs/theme"
    assert memory_key(("a/b", "%"), "k/1") == "a%2Fb/%25/k%2F1"
    # Keys the store did not write (bad escapes, labels with dots, no namespace) are not items.
    for foreign in ["plain", "a/%2f", "a/%zz", "a/%41", "v1.2/k", "a//k"]:
        assert parse_memory_key(foreign) is None


# --------------------------------------------------------------------------- differential vs InMemoryStore

ROOTS = ["a", "b", "a/b", "%2F", "ü", "users"]
LABELS = ["a", "b", "a/b", "%", "ü", "*", "x y"]
USERS = ["u1", "u2"]
KEYS = ["k", "k2", "a/b", "%", "", "ключ", "k.1", "*"]
FILTERS: list[dict[str, Any]] = [
    {"tag": "red"},
    {"tag": {"$eq": "blue"}},
    {"tag": {"$ne": "red"}},
    {"n": {"$gt": 3}},
    {"n": {"$gte": 2, "$lt": 7}},
    {"n": {"$lte": 5, "$ne": 2}},
    {"f": {"$gte": 0.5}},
    {"nested": {"x": 1}},
    {"lst": [1, 2]},
    {"tag": "blue", "n": {"$lt": 5}},
]


class Gen:
    """Random namespaces, values and operations from one seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def namespace(self) -> tuple:
        r = self.rng
        root = r.choice(ROOTS)
        if root == "users":
            # Under "users" the second label is a user id (never one that needs escaping).
            if r.random() < 0.2:
                return (root,)
            return (root, r.choice(USERS), *[r.choice(LABELS) for _ in range(r.randint(0, 1))])
        return (root, *[r.choice(LABELS) for _ in range(r.randint(0, 2))])

    def value(self) -> dict:
        r = self.rng
        # Fields compared with $gt & co. are always there: InMemoryStore raises on a missing one.
        v: dict[str, Any] = {"n": r.randint(0, 9), "tag": r.choice(["red", "blue", "grün"]),
                             "f": r.choice([0.0, 0.25, 0.5, 1.5, -2.0])}
        if r.random() < 0.3:
            v["nested"] = {"x": r.randint(0, 2), "s": "deep / % ü"}
        if r.random() < 0.3:
            v["lst"] = r.choice([[1, 2], [2, 1], [1, 2, 3], []])
        if r.random() < 0.2:
            v["text"] = "words " * r.randint(1, 3)
        return v

    def prefix_path(self) -> tuple:
        r = self.rng
        path = self.namespace()[: r.randint(0, 3)]
        return tuple("*" if r.random() < 0.25 else label for label in path)

    def list_op(self) -> ListNamespacesOp:
        r = self.rng
        conditions = []
        if r.random() < 0.6:
            conditions.append(MatchCondition("prefix", self.prefix_path()))
        if r.random() < 0.4:
            conditions.append(MatchCondition(
                "suffix", tuple(r.choice(LABELS + USERS + ["*"]) for _ in range(r.randint(1, 2)))))
        return ListNamespacesOp(
            match_conditions=tuple(conditions) or None,
            max_depth=r.choice([None, None, 1, 2, 3]),
            limit=r.choice([1, 2, 3, 5, 100]),
            offset=r.choice([0, 0, 1, 2]),
        )

    def search_args(self) -> dict:
        r = self.rng
        return {
            "prefix": self.namespace()[: r.randint(0, 3)],
            "filter": r.choice([None, None] + FILTERS),
            "limit": r.choice([1, 2, 3, 10, 50]),
            "offset": r.choice([0, 0, 1, 3]),
        }


def prune(ref: InMemoryStore) -> None:
    """InMemoryStore keeps a namespace listed once its last item is deleted (and `get`
    creates empty namespaces); mnemo lists namespaces that hold items. Drop the empty ones
    so the listings compare what both define the same way."""
    for ns in [ns for ns, items in ref._data.items() if not items]:
        del ref._data[ns]


def plain(item) -> Optional[tuple]:
    return None if item is None else (item.namespace, item.key, item.value)


def expected_search(ref_results: list, offset: int, limit: int) -> list:
    """InMemoryStore returns matches in insertion order, MnemoStore in memory-key order:
    the reference answer is every match, ordered like MnemoStore, then sliced."""
    ordered = sorted(ref_results, key=lambda i: memory_key(i.namespace, i.key).encode())
    return [plain(i) for i in ordered[offset:offset + limit]]


class Runner:
    """Applies one generated operation to both stores (sync or async) and compares."""

    def __init__(self, store: MnemoStore, ref: InMemoryStore, gen: Gen, is_async: bool):
        self.store, self.ref, self.gen, self.is_async = store, ref, gen, is_async
        self.counts: dict[str, int] = {}

    async def call(self, store: BaseStore, name: str, *args, **kw):
        if self.is_async:
            return await getattr(store, "a" + name)(*args, **kw)
        return getattr(store, name)(*args, **kw)

    async def both(self, name: str, *args, **kw):
        if name == "list_namespaces" or name == "batch":
            prune(self.ref)
        return await self.call(self.store, name, *args, **kw), await self.call(self.ref, name, *args, **kw)

    async def step(self, i: int) -> None:
        r = self.gen.rng
        kind = r.choices(["put", "delete", "get", "search", "list", "batch"], [40, 10, 15, 18, 12, 5])[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        where = f"op #{i} ({kind})"
        if kind == "put":
            await self.both("put", self.gen.namespace(), r.choice(KEYS), self.gen.value())
        elif kind == "delete":
            await self.both("delete", self.gen.namespace(), r.choice(KEYS))
        elif kind == "get":
            ns, key = self.gen.namespace(), r.choice(KEYS)
            got, want = await self.both("get", ns, key)
            assert plain(got) == plain(want), f"{where}: get {ns}/{key!r}"
        elif kind == "search":
            a = self.gen.search_args()
            got = await self.call(self.store, "search", a["prefix"], filter=a["filter"], limit=a["limit"],
                                  offset=a["offset"])
            every = await self.call(self.ref, "search", a["prefix"], filter=a["filter"], limit=10**6)
            assert [plain(x) for x in got] == expected_search(every, a["offset"], a["limit"]), f"{where}: {a}"
            assert all(x.score is None for x in got)
        elif kind == "list":
            op = self.gen.list_op()
            got, want = await self.both("batch", [op])
            assert got == want, f"{where}: {op}"
        else:
            # One batch mixing every kind: reads see the state before the batch's writes, and
            # the last of several puts to one item wins.
            ops: list = []
            for _ in range(r.randint(2, 8)):
                k = r.random()
                ns, key = self.gen.namespace(), r.choice(KEYS)
                if k < 0.45:
                    ops.append(PutOp(ns, key, None if r.random() < 0.2 else self.gen.value()))
                elif k < 0.7:
                    ops.append(GetOp(ns, key))
                elif k < 0.85:
                    ops.append(SearchOp(self.gen.namespace()[: r.randint(0, 2)], r.choice([None] + FILTERS),
                                        limit=10**6))
                else:
                    ops.append(self.gen.list_op())
            if ops and isinstance(ops[0], PutOp) and r.random() < 0.5:
                ops.append(PutOp(ops[0].namespace, ops[0].key, self.gen.value()))
            # InMemoryStore's GetOp creates the (empty) namespace it reads, which a later
            # ListNamespacesOp of the same batch would list: listings go first.
            ops.sort(key=lambda op: not isinstance(op, ListNamespacesOp))
            got, want = await self.both("batch", ops)
            for op, g, w in zip(ops, got, want):
                if isinstance(op, GetOp):
                    assert plain(g) == plain(w), f"{where}: {op}"
                elif isinstance(op, SearchOp):
                    assert [plain(x) for x in g] == expected_search(w, 0, 10**6), f"{where}: {op}"
                else:
                    assert g == w, f"{where}: {op}"


async def run_differential(base_url: str, seed: int, n_ops: int, is_async: bool) -> dict:
    wipe(base_url)
    gen = Gen(seed)
    store = MnemoStore(base_url=base_url)
    ref = InMemoryStore()
    runner = Runner(store, ref, gen, is_async)
    try:
        for i in range(n_ops):
            await runner.step(i)
        # Finally everything: every item of the store, and every namespace.
        got = await runner.call(store, "search", (), limit=10**6)
        every = await runner.call(ref, "search", (), limit=10**6)
        assert [plain(x) for x in got] == expected_search(every, 0, 10**6)
        assert len(got) > 20, "the sequence should leave a populated store"
        _, want = await runner.both("list_namespaces", limit=10**6)
        assert await runner.call(store, "list_namespaces", limit=10**6) == want
    finally:
        if is_async:
            await store.aclose()
        else:
            store.close()
    return runner.counts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_differential_sync(diff_server, seed):
    counts = asyncio.run(run_differential(diff_server.base_url, seed, 300, is_async=False))
    assert set(counts) == {"put", "delete", "get", "search", "list", "batch"}


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_differential_async(diff_server, seed):
    counts = asyncio.run(run_differential(diff_server.base_url, seed, 300, is_async=True))
    assert set(counts) == {"put", "delete", "get", "search", "list", "batch"}


# --------------------------------------------------------------------------- storage details


def test_envelope_timestamps_and_foreign_keys(server, uid):
    store = MnemoStore(base_url=server.base_url)
    ns = (f"env-{uid}", "x")
    store.put(ns, "k", {"text": "first", "deep": {"a": [1, "two", None, True]}})
    first = store.get(ns, "k")
    store.put(ns, "k", {"text": "second"})
    second = store.get(ns, "k")
    assert second.value == {"text": "second"}
    assert second.created_at == first.created_at, "an overwrite keeps created_at"
    assert second.updated_at > first.updated_at
    # The stored form: one key per item, a JSON envelope with the value at value.embedding.
    rows = server.http.post("/v1/sql", json={
        "query": "SELECT key, content_type, value_json FROM memory WHERE starts_with(key, $1)",
        "params": [f"env-{uid}/"]}).json()["rows"]
    assert [(r[0], r[1]) for r in rows] == [(f"env-{uid}/x/k", CONTENT_TYPE)]
    # A key under the namespace written by someone else is not an item.
    server.http.put(f"/v1/kv/env-{uid}/x/plain", content=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert store.get(ns, "plain") is None
    assert [i.key for i in store.search(ns)] == ["k"]
    assert store.list_namespaces(prefix=(f"env-{uid}",)) == [ns]


def test_limits_are_clear_errors(server, uid):
    store = MnemoStore(base_url=server.base_url)
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        store.put((f"lim-{uid}",), "big", {"blob": "x" * 70_000})
    with pytest.raises(ValueError, match="at most 1024 bytes"):
        store.put((f"lim-{uid}",), "/" * 400, {"a": 1})  # 400 chars, 1200 bytes escaped
    with pytest.raises(InvalidNamespaceError, match="user label"):
        store.put(("users", "a/b", "x"), "k", {"a": 1})
    with pytest.raises(ValueError, match="not JSON-serializable"):
        store.put((f"lim-{uid}",), "nan", {"a": float("nan")})
    with pytest.raises(ValueError, match="ttl"):
        store.put((f"lim-{uid}",), "t", {"a": 1}, ttl=-1)
    assert store.search((f"lim-{uid}",)) == []


def test_requests_per_batch(server, uid):
    """Many items are read and written in a few requests, not one per item."""
    seen: list[str] = []
    client = httpx.Client(timeout=30, event_hooks={"request": [lambda r: seen.append(f"{r.method} {r.url.path}")]})
    store = MnemoStore(base_url=server.base_url, http_client=client)
    root = f"req-{uid}"
    puts = [PutOp((root, f"n{i % 7}"), f"k{i}", {"i": i}) for i in range(230)]
    store.batch(puts)
    # One SQL read (ETags and created_at) per 50 keys, one atomic batch per 100 operations.
    assert seen.count("POST /v1/sql") == 5 and seen.count("POST /v1/kv/batch") == 3, seen
    seen.clear()
    assert len(store.search((root,), limit=300)) == 230
    assert len(store.search((root,), filter={"i": {"$gte": 200}}, limit=300)) == 30
    assert len(store.list_namespaces(prefix=(root,))) == 7
    got = store.batch([GetOp((root, f"n{i % 7}"), f"k{i}") for i in range(0, 230, 5)])
    assert [g.value["i"] for g in got] == list(range(0, 230, 5))
    assert seen == ["POST /v1/sql"] * 4, seen
    client.close()


# --------------------------------------------------------------------------- TTL


def expires_at(server, key: str) -> Optional[str]:
    rows = server.http.post("/v1/sql", json={"query": "SELECT expires_at FROM memory WHERE key = $1",
                                             "params": [key]}).json()["rows"]
    return rows[0][0] if rows else None


def test_ttl_expires_and_refresh_extends(server, uid):
    store = MnemoStore(base_url=server.base_url)
    ns = (f"ttl-{uid}",)
    ttl = 0.1  # minutes: 6 s (mnemo's TTLs are whole seconds)
    store.put(ns, "kept", {"v": 1}, ttl=ttl)
    store.put(ns, "left", {"v": 2}, ttl=ttl)
    store.put(ns, "forever", {"v": 3})
    assert expires_at(server, memory_key(ns, "left")) is not None
    assert expires_at(server, memory_key(ns, "forever")) is None
    kept_before = expires_at(server, memory_key(ns, "kept"))

    # `kept` is read with refresh_ttl (the default) at every poll, `left` is never refreshed:
    # `kept` outlives `left`, put after it with the same TTL.
    def left_gone() -> bool:
        assert store.get(ns, "kept") is not None, "a refreshed item expired"
        return store.get(ns, "left", refresh_ttl=False) is None

    poll(left_gone, "the unrefreshed item to expire", interval=0.25)
    assert expires_at(server, memory_key(ns, "kept")) > kept_before
    assert store.get(ns, "forever").value == {"v": 3}
    assert [i.key for i in store.search(ns)] == ["forever", "kept"]
    assert store.list_namespaces(prefix=ns) == [ns]

    # Read only with refresh_ttl=False, `kept` expires; then it is gone from every read.
    poll(lambda: not [i for i in store.search(ns, refresh_ttl=False) if i.key == "kept"],
         "the item to expire once no longer refreshed", interval=0.25)
    assert store.get(ns, "kept") is None

    # search refreshes too, and a put without ttl removes the expiry.
    store.put(ns, "s", {"v": 4}, ttl=ttl)
    before = expires_at(server, memory_key(ns, "s"))
    poll(lambda: (store.search(ns), expires_at(server, memory_key(ns, "s")) > before)[1],
         "search to refresh the TTL", interval=0.25)
    store.put(ns, "s", {"v": 5})
    assert expires_at(server, memory_key(ns, "s")) is None
    # A fractional minute is rounded up to whole seconds: 0.05 minutes is 3 s.
    store.put(ns, "short", {"v": 6}, ttl=0.05)
    (exp, upd), = server.http.post("/v1/sql", json={
        "query": "SELECT expires_at, updated_at FROM memory WHERE key = $1",
        "params": [memory_key(ns, "short")]}).json()["rows"]
    assert datetime.fromisoformat(exp.replace("Z", "+00:00")) - datetime.fromisoformat(upd.replace("Z", "+00:00")) \
        == timedelta(seconds=3)


def test_ttl_config_default(server, uid):
    async def main():
        async with MnemoStore(base_url=server.base_url, ttl={"default_ttl": 60, "refresh_on_read": False}) as s:
            await s.aput((f"ttlc-{uid}",), "k", {"v": 1})
            await s.aput((f"ttlc-{uid}",), "n", {"v": 1}, ttl=None)
            before = expires_at(server, memory_key((f"ttlc-{uid}",), "k"))
            assert before is not None
            assert expires_at(server, memory_key((f"ttlc-{uid}",), "n")) is None
            assert (await s.aget((f"ttlc-{uid}",), "k")).value == {"v": 1}
            assert expires_at(server, memory_key((f"ttlc-{uid}",), "k")) == before, "refresh_on_read=False"

    asyncio.run(main())


# --------------------------------------------------------------------------- isolation


def test_user_isolation(server, uid):
    alice_id, bob_id = f"alice-{uid}", f"bob-{uid}"
    alice = MnemoStore(base_url=server.base_url, user=alice_id)
    bob = MnemoStore(base_url=server.base_url, user=bob_id)
    app = MnemoStore(base_url=server.base_url)
    mine = ("users", alice_id, "prefs")
    alice.put(mine, "theme", {"text": f"dark theme secret{uid}"})
    app.put((f"shared-{uid}",), "k", {"text": f"shared note{uid}"})

    assert alice.get(mine, "theme").value["text"].startswith("dark")
    assert app.get(mine, "theme") is not None, "the whole tenant sees every user's space"
    assert bob.get(mine, "theme") is None
    assert bob.search(("users", alice_id)) == []
    assert bob.search(("users",)) == []
    assert bob.search((), query=f"secret{uid}") == []
    assert alice.search((), query=f"secret{uid}")[0].key == "theme"
    assert ("users", alice_id, "prefs") not in bob.list_namespaces(prefix=("users",))
    assert alice.list_namespaces(prefix=("users",)) == [mine]
    with pytest.raises(MnemoError) as e:
        bob.put(mine, "theme", {"text": "overwritten"})
    assert e.value.status == 403
    with pytest.raises(MnemoError):
        bob.delete(mine, "theme")
    assert alice.get(mine, "theme").value["text"].startswith("dark")
    # Both read the tenant's shared namespaces.
    assert bob.get((f"shared-{uid}",), "k").value == {"text": f"shared note{uid}"}
    assert [i.key for i in alice.search((f"shared-{uid}",))] == ["k"]


@pytest.fixture(scope="module")
def jwt_world():
    p = IdentityProvider().start()
    srv = start("mnemo-lg-jwt", p.server_args())
    yield p, srv
    srv.close()
    p.stop()


def test_tenant_isolation(jwt_world, uid):
    p, srv = jwt_world
    roles = ["Memory.ReadWrite", "Search"]
    x = MnemoStore(base_url=srv.base_url, api_key=p.app(roles, tenant="tenant-x"))
    y = MnemoStore(base_url=srv.base_url, api_key=p.app(roles, tenant="tenant-y"))
    ns = (f"t-{uid}",)
    x.put(ns, "k", {"text": f"tenant x secret{uid}"})
    assert x.get(ns, "k") is not None
    assert y.get(ns, "k") is None
    assert y.search(ns) == [] and y.search((), query=f"secret{uid}") == []
    assert ns not in y.list_namespaces()
    y.put(ns, "k", {"text": "tenant y"})
    assert x.get(ns, "k").value == {"text": f"tenant x secret{uid}"}
    assert [i.value for i in y.search(ns)] == [{"text": "tenant y"}]
    # A user token acts for its subject: its own space is writable, another user's is not.
    carol = MnemoStore(base_url=srv.base_url,
                       api_key=p.user(f"carol-{uid}", tenant="tenant-x", scp="Memory.ReadWrite Search"))
    carol.put(("users", f"carol-{uid}"), "n", {"text": "note"})
    assert x.search(("users", f"carol-{uid}"))[0].key == "n"
    with pytest.raises(MnemoError) as e:
        carol.put(("users", f"dave-{uid}"), "n", {"text": "note"})
    assert e.value.status == 403
    dave = MnemoStore(base_url=srv.base_url,
                      api_key=p.user(f"carol-{uid}", tenant="tenant-y", scp="Memory.ReadWrite Search"))
    assert dave.get(("users", f"carol-{uid}"), "n") is None, "the same user id in another tenant"


# --------------------------------------------------------------------------- natural-language queries


def test_query_by_words(server, uid):
    store = MnemoStore(base_url=server.base_url)
    root = f"q-{uid}"
    store.put((root, "travel"), "lisbon", {"text": "Flight to Lisbon booked for May", "n": 1})
    store.put((root, "home"), "garden", {"text": "Water the tomatoes every morning", "n": 2})
    store.put((root, "home"), "hidden", {"text": "Lisbon tomatoes hidden"}, index=False)
    store.put((root, "work"), "report", {"title": "Quarterly report", "body": "Lisbon office numbers"},
              index=["title"])
    store.put((root, "work"), "nested", {"meta": {"title": "Budget"}, "notes": ["alpha", "Lisbon"]},
              index=["notes[*]"])

    hits = store.search((root,), query="flight")
    assert [h.key for h in hits] == ["lisbon"] and isinstance(hits[0].score, float) and hits[0].score > 0
    assert {h.key for h in store.search((root,), query="lisbon")} == {"lisbon", "nested"}, \
        "index=False and unindexed fields are not found"
    assert [h.key for h in store.search((root,), query="quarterly")] == ["report"]
    assert store.search((root,), query="office") == []
    assert store.search((root,), query="hidden") == []
    assert [h.key for h in store.search((root, "home"), query="tomatoes")] == ["garden"]
    assert store.search((root, "travel"), query="tomatoes") == []
    assert [h.key for h in store.search((root,), query="lisbon", filter={"n": 1})] == ["lisbon"]
    page = store.search((root,), query="lisbon", limit=1, offset=1)
    assert len(page) == 1 and page[0].key == store.search((root,), query="lisbon")[1].key


@pytest.mark.skipif(not MODEL_DIR, reason="MNEMO_MODEL_DIR is not set (the built-in embedding model)")
def test_query_by_meaning(uid):
    srv = start("mnemo-lg-embed", ["--embedding-model", MODEL_DIR])
    try:
        async def main():
            async with MnemoStore(base_url=srv.base_url, search_mode="vector", search_consistency="strong") as s:
                ns = ("users", f"u-{uid}", "memories")
                facts = {
                    "trip": "Flying into Portugal's capital next week",
                    "cat": "My cat knocked the vase off the kitchen table",
                    "tax": "The quarterly revenue report is due on Friday",
                    "garden": "Water the tomatoes in the garden every morning",
                }
                await s.abatch([PutOp(ns, k, {"memory": v}) for k, v in facts.items()]
                               + [PutOp(ns, "off", {"memory": "Vacation in Lisbon, Portugal"}, index=False)])
                hits = await s.asearch(ns, query="trip to Lisbon")
                assert hits[0].key == "trip", [(h.key, h.score) for h in hits]
                assert "off" not in {h.key for h in hits}
                assert hits[0].score > hits[-1].score
                hits = await s.asearch(ns, query="pet animal breaking things", limit=1)
                assert [h.key for h in hits] == ["cat"]
            # The default mode, hybrid, ranks by meaning too when the server has the model.
            async with MnemoStore(base_url=srv.base_url, search_consistency="strong") as s:
                assert (await s.asearch(ns, query="trip to Lisbon"))[0].key == "trip"

        asyncio.run(main())
    finally:
        srv.close()


# --------------------------------------------------------------------------- in a graph


def test_graph_with_store(server, uid):
    """The store given to a compiled graph is the one its nodes read and write."""

    class State(TypedDict):
        user: str
        fact: str
        recalled: list

    def remember(state: State, *, store: BaseStore) -> dict:
        store.put(("users", state["user"], "facts"), state["fact"][:8], {"text": state["fact"]})
        return {}

    def recall(state: State, *, store: BaseStore) -> dict:
        hits = store.search(("users", state["user"], "facts"), query="coffee")
        return {"recalled": [h.value["text"] for h in hits]}

    g = StateGraph(State)
    g.add_node("remember", remember)
    g.add_node("recall", recall)
    g.add_edge(START, "remember")
    g.add_edge("remember", "recall")
    g.add_edge("recall", END)
    user = f"g-{uid}"
    with MnemoStore(base_url=server.base_url, user=user) as store:
        graph = g.compile(store=store)
        graph.invoke({"user": user, "fact": "likes coffee without sugar", "recalled": []})
        out = graph.invoke({"user": user, "fact": "walks the dog at noon", "recalled": []})
        assert out["recalled"] == ["likes coffee without sugar"]

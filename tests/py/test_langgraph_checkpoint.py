"""`mnemo_client.langgraph_checkpoint.MnemoSaver`, a LangGraph checkpointer over mnemo's memory.

The public conformance suite (`langgraph-checkpoint-conformance`), a compiled `StateGraph`
(sync and async, with an interrupt), concurrent writers on one thread, chunked checkpoints
and writes, the batch-size limit, multi-batch `put_writes`, SQL answers truncated by
`--sql-max-rows`, run index / copy / DeltaChannel-aware prune, and user × user isolation."""
from __future__ import annotations

import asyncio
import json
import operator
import os
import threading
from typing import Annotated, Any, Optional
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES, EXTENDED_CAPABILITIES
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from conftest import MnemoServer
from mnemo_client.langgraph_checkpoint import CheckpointTooLargeError, MnemoSaver

CHUNK = 65_536


def saver_for(server: MnemoServer, uid: str, **kw: Any) -> MnemoSaver:
    return MnemoSaver(base_url=server.base_url, prefix=f"lgcp-{uid}", **kw)


def sql(server: MnemoServer, query: str, params: list, user: Optional[str] = None) -> list:
    headers = {"X-Mnemo-User": user} if user else {}
    r = httpx.post(f"{server.base_url}/v1/sql", json={"query": query, "params": params}, headers=headers)
    assert r.status_code == 200, r.text
    assert not r.json()["truncated"]
    return r.json()["rows"]


def keys_under(server: MnemoServer, prefix: str, user: Optional[str] = None) -> list[str]:
    return [r[0] for r in sql(server, "SELECT key FROM memory WHERE starts_with(key, $1)", [prefix], user)]


def put(saver: MnemoSaver, thread: str, *, parent: Optional[str] = None, ns: str = "",
        values: Optional[dict] = None, cid: Optional[str] = None, **meta: Any) -> dict:
    cfg = generate_config(thread, checkpoint_ns=ns)
    if parent:
        cfg["configurable"]["checkpoint_id"] = parent
    values = values or {}
    cp = generate_checkpoint(checkpoint_id=cid, channel_values=values,
                             channel_versions={k: 1 for k in values})
    return saver.put(cfg, cp, generate_metadata(**meta), {k: 1 for k in values})


def cid_of(cfg: dict) -> str:
    return cfg["configurable"]["checkpoint_id"]


# --------------------------------------------------------------------------- conformance


def test_conformance_suite(server, uid):
    """Every base capability of the public suite passes; so do the optional ones."""

    @checkpointer_test(name="MnemoSaver")
    async def fresh_saver():
        saver = MnemoSaver(base_url=server.base_url, prefix=f"lgcp-conf-{uid}-{uuid4().hex[:8]}")
        yield saver
        await saver.aclose()

    report = asyncio.run(validate(fresh_saver))
    report.print_report()
    for name, result in sorted(report.results.items()):
        print(f"{name}: detected={result.detected} passed={result.passed} "
              f"({result.tests_passed} passed, {result.tests_failed} failed) {result.failures}")
    assert report.passed_all_base(), report.to_dict()
    for cap in BASE_CAPABILITIES | EXTENDED_CAPABILITIES:
        assert report.results[cap.value].passed is True, (cap, report.to_dict())


# --------------------------------------------------------------------------- a real graph


class LogState(TypedDict):
    log: Annotated[list, operator.add]


def build_graph() -> StateGraph:
    def first(state: LogState) -> dict:
        return {"log": ["first"]}

    def review(state: LogState) -> dict:
        answer = interrupt("approve?")
        return {"log": [f"review:{answer}"]}

    g = StateGraph(LogState)
    g.add_node("first", first)
    g.add_node("review", review)
    g.add_edge(START, "first")
    g.add_edge("first", "review")
    g.add_edge("review", END)
    return g


def test_state_graph_sync(server, uid):
    """Two runs on one thread accumulate state; an interrupt resumes; history is complete."""
    saver = saver_for(server, uid)
    graph = build_graph().compile(checkpointer=saver)
    cfg = {"configurable": {"thread_id": f"chat-{uid}"}}

    out = graph.invoke({"log": ["hello"]}, cfg)
    assert out["log"] == ["hello", "first"] and out["__interrupt__"][0].value == "approve?"
    assert graph.get_state(cfg).next == ("review",)
    assert graph.invoke(Command(resume="yes"), cfg)["log"] == ["hello", "first", "review:yes"]

    # A second run on the same thread, through a new saver (another process, same data).
    graph2 = build_graph().compile(checkpointer=saver_for(server, uid))
    graph2.invoke({"log": ["again"]}, cfg)
    final = graph2.invoke(Command(resume="no"), cfg)
    assert final["log"] == ["hello", "first", "review:yes", "again", "first", "review:no"]
    assert graph2.get_state(cfg).values["log"] == final["log"]

    history = list(graph2.get_state_history(cfg))
    assert [s.metadata["step"] for s in history] == [6, 5, 4, 3, 2, 1, 0, -1]
    ids = [s.config["configurable"]["checkpoint_id"] for s in history]
    assert ids == sorted(ids, reverse=True)
    for newer, older in zip(history, history[1:]):
        assert newer.parent_config["configurable"]["checkpoint_id"] == older.config["configurable"]["checkpoint_id"]
    assert history[-1].parent_config is None

    # Time travel: state as of an older checkpoint.
    past = graph2.get_state(history[3].config)
    assert past.values["log"] == ["hello", "first", "review:yes"]

    # The heads list newest first under one prefix (the documented layout).
    heads = keys_under(server, f"lgcp-{uid}/t/chat-{uid}/~/c/")
    assert len(heads) == 8
    first_key = httpx.get(f"{server.base_url}/v1/kv",
                          params={"prefix": f"lgcp-{uid}/t/chat-{uid}/~/c/", "limit": 1}).json()["data"][0]["key"]
    head = json.loads(httpx.get(f"{server.base_url}/v1/kv/{quote(first_key, safe='')}").content)
    assert head["checkpoint_id"] == ids[0]

    saver.delete_thread(f"chat-{uid}")
    assert saver.get_tuple(cfg) is None
    assert keys_under(server, f"lgcp-{uid}/") == []


def test_state_graph_async(server, uid):
    async def main() -> None:
        async with saver_for(server, uid) as saver:
            graph = build_graph().compile(checkpointer=saver)
            cfg = {"configurable": {"thread_id": f"achat-{uid}"}}
            out = await graph.ainvoke({"log": ["hi"]}, cfg)
            assert "__interrupt__" in out
            tup = await saver.aget_tuple(cfg)
            assert any(w[1] == "__interrupt__" for w in tup.pending_writes)
            out = await graph.ainvoke(Command(resume="ok"), cfg)
            assert out["log"] == ["hi", "first", "review:ok"]
            steps = [s.metadata["step"] async for s in graph.aget_state_history(cfg)]
            assert steps == [2, 1, 0, -1]

    asyncio.run(main())


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_on_one_thread(server, uid):
    """Three writers (three savers, as three processes) put chains on one thread, overwrite
    the same checkpoint ids with different chunked content and race on one pending write,
    while a reader keeps reading: every read sees whole checkpoints, one value wins each
    race, and no chunk is left over."""
    thread = f"busy-{uid}"
    writers = 3
    savers = [saver_for(server, uid) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    done = threading.Event()
    errors: list[BaseException] = []
    chains: dict[int, list[tuple[str, dict]]] = {w: [] for w in range(writers)}
    race_ids = [str(uuid6(clock_seq=i)) for i in range(8)]
    # Each writer's race value takes another number of chunks (3, 2, 1): a mix of two
    # values, or a chunk left from an older one, shows.
    race_values = {0: os.urandom(2 * CHUNK + 100), 1: os.urandom(CHUNK + 100), 2: os.urandom(60_000)}
    chunk_counts = {0: 3, 1: 2, 2: 1}
    reads = [0]

    def writer(w: int) -> None:
        saver = savers[w]
        try:
            barrier.wait()
            parent = None
            for i in range(5):
                values = {"who": f"w{w}-{i}", "big": os.urandom(CHUNK + 1) if i % 3 == 0 else b""}
                cfg = put(saver, thread, parent=parent, values=values, step=i, writer=w)
                saver.put_writes(cfg, [("out", f"w{w}-{i}")], f"task-w{w}-{i}")
                chains[w].append((cid_of(cfg), values))
                parent = cid_of(cfg)
            for cid in race_ids:
                barrier.wait()
                cfg = put(saver, thread, cid=cid, values={"race": race_values[w]}, step=99, writer=w)
                barrier.wait()
                saver.put_writes(cfg, [("vote", f"w{w}")], "same-task")
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    def reader() -> None:
        saver = saver_for(server, uid)
        try:
            while not done.is_set():
                for cid in race_ids:
                    tup = saver.get_tuple(generate_config(thread, checkpoint_id=cid))
                    if tup is not None:
                        assert tup.checkpoint["channel_values"]["race"] == race_values[tup.metadata["writer"]]
                for tup in saver.list(generate_config(thread), limit=5):
                    assert tup.checkpoint["id"] == cid_of(tup.config)
                reads[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    watcher.join(60)
    assert not errors, errors
    assert reads[0] >= 1

    saver = saver_for(server, uid)
    listed = list(saver.list({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}))
    ids = [t.config["configurable"]["checkpoint_id"] for t in listed]
    expected = {cid for w in chains for cid, _v in chains[w]} | set(race_ids)
    assert sorted(ids, reverse=True) == ids and set(ids) == expected and len(ids) == len(expected)
    assert saver.get_tuple({"configurable": {"thread_id": thread}}).config["configurable"]["checkpoint_id"] == ids[0]

    by_id = {t.config["configurable"]["checkpoint_id"]: t for t in listed}
    for w in chains:
        for i, (cid, values) in enumerate(chains[w]):
            tup = by_id[cid]
            assert tup.checkpoint["channel_values"] == values
            assert tup.pending_writes == [(f"task-w{w}-{i}", "out", f"w{w}-{i}")]
    for cid in race_ids:
        tup = by_id[cid]
        winner = tup.metadata["writer"]
        assert tup.checkpoint["channel_values"] == {"race": race_values[winner]}
        # Exactly one pending write for the contended (task, idx); any writer may win.
        assert len(tup.pending_writes) == 1 and tup.pending_writes[0][:2] == ("same-task", "vote")
        chunks = keys_under(server, saver._layout.data(thread, "", cid) + "checkpoint/")
        assert len(chunks) == chunk_counts[winner], (winner, chunks)


def test_concurrent_async_puts(server, uid):
    """Tasks of one event loop putting on one thread at once (async saver, shared client)."""
    thread = f"async-busy-{uid}"
    shared = str(uuid6(clock_seq=0))
    values = [os.urandom(60_000 + i * CHUNK) for i in range(4)]  # 1, 2, 3, 4 chunks

    async def main() -> None:
        async with saver_for(server, uid) as saver:
            async def one(i: int) -> str:
                cp = generate_checkpoint(channel_values={"i": i}, channel_versions={"i": 1})
                cfg = await saver.aput(generate_config(thread), cp, generate_metadata(step=i), {"i": 1})
                await saver.aput_writes(cfg, [("ch", i)], f"task-{i}")
                return cid_of(cfg)

            async def race(i: int) -> None:
                cp = generate_checkpoint(checkpoint_id=shared, channel_values={"v": values[i]},
                                         channel_versions={"v": 1})
                await saver.aput(generate_config(thread), cp, generate_metadata(step=100 + i), {"v": 1})

            ids = await asyncio.gather(*(one(i) for i in range(12)), *(race(i) for i in range(4)))
            listed = [t async for t in saver.alist(generate_config(thread))]
            assert {cid_of(t.config) for t in listed} == {*ids[:12], shared} and len(listed) == 13
            for t in listed:
                if cid_of(t.config) == shared:
                    winner = t.metadata["step"] - 100
                    assert t.checkpoint["channel_values"] == {"v": values[winner]}
                    chunks = keys_under(server, saver._layout.data(thread, "", shared) + "checkpoint/")
                    assert len(chunks) == winner + 1, chunks
                else:
                    i = t.checkpoint["channel_values"]["i"]
                    assert t.pending_writes == [(f"task-{i}", "ch", i)]
            await saver.adelete_thread(thread)
            assert await saver.aget_tuple(generate_config(thread)) is None

    asyncio.run(main())


def test_put_writes_first_write_wins_and_special_writes_replace(server, uid):
    saver = saver_for(server, uid)
    cfg = put(saver, f"w-{uid}")
    saver.put_writes(cfg, [("a", 1), ("b", 2)], "t1")
    saver.put_writes(cfg, [("a", "changed"), ("b", "changed")], "t1")  # a retry: kept as first
    saver.put_writes(cfg, [("__error__", "boom" * 20_000)], "t1")  # chunked special write
    saver.put_writes(cfg, [("__error__", "second")], "t1")  # replaces it, chunks removed
    assert saver.get_tuple(cfg).pending_writes == [("t1", "__error__", "second"), ("t1", "a", 1), ("t1", "b", 2)]
    error_key = saver._layout.write(f"w-{uid}", "", cid_of(cfg), "t1", -1)
    assert keys_under(server, error_key) == [error_key]


# --------------------------------------------------------------------------- sizes


def test_large_checkpoint_is_chunked(server, uid):
    saver = saver_for(server, uid)
    thread = f"big-{uid}"
    big = os.urandom(5 * CHUNK + 123)
    cfg = put(saver, thread, values={"big": big, "small": "x"})
    tup = saver.get_tuple(cfg)
    assert tup.checkpoint["channel_values"] == {"big": big, "small": "x"}

    head_key = saver._layout.head(thread, "", cid_of(cfg))
    rows = sql(server, "SELECT key, size FROM memory WHERE starts_with(key, $1)", [f"lgcp-{uid}/t/{thread}/"])
    sizes = dict((k, s) for k, s in rows)
    chunks = sorted(k for k in sizes if "/checkpoint/" in k)
    assert len(chunks) == 6 and all(sizes[k] <= CHUNK for k in chunks)
    assert sum(sizes[k] for k in chunks) > len(big) and sizes[head_key] < 2_000

    # The same id again with smaller content: replaced whole, surplus chunks deleted.
    cp = generate_checkpoint(checkpoint_id=cid_of(cfg), channel_values={"big": big[: 2 * CHUNK]},
                             channel_versions={"big": 2})
    saver.put(generate_config(thread), cp, generate_metadata(), {"big": 2})
    assert saver.get_tuple(cfg).checkpoint["channel_values"] == {"big": big[: 2 * CHUNK]}
    assert len([k for k in keys_under(server, f"lgcp-{uid}/t/{thread}/") if "/checkpoint/" in k]) == 3

    # A pending write larger than one value.
    saver.put_writes(cfg, [("blob", big)], "task")
    assert saver.get_tuple(cfg).pending_writes == [("task", "blob", big)]


def test_too_large_checkpoint_is_rejected_whole(server, uid):
    saver = saver_for(server, uid)
    thread = f"huge-{uid}"
    cfg = put(saver, thread, values={"v": "small"})
    with pytest.raises(CheckpointTooLargeError, match="atomic mnemo batch"):
        put(saver, thread, parent=cid_of(cfg), values={"v": os.urandom(900_000)})
    assert len(list(saver.list(generate_config(thread)))) == 1
    assert all("/checkpoint/" not in k for k in keys_under(server, f"lgcp-{uid}/t/{thread}/"))
    # Just under the limit fits.
    ok = put(saver, thread, parent=cid_of(cfg), values={"v": os.urandom(740_000)})
    assert len(saver.get_tuple(ok).checkpoint["channel_values"]["v"]) == 740_000


def test_put_writes_over_several_batches(server, uid):
    """A call with more writes than one batch holds shows only once all of it is stored."""
    saver = saver_for(server, uid)
    thread = f"fan-{uid}"
    cfg = put(saver, thread)
    writes = [("__pregel_tasks", {"n": i}) for i in range(250)]
    saver.put_writes(cfg, writes, "fan-out")
    got = saver.get_tuple(cfg).pending_writes
    assert [w[2]["n"] for w in got] == list(range(250))

    # Lose one write of the group (as a crash between batches would): none of it shows.
    lost = saver._layout.write(thread, "", cid_of(cfg), "fan-out", 137)
    assert httpx.delete(f"{server.base_url}/v1/kv/{quote(lost, safe='')}").status_code == 200
    assert saver.get_tuple(cfg).pending_writes == []
    saver.put_writes(cfg, writes, "fan-out")  # the retry completes the group
    assert len(saver.get_tuple(cfg).pending_writes) == 250


# --------------------------------------------------------------------------- listing


def test_list_pages_namespaces_and_all_threads(server, uid):
    saver = saver_for(server, uid)
    thread = f"long-{uid}"
    parent = None
    ids = []
    for i in range(45):
        cfg = put(saver, thread, parent=parent, step=i, parity=i % 2)
        parent = cid_of(cfg)
        ids.append(parent)
    child = put(saver, thread, ns="sub:1", step=0)
    other = put(saver, f"other-{uid}", step=0)
    newest_first = list(reversed(ids))
    root = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}

    assert [cid_of(t.config) for t in saver.list(root)] == newest_first
    assert [cid_of(t.config) for t in saver.list(root, limit=30)] == newest_first[:30]
    before = {"configurable": {"checkpoint_id": ids[25]}}
    assert [cid_of(t.config) for t in saver.list(root, before=before, limit=7)] == newest_first[20:27]
    odd = [cid_of(t.config) for t in saver.list(root, filter={"parity": 1}, limit=5)]
    assert odd == [i for n, i in enumerate(newest_first) if (44 - n) % 2 == 1][:5]
    assert [t.metadata["step"] for t in saver.list(root, filter={"step": 3})] == [3]
    # No namespace in the config: every namespace of the thread.
    every = list(saver.list({"configurable": {"thread_id": thread}}))
    assert len(every) == 46 and cid_of(child) in {cid_of(t.config) for t in every}
    # No config: every thread of the saver.
    everything = {cid_of(t.config) for t in saver.list(None)}
    assert everything == set(ids) | {cid_of(child), cid_of(other)}
    # One checkpoint by id.
    assert [cid_of(t.config) for t in saver.list(generate_config(thread, checkpoint_id=ids[3]))] == [ids[3]]

    async def alist() -> list[str]:
        async with saver_for(server, uid) as s:
            return [cid_of(t.config) async for t in s.alist(root, before=before)]

    assert asyncio.run(alist()) == newest_first[20:]


def test_reads_when_sql_answers_are_truncated(uid):
    """With --sql-max-rows 3 every read falls back to listing keys and reading them in parts."""
    srv = MnemoServer(name="mnemo-lgcp-rows", extra_args=["--sql-max-rows", "3"])
    srv.start()
    try:
        saver = saver_for(srv, uid)
        thread = "t"
        big = os.urandom(3 * CHUNK)
        parent = None
        for i in range(5):
            cfg = put(saver, thread, parent=parent, values={"big": big, "i": i}, step=i, run_id=f"run-{i % 2}")
            saver.put_writes(cfg, [(f"c{j}", j) for j in range(6)], f"task-{i}")
            parent = cid_of(cfg)
        tup = saver.get_tuple(generate_config(thread))
        assert tup.checkpoint["channel_values"] == {"big": big, "i": 4}
        assert [w[2] for w in tup.pending_writes] == list(range(6))
        assert [t.metadata["step"] for t in saver.list(generate_config(thread))] == [4, 3, 2, 1, 0]
        saver.delete_for_runs(["run-1"])
        assert [t.metadata["step"] for t in saver.list(generate_config(thread))] == [4, 2, 0]
        saver.delete_thread(thread)
        assert keys_under_all(srv, f"lgcp-{uid}/") == []
    finally:
        srv.close()


def keys_under_all(server: MnemoServer, prefix: str) -> list[str]:
    r = httpx.get(f"{server.base_url}/v1/kv", params={"prefix": prefix, "limit": 1000})
    return [d["key"] for d in r.json()["data"]]


# --------------------------------------------------------------------------- maintenance


def test_run_index_copy_and_delete_for_runs(server, uid):
    saver = saver_for(server, uid)
    src, dst = f"src-{uid}", f"dst-{uid}"
    a = put(saver, src, run_id="run-a", step=0)
    b = put(saver, src, parent=cid_of(a), run_id="run-b", step=1)
    saver.put_writes(b, [("ch", "v")], "task")
    # The same id again under another run: the old run's index entry goes with it.
    cp = generate_checkpoint(checkpoint_id=cid_of(a))
    saver.put(generate_config(src), cp, generate_metadata(run_id="run-c", step=0), {})
    saver.delete_for_runs(["run-a"])
    assert len(list(saver.list(generate_config(src)))) == 2

    saver.copy_thread(src, dst)
    copied = saver.get_tuple(generate_config(dst))
    assert cid_of(copied.config) == cid_of(b) and copied.pending_writes == [("task", "ch", "v")]
    saver.delete_for_runs(["run-b"])  # in both threads
    assert [t.metadata["run_id"] for t in saver.list(generate_config(src))] == ["run-c"]
    assert [t.metadata["run_id"] for t in saver.list(generate_config(dst))] == ["run-c"]
    saver.delete_thread(src)
    saver.delete_thread(dst)
    assert keys_under(server, f"lgcp-{uid}/") == []  # heads, data and run index entries


def test_prune_keeps_ancestors_of_delta_channels(server, uid):
    """keep_latest keeps the ancestors a delta channel is rebuilt from (back to its last
    stored value), and only those."""
    saver = saver_for(server, uid)
    thread = f"delta-{uid}"
    c0 = put(saver, thread, step=0)
    c1 = put(saver, thread, parent=cid_of(c0), values={"d": "snapshot"}, step=1)
    c2 = put(saver, thread, parent=cid_of(c1), step=2, counters_since_delta_snapshot={"d": (1, 1)})
    c3 = put(saver, thread, parent=cid_of(c2), step=3, counters_since_delta_snapshot={"d": (2, 2)})
    saver.put_writes(c1, [("d", "delta-1")], "t1")
    saver.prune([thread])
    kept = [cid_of(t.config) for t in saver.list(generate_config(thread))]
    assert kept == [cid_of(c3), cid_of(c2), cid_of(c1)]
    assert saver.get_tuple(c1).pending_writes == [("t1", "d", "delta-1")]
    assert not [k for k in keys_under(server, f"lgcp-{uid}/t/{thread}/") if saver._layout.data(thread, "", cid_of(c0)) in k]

    # Without delta counters only the latest stays.
    c4 = put(saver, thread, parent=cid_of(c3), step=4)
    saver.prune([thread], strategy="keep_latest")
    assert [cid_of(t.config) for t in saver.list(generate_config(thread))] == [cid_of(c4)]
    with pytest.raises(ValueError):
        saver.prune([thread], strategy="oldest")


# --------------------------------------------------------------------------- isolation


def test_user_isolation(server, uid):
    """Checkpoints of user b live under users/b/: a saver acting for user a never sees them."""
    alice = saver_for(server, uid, user=f"a-{uid}")
    bob = saver_for(server, uid, user=f"b-{uid}")
    thread = "shared-thread-name"
    b1 = put(bob, thread, values={"secret": "bob's"})
    bob.put_writes(b1, [("ch", "bob")], "task")

    assert alice.get_tuple(generate_config(thread)) is None
    assert alice.get_tuple(generate_config(thread, checkpoint_id=cid_of(b1))) is None
    assert list(alice.list(generate_config(thread))) == []
    assert list(alice.list(None)) == []

    a1 = put(alice, thread, values={"secret": "alice's"})
    alice.delete_thread(thread)  # deletes alice's thread only
    alice.prune([thread], strategy="delete")
    alice.delete_for_runs(["any"])
    assert alice.get_tuple(a1) is None
    tup = bob.get_tuple(generate_config(thread))
    assert tup.checkpoint["channel_values"] == {"secret": "bob's"} and tup.pending_writes == [("task", "ch", "bob")]

    bob_keys = keys_under(server, f"users/b-{uid}/", user=f"b-{uid}")
    assert bob_keys and all(k.startswith(f"users/b-{uid}/lgcp-{uid}/t/") for k in bob_keys)
    # Acting for alice, the server shows none of bob's keys.
    assert keys_under(server, f"users/b-{uid}/", user=f"a-{uid}") == []
    # Nor does the tenant's shared space hold anything of theirs.
    assert keys_under(server, f"lgcp-{uid}/") == []

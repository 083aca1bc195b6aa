"""The built-in embedder in the server (`mnemo serve --embedding-model DIR`): text-only vector
and hybrid queries find items and memory by meaning, `consistency: strong` waits for background
embedding, client vectors are kept (never re-embedded), a tenant with vectors of another
dimension gets 400 for text-only vector queries, and after a kill -9 during background
embedding a restart embeds only what was not embedded before.

Needs the model: env MNEMO_MODEL_DIR (scripts/test.sh sets it from scripts/fetch-model.sh)."""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid

import pytest

from conftest import MnemoServer, start_server

MODEL_DIR = os.environ.get("MNEMO_MODEL_DIR")
pytestmark = pytest.mark.skipif(
    not MODEL_DIR,
    reason="MNEMO_MODEL_DIR is not set: run scripts/fetch-model.sh and export the directory it prints")

DIM = 384
TRAVEL = "Flying into Portugal's capital next week"
DISTRACTORS = [
    "My cat knocked the vase off the kitchen table",
    "The quarterly revenue report is due on Friday",
    "Water the tomatoes in the garden every morning",
    "The printer on the third floor is out of toner",
]
QUERY = "trip to Lisbon"


def start_embedding_server(name: str) -> MnemoServer:
    return start_server(name, ["--embedding-model", MODEL_DIR])


@pytest.fixture(scope="module")
def esrv():
    srv = start_embedding_server("mnemo-embed")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def fresh_esrv():
    srv = start_embedding_server("mnemo-embed-fn")
    try:
        yield srv
    finally:
        srv.close()


def msg(text, role="user", embedding=None):
    m = {"type": "message", "role": role, "content": text}
    if embedding is not None:
        m["embedding"] = embedding
    return m


def search(http, body, user=None, status=200):
    headers = {"X-Mnemo-User": user} if user else {}
    r = http.post("/v1/search", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def strong_search(http, body, user=None, deadline_s=120.0):
    """A strong search, retried while it answers 503 index_behind (background embedding of a
    large backlog may take longer than one search's 10 s wait)."""
    body = dict(body, consistency="strong")
    headers = {"X-Mnemo-User": user} if user else {}
    deadline = time.monotonic() + deadline_s
    while True:
        r = http.post("/v1/search", json=body, headers=headers, timeout=30.0)
        if r.status_code == 503 and r.json()["error"].get("code") == "index_behind" \
                and time.monotonic() < deadline:
            continue
        assert r.status_code == 200, r.text
        return r.json()["data"]


def metric(srv, name: str) -> float:
    """Sum of every sample of a metric (all label sets) on /metrics."""
    text = srv.http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m and m.group(1) == name:
            total += float(m.group(3))
    return total


def words(text: str) -> set:
    return set(re.findall(r"\w+", text.lower()))


def rand_unit(rng, dim):
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def test_text_only_vector_and_hybrid_queries_find_meaning(esrv, uid):
    user = f"mean-{uid}"
    assert not words(QUERY) & words(" ".join([TRAVEL] + DISTRACTORS)), "the query must share no word"
    c = esrv.make_openai(default_headers={"X-Mnemo-User": user})
    conv = c.conversations.create(items=[msg(t) for t in DISTRACTORS[:2]])
    travel = c.conversations.items.create(conv.id, items=[msg(TRAVEL)]).data[0]
    c.conversations.items.create(conv.id, items=[msg(t, role="assistant") for t in DISTRACTORS[2:]])
    http = esrv.http
    # No word in common: full text finds nothing.
    assert search(http, {"query": QUERY, "mode": "text"}, user=user)["data"] == []
    for mode in ("vector", "hybrid"):
        hits = strong_search(http, {"query": QUERY, "mode": mode, "top_k": 5}, user=user)
        assert hits, mode
        assert hits[0]["item_id"] == travel.id, (mode, [h["item"]["content"][0]["text"] for h in hits])
        assert hits[0]["item"]["content"][0]["text"] == TRAVEL
        assert "embedding" not in hits[0]["item"]
    # Every item got a vector: vector mode ranks all five.
    hits = strong_search(http, {"query": QUERY, "mode": "vector", "top_k": 10}, user=user)
    assert len(hits) == 5
    assert hits[0]["score"] > hits[1]["score"]
    # Without a mode, a query alone is still a text search.
    assert search(http, {"query": QUERY}, user=user)["data"] == []
    # Memory values (JSON objects without an embedding) are embedded too.
    h = {"X-Mnemo-User": user}
    for i, t in enumerate([TRAVEL] + DISTRACTORS):
        r = http.put(f"/v1/kv/users/{user}/notes/{i}", json={"note": t, "n": i}, headers=h)
        assert r.status_code == 200, r.text
    hits = strong_search(http, {"query": QUERY, "mode": "vector", "source": "memory", "top_k": 3}, user=user)
    assert hits[0]["key"] == f"users/{user}/notes/0"
    assert hits[0]["value"] == {"note": TRAVEL, "n": 0}
    # A new value replaces the old vector; a deleted key never comes back.
    http.put(f"/v1/kv/users/{user}/notes/0", json={"note": DISTRACTORS[0]}, headers=h)
    http.put(f"/v1/kv/users/{user}/notes/3", json={"note": "Booked a hotel near Lisbon's old town"}, headers=h)
    http.delete(f"/v1/kv/users/{user}/notes/1", headers=h)
    hits = strong_search(http, {"query": QUERY, "mode": "vector", "source": "memory", "top_k": 10}, user=user)
    assert hits[0]["key"] == f"users/{user}/notes/3"
    assert f"users/{user}/notes/1" not in [x["key"] for x in hits]
    assert len(hits) == 4


def test_strong_consistency_right_after_a_burst_finds_every_item(esrv, uid):
    user = f"burst-{uid}"
    rng = random.Random(11)
    topics = ["weather", "football", "recipes", "taxes", "holidays", "music", "gardening", "cars"]
    written = []
    lock = threading.Lock()

    def writer(w):
        c = esrv.make_openai(default_headers={"X-Mnemo-User": user})
        conv = c.conversations.create()
        for i in range(4):
            texts = [f"note {w}-{i}-{j} about {rng.choice(topics)} and {rng.choice(topics)}" for j in range(5)]
            data = c.conversations.items.create(conv.id, items=[msg(t) for t in texts]).data
            with lock:
                written.extend(d.id for d in data)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 80
    hits = strong_search(esrv.http, {"query": "notes about sport", "mode": "vector", "top_k": 1000}, user=user)
    assert sorted(h["item_id"] for h in hits) == sorted(written)


def test_client_vectors_are_kept_and_not_re_embedded(esrv, uid):
    user = f"client-{uid}"
    rng = random.Random(5)
    http = esrv.http
    strong_search(http, {"query": "anything", "mode": "vector"}, user=user)  # drain earlier work
    before = metric(esrv, "mnemo_embedded_total")
    c = esrv.make_openai(default_headers={"X-Mnemo-User": user})
    vectors = [rand_unit(rng, DIM) for _ in range(12)]
    conv = c.conversations.create(items=[msg(f"client vector {i}", embedding=v) for i, v in enumerate(vectors)])
    plain = c.conversations.items.create(conv.id, items=[msg(t) for t in DISTRACTORS[:3]]).data
    hits = strong_search(http, {"query": "anything", "mode": "vector", "top_k": 100}, user=user)
    assert len(hits) == 15
    after = metric(esrv, "mnemo_embedded_total")
    assert after - before == 3, "only the three items without a client vector are embedded"
    # The client's vector is the one searched: it finds its own item with cosine 1.
    listed = c.conversations.items.list(conv.id, order="asc", limit=100).data
    for i in (0, 7):
        hits = search(http, {"vector": vectors[i], "mode": "vector", "top_k": 1}, user=user)["data"]
        assert hits[0]["item_id"] == listed[i].id and abs(hits[0]["score"] - 1.0) < 1e-4
    # Text queries and client vectors live in one space per tenant: 384 dimensions here.
    r = http.post("/v1/search", json={"vector": [1.0] * 8, "mode": "vector"}, headers={"X-Mnemo-User": user})
    assert r.status_code == 400
    assert {p.id for p in plain} <= {h["item_id"] for h in strong_search(
        http, {"query": "anything", "mode": "vector", "top_k": 100}, user=user)}


def test_bad_consistency_is_400_and_known_values_work(esrv, uid):
    http = esrv.http
    for value in ("sometimes", "STRONG", "", 1):
        r = http.post("/v1/search", json={"query": "x", "consistency": value})
        assert r.status_code == 400, (value, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error"
        if isinstance(value, str):
            assert err["param"] == "consistency"
    for value in ("eventual", "strong", "default"):
        r = http.post("/v1/search", json={"query": f"x{uid}", "mode": "hybrid", "consistency": value})
        assert r.status_code == 200, (value, r.text)


def test_tenant_with_client_vectors_of_another_dimension(fresh_esrv):
    srv = fresh_esrv
    http = srv.http
    c = srv.openai
    # The tenant's first vector (8 numbers) fixes its dimension before anything is embedded.
    conv = c.conversations.create(items=[msg("eight numbers", embedding=[0.1 * (i + 1) for i in range(8)])])
    c.conversations.items.create(conv.id, items=[msg(TRAVEL), msg(DISTRACTORS[0])])
    r = http.post("/v1/search", json={"query": QUERY, "mode": "vector"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "query"
    assert "8 dimensions" in err["message"] and "384" in err["message"]
    # Hybrid ranks by text alone; client vectors keep working; strong does not wait forever.
    hits = search(http, {"query": "Portugal capital", "mode": "hybrid", "consistency": "strong"})["data"]
    assert [h["item"]["content"][0]["text"] for h in hits] == [TRAVEL]
    hits = search(http, {"vector": [0.1 * (i + 1) for i in range(8)], "mode": "vector"})["data"]
    assert len(hits) == 1
    assert metric(srv, "mnemo_embedded_total") == 0


def test_a_query_vector_does_not_fix_the_dimension(fresh_esrv):
    srv = fresh_esrv
    http = srv.http
    # A search with an 8-number vector on an empty tenant finds nothing and fixes nothing...
    assert search(http, {"vector": [1.0] * 8, "mode": "vector"})["data"] == []
    # ...so the built-in embedder still gives the tenant its vectors (and their dimension).
    conv = srv.openai.conversations.create(items=[msg(TRAVEL), msg(DISTRACTORS[1])])
    hits = strong_search(http, {"query": QUERY, "mode": "vector"})
    assert hits[0]["item"]["content"][0]["text"] == TRAVEL
    r = http.post(f"/v1/conversations/{conv.id}/items", json={"items": [msg("x", embedding=[1.0] * 8)]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items[0].embedding"
    assert metric(srv, "mnemo_embedded_total") == 2


def test_kill9_during_background_embedding_then_restart(fresh_esrv):
    srv = fresh_esrv
    rng = random.Random(23)
    nouns = ["meeting", "invoice", "flight", "dinner", "deadline", "concert", "doctor", "lesson",
             "package", "birthday", "contract", "workout", "recipe", "sprint", "review", "trip"]
    c = srv.openai
    written = []
    for n in range(40):
        texts = [f"reminder {n}-{j}: the {rng.choice(nouns)} with {rng.choice(nouns)} moved to "
                 f"{rng.choice(['Monday', 'Tuesday', 'Friday'])} at {rng.randint(1, 12)} o'clock, "
                 f"bring the {rng.choice(nouns)} notes" for j in range(20)]
        conv = c.conversations.create(items=[msg(t) for t in texts])
        written.extend(it.id for it in c.conversations.items.list(conv.id, order="asc", limit=100).data)
    total = len(written)
    assert total == 800
    # Let background embedding get some batches done (and their write-backs uploaded), then kill.
    deadline = time.monotonic() + 120
    while metric(srv, "mnemo_embedded_total") < 96:
        assert time.monotonic() < deadline, "background embedding made no progress"
        time.sleep(0.05)
    time.sleep(0.4)
    embedded_before = metric(srv, "mnemo_embedded_total")
    srv.kill9()
    assert embedded_before < total, "embedding finished before the kill; nothing left to test"

    srv.restart()
    hits = strong_search(srv.http, {"query": "a reminder", "mode": "vector", "top_k": 1000})
    assert sorted(h["item_id"] for h in hits) == sorted(written)
    embedded_after = metric(srv, "mnemo_embedded_total")
    print(f"{total} items: {embedded_before:.0f} embedded before the kill, {embedded_after:.0f} after the restart")
    assert 0 < embedded_after < total
    # What was embedded (and stored) before the kill is not embedded again; at most the last
    # batches, whose write-backs were not uploaded yet, are.
    assert embedded_after <= total - embedded_before + 3 * 32, (embedded_before, embedded_after)
    # A clean restart embeds nothing at all: every vector is in the store.
    srv.terminate()
    srv.start()
    hits = strong_search(srv.http, {"query": "a reminder", "mode": "vector", "top_k": 1000})
    assert len(hits) == total
    assert metric(srv, "mnemo_embedded_total") == 0


def test_sql_embed_and_search_use_the_built_in_model(esrv):
    """`embed()` is the server's model; `search()` is `/v1/search` as a table; vector ordering
    over a user's built-in embeddings is planned onto the index."""
    user = f"sql-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": user}
    conv = esrv.http.post("/v1/conversations", headers=h, json={"items": [
        {"type": "message", "role": "user", "content": t} for t in [TRAVEL] + DISTRACTORS]}).json()

    def sql(query):
        r = esrv.http.post("/v1/sql", headers=h, json={"query": query})
        assert r.status_code == 200, r.text
        return r.json()["rows"]

    def lit(text):
        return "'" + text.replace("'", "''") + "'"

    closer = sql(f"SELECT cosine_similarity(embed({lit(QUERY)}), embed({lit(TRAVEL)})) > "
                 f"cosine_similarity(embed({lit(QUERY)}), embed({lit(DISTRACTORS[0])}))")
    assert closer == [[True]]
    # Strong consistency: every item has its built-in vector before the SQL reads.
    r = esrv.http.post("/v1/search", headers=h, json={"query": QUERY, "mode": "vector", "top_k": 5,
                                                      "consistency": "strong"})
    rest = [hit["item_id"] for hit in r.json()["data"]]
    got = sql(f"SELECT s.item_id, i.text FROM search('{QUERY}', mode => 'vector', top_k => 5) s "
              "JOIN items i ON i.item_id = s.item_id ORDER BY s.rank")
    assert [g[0] for g in got] == rest and got[0][1] == TRAVEL
    q = f"SELECT text FROM items ORDER BY cosine_similarity(embedding, embed('{QUERY}')) DESC LIMIT 1"
    assert sql(q) == [[TRAVEL]]
    plan = "\n".join(row[1] for row in sql("EXPLAIN " + q))
    assert "nearest=exact vector search" in plan, plan
    assert conv["id"]

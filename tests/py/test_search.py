"""POST /v1/search over conversation items and memory: read-your-writes, exactness against a
brute force, isolation, deletes, filters, bad input, and a kill -9 during indexing."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid

import pytest

DIM = 16


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def rand_vec(rng):
    return rand_vec_dim(rng, DIM)


def rand_vec_dim(rng, dim):
    return [rng.gauss(0, 1) for _ in range(dim)]


def search(http, body, user=None, status=200):
    headers = {"X-Mnemo-User": user} if user else {}
    r = http.post("/v1/search", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def msg(text, role="user", embedding=None):
    m = {"type": "message", "role": role, "content": text}
    if embedding is not None:
        m["embedding"] = embedding
    return m


def test_text_search_sees_acknowledged_writes_at_once(server, client, uid):
    user = f"ryw-{uid}"
    c = server.make_openai(default_headers={"X-Mnemo-User": user})
    conv = c.conversations.create(items=[msg(f"my flight to Lisbon lis{uid}")])
    hits = search(server.http, {"query": f"lis{uid}"}, user=user)["data"]
    assert [h["conversation_id"] for h in hits] == [conv.id]
    assert hits[0]["item"]["content"][0]["text"] == f"my flight to Lisbon lis{uid}"
    assert "embedding" not in hits[0]["item"]
    # Items added later, and deletes, are visible to the very next search.
    added = c.conversations.items.create(conv.id, items=[msg(f"and the hotel in Porto por{uid}", role="assistant")])
    hits = search(server.http, {"query": f"por{uid}"}, user=user)["data"]
    assert [h["item_id"] for h in hits] == [added.data[0].id]
    # BM25 ranks the item with both words first.
    hits = search(server.http, {"query": f"hotel lis{uid} por{uid}"}, user=user)["data"]
    assert [h["item_id"] for h in hits][0] == added.data[0].id and len(hits) == 2
    c.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert search(server.http, {"query": f"por{uid}"}, user=user)["data"] == []
    c.conversations.delete(conv.id)
    assert search(server.http, {"query": f"lis{uid}"}, user=user)["data"] == []


def test_read_your_writes_under_concurrent_writers(server, uid):
    errors = []

    def worker(w):
        try:
            c = server.make_openai(default_headers={"X-Mnemo-User": f"cw-{uid}-{w}"})
            http = server.new_http()
            for i in range(15):
                token = f"tok{uid}w{w}i{i}"
                conv = c.conversations.create(items=[msg(f"note {token}")])
                hits = search(http, {"query": token}, user=f"cw-{uid}-{w}")["data"]
                if [h["conversation_id"] for h in hits] != [conv.id]:
                    errors.append((token, hits))
            http.close()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_per_user_vector_search_equals_brute_force(server, uid):
    rng = random.Random(7)
    user = f"vec-{uid}"
    c = server.make_openai(default_headers={"X-Mnemo-User": user})
    vectors = {}
    for _ in range(8):
        items = [msg(f"v {uid}", role=rng.choice(["user", "assistant"]), embedding=rand_vec(rng))
                 for _ in range(20)]
        conv = c.conversations.create(items=items)
        listed = c.conversations.items.list(conv.id, order="asc", limit=100).data
        for it, sent in zip(listed, items):
            vectors[it.id] = (unit(sent["embedding"]), sent["role"])
            assert "embedding" not in it.model_dump(), "embeddings are not echoed"
    # Someone else's vectors must never show up.
    other = server.make_openai(default_headers={"X-Mnemo-User": f"other-{uid}"})
    other.conversations.create(items=[msg("x", embedding=rand_vec(rng)) for _ in range(20)])
    for _ in range(5):
        q = rand_vec(rng)
        qn = unit(q)
        for role in (None, "assistant"):
            body = {"vector": q, "mode": "vector", "top_k": 10}
            if role:
                body["filter"] = {"role": role}
            hits = search(server.http, body, user=user)["data"]
            expect = sorted(((sum(a * b for a, b in zip(qn, v)), i) for i, (v, r) in vectors.items()
                             if role is None or r == role), reverse=True)[:10]
            assert [h["item_id"] for h in hits] == [i for _, i in expect]
            for h, (s, _) in zip(hits, expect):
                assert abs(h["score"] - s) < 1e-4


def test_users_and_filters_never_leak(server, uid):
    """Each user finds exactly their own items, under every filter and scope; never another's."""
    a, b = f"a-{uid}", f"b-{uid}"
    rng = random.Random(uid)
    word = f"sec{uid}"
    model = []  # every item written: what each search is checked against

    def create(user, topic, texts_roles):
        c = server.make_openai(default_headers={"X-Mnemo-User": user})
        items = [msg(f"{t} {word}", role=r, embedding=rand_vec(rng)) for t, r in texts_roles]
        conv = c.conversations.create(metadata={"topic": topic}, items=items)
        listed = c.conversations.items.list(conv.id, order="asc").data
        assert len(listed) == len(items)
        for it, sent in zip(listed, items):
            model.append({"user": user, "conv": conv.id, "item": it.id, "role": sent["role"],
                          "topic": topic, "late": late})
        return conv.id

    # Items before and after a second boundary, so created_after/created_before split them.
    late = False
    conv_a = create(a, "travel", [("secret plan", "user"), ("secret answer", "assistant")])
    conv_b = create(b, "travel", [("secret plan", "user")])
    split = int(time.time()) + 1
    time.sleep(max(0.0, split - time.time()) + 0.05)
    late = True
    create(a, "food", [("secret recipe", "user")])
    create(b, "food", [("secret dish", "assistant")])

    def expected(user, flt, conv=None):
        out = []
        for m in model:
            if user is not None and m["user"] != user:
                continue
            if conv is not None and m["conv"] != conv:
                continue
            if "role" in flt and m["role"] != flt["role"]:
                continue
            if "created_after" in flt and not m["late"]:
                continue
            if "created_before" in flt and m["late"]:
                continue
            if "metadata" in flt and m["topic"] != flt["metadata"]["topic"]:
                continue
            out.append((m["conv"], m["item"]))
        return sorted(out)

    filters = [{}, {"role": "user"}, {"role": "assistant"},
               {"created_after": split}, {"created_before": split},
               {"metadata": {"topic": "travel"}}, {"metadata": {"topic": "food"}},
               {"role": "user", "created_after": split, "metadata": {"topic": "food"}},
               {"metadata": {"topic": "none"}}]
    queries = [{"query": word}, {"query": word, "mode": "hybrid"},
               {"vector": rand_vec(rng), "mode": "vector"},
               {"query": word, "vector": rand_vec(rng), "mode": "hybrid"}]

    def check_all():
        for user in (a, b, None):  # None: the tenant, which sees both users
            for q in queries:
                for flt in filters:
                    for conv in (None, conv_a, conv_b):
                        if user is None and conv is None and "vector" in q:
                            continue  # tenant-wide, vectors of the module's other tests match too
                        body = dict(q, top_k=50)
                        if flt:
                            body["filter"] = flt
                        if conv:
                            body["scope"] = {"conversation_id": conv}
                        hits = search(server.http, body, user=user)["data"]
                        got = sorted((h["conversation_id"], h["item_id"]) for h in hits)
                        assert got == expected(user, flt, conv), (user, body)

    check_all()
    # The selections above are not empty by accident: each user finds their own items.
    assert len(expected(a, {})) == 3 and len(expected(b, {})) == 2
    assert expected(a, {"role": "assistant"}) and expected(a, {"created_after": split})
    # Metadata updates re-index the conversation's items.
    server.make_openai(default_headers={"X-Mnemo-User": a}).conversations.update(
        conv_a, metadata={"topic": "food"})
    for m in model:
        if m["conv"] == conv_a:
            m["topic"] = "food"
    check_all()


def test_memory_search_by_prefix_text_and_vector(server, uid):
    user = f"mem-{uid}"
    http = server.http
    h = {"X-Mnemo-User": user}
    rng = random.Random(3)
    emb = rand_vec(rng)
    r = http.put(f"/v1/kv/users/{user}/prefs/drink", json={"text": f"likes green tea tea{uid}", "embedding": emb}, headers=h)
    assert r.status_code == 200
    http.put(f"/v1/kv/users/{user}/notes/x", json={"text": f"green tea is fine tea{uid}"}, headers=h)
    http.put(f"/v1/kv/users/{user}/raw", content=b"not json at all", headers=h)
    hits = search(http, {"query": f"tea{uid}", "source": "memory", "scope": {"prefix": f"users/{user}/prefs/"}}, user=user)["data"]
    assert [x["key"] for x in hits] == [f"users/{user}/prefs/drink"]
    assert hits[0]["value"] == {"text": f"likes green tea tea{uid}"}
    hits = search(http, {"vector": emb, "source": "memory"}, user=user)["data"]
    assert hits[0]["key"] == f"users/{user}/prefs/drink" and abs(hits[0]["score"] - 1.0) < 1e-4
    # Each user finds exactly their own values; another user's never.
    other = f"x-{uid}"
    r = http.put(f"/v1/kv/users/{other}/tea", json={"text": f"black tea tea{uid}", "embedding": rand_vec(rng)},
                 headers={"X-Mnemo-User": other})
    assert r.status_code == 200
    hits = search(http, {"query": f"tea{uid}", "source": "memory"}, user=user)["data"]
    assert sorted(x["key"] for x in hits) == [f"users/{user}/notes/x", f"users/{user}/prefs/drink"]
    hits = search(http, {"query": f"tea{uid}", "source": "memory"}, user=other)["data"]
    assert [x["key"] for x in hits] == [f"users/{other}/tea"]
    hits = search(http, {"vector": emb, "source": "memory", "top_k": 100}, user=other)["data"]
    assert [x["key"] for x in hits] == [f"users/{other}/tea"]
    # Deleting the key removes it at once; the other value stays.
    http.delete(f"/v1/kv/users/{user}/prefs/drink", headers=h)
    hits = search(http, {"query": f"tea{uid}", "source": "memory"}, user=user)["data"]
    assert [x["key"] for x in hits] == [f"users/{user}/notes/x"]


def test_expired_memory_is_neither_returned_nor_given_a_place(server, uid):
    user = f"ttl-{uid}"
    http = server.http
    h = {"X-Mnemo-User": user}
    # Two values stay; the one that matches best lives two seconds.
    for k in ("b", "c"):
        assert http.put(f"/v1/kv/users/{user}/{k}", json={"text": f"ttl{uid} note {k}"}, headers=h).status_code == 200
    t0 = time.monotonic()
    r = http.put(f"/v1/kv/users/{user}/a?ttl_seconds=2", json={"text": f"ttl{uid} ttl{uid} ttl{uid}"}, headers=h)
    assert r.status_code == 200, r.text
    t1 = time.monotonic()  # the value expires before t1 + 2 s
    body = {"query": f"ttl{uid}", "source": "memory", "top_k": 2}
    first = search(http, body, user=user)["data"][0]["key"]
    if time.monotonic() - t0 < 1.5:  # still well before the expiry
        assert first == f"users/{user}/a"
    time.sleep(max(0.0, t1 + 2.3 - time.monotonic()))
    keys = [x["key"] for x in search(http, body, user=user)["data"]]
    assert sorted(keys) == [f"users/{user}/b", f"users/{user}/c"], keys


def test_bad_search_input_is_400(server, uid):
    http = server.http
    user = f"bad-{uid}"
    c = server.make_openai(default_headers={"X-Mnemo-User": user})
    c.conversations.create(items=[msg("x", embedding=[1.0] * DIM)])
    cases = [
        {"vector": [1.0] * (DIM + 1)},  # wrong dimension
        {"vector": [1e39] + [0.0] * (DIM - 1)},  # infinite as f32
        {"vector": [0.0] * DIM},  # zero vector
        {"vector": []},
        {"vector": "nope"},
        {"query": ""},
        {"query": "   "},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 10 ** 9},
        {"query": "x", "mode": "semantic"},
        {"mode": "vector", "query": "x"},
        {"query": "x", "source": "files"},
        {"query": "x", "unknown": 1},
        {},
    ]
    for body in cases:
        r = http.post("/v1/search", json=body, headers={"X-Mnemo-User": user})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/search", content=b'{"vector": [NaN]}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    # Writes with a bad embedding are refused and store nothing.
    conv = c.conversations.create()
    r = http.post(f"/v1/conversations/{conv.id}/items", json={"items": [msg("y", embedding=[1.0] * (DIM + 3))]},
                  headers={"X-Mnemo-User": user})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items[0].embedding"
    assert c.conversations.items.list(conv.id).data == []
    r = http.put(f"/v1/kv/users/{user}/m", json={"embedding": [1.0, 2.0]}, headers={"X-Mnemo-User": user})
    assert r.status_code == 400
    assert http.get(f"/v1/kv/users/{user}/m", headers={"X-Mnemo-User": user}).status_code == 404


@pytest.mark.storage
def test_index_is_rebuilt_after_kill9(fresh_server):
    """kill -9 while eight users append items with vectors, then restart: the index holds exactly
    what the store holds. That is every acknowledged item, plus those of the appends in flight
    at the kill that the store made durable before it died (a write that got no answer may or
    may not have happened), and nothing else."""
    srv = fresh_server
    dim, writers, per_writer = 8, 8, 100  # at most 808 items: tenant-wide top_k=1000 sees all
    rng = random.Random(17)
    lock = threading.Lock()
    sent = {}    # token -> (writer, vector): every item ever sent
    acked = {}   # token -> item id, for every acknowledged item
    problems = []
    convs = []
    for w in range(writers):
        c = srv.make_openai(default_headers={"X-Mnemo-User": f"k-{w}"})
        token, v = f"kill{w}x0", rand_vec_dim(rng, dim)
        conv = c.conversations.create(items=[msg(f"entry {token}", embedding=v)])
        convs.append(conv.id)
        sent[token] = (w, v)
        acked[token] = c.conversations.items.list(conv.id).data[0].id
    killing = threading.Event()

    def writer(w):
        c = srv.make_openai(default_headers={"X-Mnemo-User": f"k-{w}"})
        wrng = random.Random(w)
        for i in range(1, per_writer + 1):
            token, v = f"kill{w}x{i}", rand_vec_dim(wrng, dim)
            with lock:
                sent[token] = (w, v)
            try:
                data = c.conversations.items.create(convs[w], items=[msg(f"entry {token}", embedding=v)]).data
            except Exception as e:  # noqa: BLE001 - the kill cuts requests off
                if not killing.is_set():
                    problems.append(f"{token} failed before the kill: {e!r}")
                return
            with lock:
                acked[token] = data[0].id

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < writers + 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    writing = sum(t.is_alive() for t in threads)
    killing.set()
    srv.kill9()
    for t in threads:
        t.join()
    assert problems == []
    assert len(acked) > writers + 100, len(acked)
    assert writing == writers, "every writer must still be writing at the kill"
    srv.restart()
    http = srv.http

    # What the store holds after the restart, read from the conversations (not the index).
    stored = {}  # token -> (writer, conversation id, item id)
    for w, cid in enumerate(convs):
        r = http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "limit": 100},
                     headers={"X-Mnemo-User": f"k-{w}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert not body["has_more"]
        for it in body["data"]:
            token = it["content"][0]["text"].removeprefix("entry ")
            assert sent.get(token, (None,))[0] == w, f"{cid}: item never sent to it: {token}"
            assert token not in stored, f"{token} stored twice"
            stored[token] = (w, cid, it["id"])
    for token, item_id in acked.items():
        assert token in stored and stored[token][2] == item_id, f"acknowledged {token} lost"
    in_flight_kept = len(stored) - len(acked)
    print(f"{len(acked)} acknowledged, {in_flight_kept} of the {len(sent) - len(acked)} in flight kept")

    # Text: every item sent is found by its token exactly when the store has it.
    for token, (w, _) in sent.items():
        hits = search(http, {"query": token}, user=f"k-{w}")["data"]
        want = [(stored[token][1], stored[token][2])] if token in stored else []
        assert [(h["conversation_id"], h["item_id"]) for h in hits] == want, token

    # Vectors: each user's ranking, and the tenant's, equal a brute force over exactly the
    # items the store holds.
    def brute_force(q, tokens):
        qn = unit(q)
        return sorted(((sum(x * y for x, y in zip(qn, unit(sent[t][1]))), stored[t][2]) for t in tokens),
                      reverse=True)

    for k in range(3):
        q = rand_vec_dim(rng, dim)
        for user in [f"k-{w}" for w in range(writers)] + [None]:
            tokens = [t for t, (w, _, _) in stored.items() if user in (None, f"k-{w}")]
            want = brute_force(q, tokens)
            hits = search(http, {"vector": q, "mode": "vector", "top_k": 1000}, user=user)["data"]
            assert sorted(h["item_id"] for h in hits) == sorted(i for _, i in want), user
            score_of = {i: s for s, i in want}
            for rank, (h, (s, _)) in enumerate(zip(hits, want)):
                # Same scores rank by rank; ids too, up to float near-ties.
                assert abs(h["score"] - s) < 1e-4, (user, rank)
                assert abs(h["score"] - score_of[h["item_id"]]) < 1e-4, (user, rank)

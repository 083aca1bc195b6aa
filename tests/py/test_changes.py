"""The change feed: `GET /v1/changes` (pages, long-poll) and `GET /v1/changes/stream` (SSE).

Work in progress: ordering, paging, long-poll, SSE resumption, scoping and bad input. Still
to come (see the closing note of the session that added this file): `memory.expired`, the
erasure of earlier entries, the 16-writer rebuild and kill -9 resumption tests, 410 after
retention with a short retention.
"""
import json
import random
import threading
import time
import uuid

import pytest
import sseclient

from conftest import MnemoServer, assert_json_error, httpx


def _all_events(http, headers, after=None, limit=3):
    events, params = [], {"limit": limit}
    if after:
        params["after"] = after
    while True:
        r = http.get("/v1/changes", params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["next_cursor"]
        events += body["data"]
        params["after"] = body["next_cursor"]
        if not body["has_more"]:
            return events, body["next_cursor"]


def test_feed_reports_every_change_in_commit_order(server, http):
    user = f"feed-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": user}
    _, start = _all_events(http, h, limit=1000)
    conv = http.post("/v1/conversations", json={"items": [{"type": "message", "role": "user", "content": "a"}]},
                     headers=h).json()
    items = http.post(f"/v1/conversations/{conv['id']}/items",
                      json={"items": [{"type": "message", "role": "user", "content": "b"},
                                      {"type": "message", "role": "assistant", "content": "c"}]},
                      headers=h).json()["data"]
    http.post(f"/v1/conversations/{conv['id']}", json={"metadata": {"k": "v"}}, headers=h)
    http.delete(f"/v1/conversations/{conv['id']}/items/{items[0]['id']}", headers=h)
    etag = http.put(f"/v1/kv/users/{user}/note", content=b"x", headers=h).json()["etag"]
    http.delete(f"/v1/kv/users/{user}/note", headers=h)
    http.delete(f"/v1/conversations/{conv['id']}", headers=h)
    events, _ = _all_events(http, h, after=start)
    assert [e["type"] for e in events] == [
        "conversation.created", "item.created", "item.created", "conversation.updated",
        "item.deleted", "memory.put", "memory.deleted", "conversation.deleted"]
    assert events[2]["item_ids"] == [i["id"] for i in items]
    assert events[5]["etag"] == etag and events[5]["key"] == f"users/{user}/note"
    assert all(e["user_id"] == user for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert len({e["id"] for e in events}) == len(events)


def test_an_idle_feed_still_moves_its_cursor_and_long_polls(server, http):
    user = f"idle-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": user}
    first = http.get("/v1/changes", params={"after": "now"}, headers=h).json()
    assert first["data"] == [] and first["next_cursor"]
    got = {}

    def poll():
        got["r"] = http.get("/v1/changes", params={"after": first["next_cursor"], "wait_ms": 10000},
                            headers=h, timeout=30)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    http.put(f"/v1/kv/users/{user}/x", content=b"1", headers=h)
    t.join(30)
    data = got["r"].json()["data"]
    assert [e["type"] for e in data] == ["memory.put"]


def test_sse_stream_delivers_and_resumes_with_last_event_id(server, http):
    user = f"sse-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": user}
    start = http.get("/v1/changes", params={"after": "now"}, headers=h).json()["next_cursor"]
    for i in range(5):
        http.put(f"/v1/kv/users/{user}/k{i}", content=b"v", headers=h)
    def events(client, n, **kw):
        with client.stream("GET", "/v1/changes/stream", **kw) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            out = []
            for ev in sseclient.SSEClient(resp.iter_bytes()).events():
                out.append(ev)
                if len(out) == n:
                    return out

    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        seen = events(c, 3, params={"after": start}, headers=h)
        assert [json.loads(ev.data)["key"] for ev in seen] == [f"users/{user}/k{i}" for i in range(3)]
        assert [ev.id for ev in seen] == [json.loads(ev.data)["id"] for ev in seen]
        rest = events(c, 2, headers=dict(h, **{"Last-Event-ID": seen[-1].id}))
    assert [json.loads(ev.data)["key"] for ev in rest] == [f"users/{user}/k3", f"users/{user}/k4"]


def test_users_see_only_their_own_changes(server, http):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    start = http.get("/v1/changes", params={"after": "now"}).json()["next_cursor"]
    http.put(f"/v1/kv/users/{a}/x", content=b"1", headers={"X-Mnemo-User": a})
    http.put(f"/v1/kv/users/{b}/x", content=b"1", headers={"X-Mnemo-User": b})
    for user, other in [(a, b), (b, a)]:
        events, _ = _all_events(http, {"X-Mnemo-User": user}, after=start)
        keys = [e.get("key") for e in events]
        assert f"users/{user}/x" in keys
        assert not any(other in (e.get("key") or "") or e.get("user_id") == other for e in events)
    tenant, _ = _all_events(http, {}, after=start)
    assert {f"users/{a}/x", f"users/{b}/x"} <= {e.get("key") for e in tenant}


@pytest.mark.parametrize("params,status,param", [
    ({"after": "garbage"}, 400, "after"),
    ({"after": "c1" + "0" * 15}, 400, "after"),
    ({"limit": "0"}, 400, "limit"),
    ({"wait_ms": "-1"}, 400, "wait_ms"),
    ({"include": "everything"}, 400, "include"),
    ({"after": "c1" + "0" * 15 + "1"}, 410, "after"),
])
def test_bad_feed_parameters_are_clear_errors(server, http, params, status, param):
    r = http.get("/v1/changes", params=params)
    err = assert_json_error(r, status)
    assert err["param"] == param
    if status == 410:
        assert err["code"] == "cursor_expired" and "c1" in err["message"]


def _sse_events(base_url, params, headers, stop, out, ready):
    """Follows the stream, appending each event's JSON to `out`, until `stop(event)` holds."""
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60, read=90)) as c:
        with c.stream("GET", "/v1/changes/stream", params=params, headers=headers) as resp:
            assert resp.status_code == 200, resp.read()
            ready.set()
            for ev in sseclient.SSEClient(resp.iter_bytes()).events():
                e = json.loads(ev.data)
                assert ev.id == e["id"]
                out.append(e)
                if stop(e):
                    return


def test_the_stream_rebuilds_the_final_state_under_16_writers(server, http):
    """A consumer follows the SSE stream while 16 writers create, update and delete
    conversations and items, write, batch, delete and let expire memory keys, and one user is
    erased; the events, applied in order, give exactly the state the REST API holds."""
    run = uuid.uuid4().hex[:8]
    users = [f"w{i}-{run}" for i in range(16)]
    start = http.get("/v1/changes", params={"after": "now"}).json()["next_cursor"]
    sentinel = f"users/{users[0]}/sentinel-{run}"
    events, ready = [], threading.Event()
    consumer = threading.Thread(target=_sse_events, args=(
        server.base_url, {"after": start}, {}, lambda e: e.get("key") == sentinel, events, ready))
    consumer.start()
    assert ready.wait(10)
    convs = {u: [] for u in users}
    ttl_keys = []
    errors = []

    def writer(i):
        u = users[i]
        h = {"X-Mnemo-User": u}
        rnd = random.Random(i)
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as c:
                for n in range(12):
                    op = rnd.choice(["conv", "items", "update", "del_item", "del_conv", "kv", "batch", "ttl", "del_kv"])
                    mine = convs[u]
                    if op == "conv" or not mine:
                        r = c.post("/v1/conversations", json={"items": [{"type": "message", "role": "user",
                                                                         "content": f"{u} {n}"}]}, headers=h)
                        mine.append(r.json()["id"])
                    elif op == "items":
                        c.post(f"/v1/conversations/{rnd.choice(mine)}/items", json={"items": [
                            {"type": "message", "role": "user", "content": f"a {n}"},
                            {"type": "message", "role": "assistant", "content": f"b {n}"}]}, headers=h)
                    elif op == "update":
                        c.post(f"/v1/conversations/{rnd.choice(mine)}", json={"metadata": {"n": str(n)}}, headers=h)
                    elif op == "del_item":
                        cid = rnd.choice(mine)
                        items = c.get(f"/v1/conversations/{cid}/items", headers=h).json()["data"]
                        if items:
                            c.delete(f"/v1/conversations/{cid}/items/{items[0]['id']}", headers=h)
                    elif op == "del_conv":
                        c.delete(f"/v1/conversations/{mine.pop(rnd.randrange(len(mine)))}", headers=h)
                    elif op == "kv":
                        c.put(f"/v1/kv/users/{u}/k{rnd.randrange(4)}", content=f"{n}".encode(), headers=h)
                    elif op == "batch":
                        c.post("/v1/kv/batch", json={"operations": [
                            {"op": "put", "key": f"users/{u}/b{n}", "value": "x"},
                            {"op": "delete", "key": f"users/{u}/k{rnd.randrange(4)}"}]}, headers=h)
                    elif op == "ttl":
                        c.put(f"/v1/kv/users/{u}/t{n}", params={"ttl_seconds": 1}, content=b"t", headers=h)
                        ttl_keys.append(f"users/{u}/t{n}")
                    else:
                        c.delete(f"/v1/kv/users/{u}/k{rnd.randrange(4)}", headers=h)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    erased = users[-1]
    assert http.delete(f"/v1/admin/users/{erased}").status_code == 200
    # Every TTL (1 s) passes and the sweep logs it before the last write.
    due = {k for k in ttl_keys if not k.startswith(f"users/{erased}/")}
    deadline = time.monotonic() + 30
    while due and time.monotonic() < deadline:
        logged, _ = _all_events(http, {}, after=start, limit=1000)
        due -= {e["key"] for e in logged if e["type"] == "memory.expired"}
        time.sleep(0.2)
    assert not due, f"no memory.expired within 30 s for {sorted(due)}"
    http.put(f"/v1/kv/{sentinel}", content=b"end", headers={"X-Mnemo-User": users[0]})
    consumer.join(60)
    assert not consumer.is_alive(), "the stream never delivered the last write"

    # Apply the events in order.
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    state_convs, state_items, state_keys = set(), {}, set()
    for e in events:
        t = e["type"]
        if t == "conversation.created":
            state_convs.add(e["conversation_id"])
            state_items.setdefault(e["conversation_id"], [])
        elif t == "conversation.deleted":
            state_convs.discard(e["conversation_id"])
            state_items.pop(e["conversation_id"], None)
        elif t == "item.created":
            state_items.setdefault(e["conversation_id"], []).extend(e["item_ids"])
        elif t == "item.deleted":
            state_items[e["conversation_id"]] = [i for i in state_items.get(e["conversation_id"], [])
                                                 if i not in e["item_ids"]]
        elif t == "memory.put":
            state_keys.add(e["key"])
        elif t in ("memory.deleted", "memory.expired"):
            state_keys.discard(e["key"])
        elif t == "user.erased":
            gone = {c for c in state_convs if any(ev.get("conversation_id") == c and ev.get("user_id") == e["user_id"]
                                                  for ev in events)}
            state_convs -= gone
            state_keys = {k for k in state_keys if not k.startswith(f"users/{e['user_id']}/")}
    assert any(e["type"] == "memory.expired" for e in events)
    assert any(e["type"] == "user.erased" and e["user_id"] == erased for e in events)

    # The state the REST API holds.
    rest_keys = set()
    for u in users:
        h = {"X-Mnemo-User": u}
        rest_keys |= {d["key"] for d in http.get("/v1/kv", params={"prefix": f"users/{u}/", "limit": 1000},
                                                  headers=h).json()["data"]}
        for cid in convs[u]:
            r = http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "limit": 100}, headers=h)
            if u == erased:
                assert r.status_code == 404
                assert cid not in state_convs
                continue
            assert r.status_code == 200 and cid in state_convs
            assert [i["id"] for i in r.json()["data"]] == state_items[cid]
    mine = {c for c in state_convs if any(c in convs[u] for u in users)}
    assert mine == {c for u in users if u != erased for c in convs[u]}
    assert {k for k in state_keys if any(k.startswith(f"users/{u}/") for u in users)} == rest_keys


def test_a_reader_resumes_across_kill9_without_gaps(fresh_server):
    h = fresh_server.http
    start = h.get("/v1/changes", params={"after": "now"}).json()["next_cursor"]
    for i in range(20):
        assert h.put(f"/v1/kv/r{i:02d}", content=b"v").status_code == 200
    first = h.get("/v1/changes", params={"after": start, "limit": 7}).json()
    assert [e["key"] for e in first["data"]] == [f"r{i:02d}" for i in range(7)]
    fresh_server.kill9()
    fresh_server.start()
    h = fresh_server.http
    for i in range(20, 25):
        assert h.put(f"/v1/kv/r{i:02d}", content=b"v").status_code == 200
    events, _ = _all_events(h, {}, after=first["next_cursor"], limit=4)
    assert [e["key"] for e in events] == [f"r{i:02d}" for i in range(7, 25)]


def test_an_expired_cursor_is_410_with_the_oldest_valid_one():
    srv = MnemoServer(name="mnemo-short-retention", extra_args=["--changes-retention-hours", "0.0005"]).start()
    try:
        h = srv.http
        cursor = h.get("/v1/changes", params={"after": "now"}).json()["next_cursor"]
        h.put("/v1/kv/a", content=b"v")
        time.sleep(2.5)  # retention is 1.8 s
        r = h.get("/v1/changes", params={"after": cursor})
        err = assert_json_error(r, 410, code="cursor_expired")
        oldest = err["message"].split()[-1]
        ok = h.get("/v1/changes", params={"after": oldest})
        assert ok.status_code == 200 and ok.json()["next_cursor"]
        sse = h.get("/v1/changes/stream", params={"after": cursor})
        assert_json_error(sse, 410, code="cursor_expired")
    finally:
        srv.close()


def test_include_body_gives_the_object_as_it_is_now(server, http):
    user = f"body-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": user}
    start = http.get("/v1/changes", params={"after": "now"}, headers=h).json()["next_cursor"]
    conv = http.post("/v1/conversations", json={"metadata": {"a": "b"}, "items": [
        {"type": "message", "role": "user", "content": "hello"}]}, headers=h).json()
    http.put(f"/v1/kv/users/{user}/note", content=b"text", headers=h)
    http.put(f"/v1/kv/users/{user}/gone", content=b"x", headers=h)
    http.delete(f"/v1/kv/users/{user}/gone", headers=h)
    data = http.get("/v1/changes", params={"after": start, "include": "body"}, headers=h).json()["data"]
    by_type = {(e["type"], e.get("key")): e for e in data}
    assert by_type[("conversation.created", None)]["body"] == http.get(
        f"/v1/conversations/{conv['id']}", headers=h).json()
    items = by_type[("item.created", None)]["body"]
    assert [i["content"][0]["text"] if isinstance(i["content"], list) else i["content"] for i in items] == ["hello"]
    note = by_type[("memory.put", f"users/{user}/note")]["body"]
    assert note["value"] == "text" and note["etag"] == by_type[("memory.put", f"users/{user}/note")]["etag"]
    assert by_type[("memory.put", f"users/{user}/gone")]["body"] is None

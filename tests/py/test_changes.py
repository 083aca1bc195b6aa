"""The change feed: `GET /v1/changes` (pages, long-poll) and `GET /v1/changes/stream` (SSE).

Work in progress: ordering, paging, long-poll, SSE resumption, scoping and bad input. Still
to come (see the closing note of the session that added this file): `memory.expired`, the
erasure of earlier entries, the 16-writer rebuild and kill -9 resumption tests, 410 after
retention with a short retention.
"""
import json
import threading
import time
import uuid

import pytest
import sseclient

from conftest import assert_json_error, httpx


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

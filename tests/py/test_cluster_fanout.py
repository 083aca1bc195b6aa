"""Operations over a whole tenant on a cluster (memory listings, search, the change feed, SQL)
answer what a single server holding the same data answers; isolation between
users and tenants holds across shards, through every node (API keys)."""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster_util import Cluster, need_cluster_parts
from conftest import MnemoServer, httpx, mnemo_bin

ROLES = ["Conversations.ReadWrite", "Memory.ReadWrite", "Search", "Changes.Read", "Admin"]
USERS = {"ta": ["alice", "bob", "dan", "erin"], "tb": ["carol"]}


def make_key(path: Path, tenant: str, user=None, roles=ROLES) -> str:
    cmd = [mnemo_bin(), "keys", "--file", str(path), "create", "--tenant", tenant]
    for r in roles:
        cmd += ["--role", r]
    if user:
        cmd += ["--user", user]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def world():
    """A single server and a 3-node cluster with the same API keys and the same data."""
    need_cluster_parts()
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    keyfile = tmp / "keys.json"
    keys = {("app", t): make_key(keyfile, t) for t in USERS}
    for t, users in USERS.items():
        for u in users:
            keys[(t, u)] = make_key(keyfile, t, u)
    auth = ["--auth", "keys", "--api-keys-file", str(keyfile)]
    single = MnemoServer(name="single", extra_args=auth)
    single.start()
    cluster = Cluster(n=3, shards=8, ttl=5, extra_args=auth)
    try:
        rng = random.Random(7)
        targets = [single] + cluster.nodes
        convs = {}
        for t, users in USERS.items():
            for u in users:
                for target_i, srv in enumerate([single, cluster.nodes[rng.randrange(3)]]):
                    h = {"Authorization": f"Bearer {keys[(t, u)]}"}
                    for c in range(2):
                        items = [{"type": "message", "role": "user", "content": f"{u} says {w} {c}",
                                  "embedding": [rng.random() + 0.01 for _ in range(8)]}
                                 for w in ("apples", "pears")]
                        r = srv.http.post("/v1/conversations", json={"items": items}, headers=h)
                        assert r.status_code == 200, r.text
                        convs.setdefault((t, u, target_i), []).append(r.json()["id"])
                    r = srv.http.put(f"/v1/kv/users/{u}/note", content=f"{u} likes apples".encode(), headers=h)
                    assert r.status_code in (200, 201), r.text
            app = {"Authorization": f"Bearer {keys[('app', t)]}"}
            for srv in targets[:2]:
                for k in range(5):
                    r = srv.http.put(f"/v1/kv/shared/{k}", content=b"shared", headers=app)
                    assert r.status_code in (200, 201), r.text
        # Vectors differ between the two sides (one random sequence): comparisons use text.
        yield {"single": single, "cluster": cluster, "keys": keys, "convs": convs}
    finally:
        single.close()
        cluster.close()


def bearer(world, who):
    return {"Authorization": f"Bearer {world['keys'][who]}"}


def all_keys(srv, headers):
    page = srv.http.get("/v1/kv", params={"limit": 3}, headers=headers).json()
    keys = [e["key"] for e in page["data"]]
    while page["has_more"]:
        page = srv.http.get("/v1/kv", params={"limit": 3, "after": page["next_after"]}, headers=headers).json()
        keys += [e["key"] for e in page["data"]]
    return keys


def test_memory_listings_equal_a_single_servers(world):
    for who in [("app", "ta"), ("app", "tb"), ("ta", "alice"), ("tb", "carol")]:
        want = all_keys(world["single"], bearer(world, who))
        assert want, who
        for node in world["cluster"].nodes:
            assert all_keys(node, bearer(world, who)) == want, (who, node.node_id)


def search_texts(srv, headers, body):
    r = srv.http.post("/v1/search", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(h["item"]["content"][0]["text"] for h in r.json()["data"])


def test_search_equals_a_single_servers(world):
    body = {"query": "pears", "mode": "text", "top_k": 100}
    for who in [("app", "ta"), ("ta", "alice"), ("tb", "carol")]:
        want = search_texts(world["single"], bearer(world, who), body)
        assert want and all("pears" in t for t in want), want
        for node in world["cluster"].nodes:
            assert search_texts(node, bearer(world, who), body) == want, (who, node.node_id)
    # Vector search over shards: the hits are the best by score across all of them.
    q = {"vector": [0.5] * 8, "mode": "vector", "top_k": 3}
    for node in world["cluster"].nodes:
        r = node.http.post("/v1/search", json=q, headers=bearer(world, ("app", "ta")))
        assert r.status_code == 200, r.text
        scores = [h["score"] for h in r.json()["data"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def feed(srv, headers, **params):
    events, after = [], None
    for _ in range(100):
        p = dict(params, limit=4)
        if after:
            p["after"] = after
        r = srv.http.get("/v1/changes", params=p, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        events += page["data"]
        after = page["next_cursor"]
        if not page["has_more"] and not page["data"]:
            break
    return events, after


def summary(events):
    return sorted((e["type"], e.get("key"), e.get("user_id")) for e in events)


def test_change_feed_equals_a_single_servers(world):
    for who in [("app", "ta"), ("ta", "bob"), ("tb", "carol")]:
        want, _ = feed(world["single"], bearer(world, who))
        assert want
        for node in world["cluster"].nodes:
            got, cursor = feed(node, bearer(world, who))
            assert summary(got) == summary(want), (who, node.node_id)
            assert cursor.startswith("m1")
            # Resuming from the end reads nothing; a new write then appears exactly once.
            r = node.http.get("/v1/changes", params={"after": cursor}, headers=bearer(world, who))
            assert r.status_code == 200 and r.json()["data"] == [], r.text
    # A single server's cursor means nothing to a cluster.
    r = world["cluster"].nodes[0].http.get("/v1/changes", params={"after": "c10000000000000001"},
                                          headers=bearer(world, ("app", "ta")))
    assert r.status_code == 400


def test_change_feed_long_poll_and_stream_see_new_writes(world):
    node = world["cluster"].nodes[1]
    h = bearer(world, ("ta", "dan"))
    _, cursor = feed(node, h)
    import threading
    got = {}

    def poll():
        got["r"] = node.http.get("/v1/changes", params={"after": cursor, "wait_ms": 20000}, headers=h)

    t = threading.Thread(target=poll)
    t.start()
    import time
    time.sleep(1)
    r = world["cluster"].nodes[2].http.put("/v1/kv/users/dan/late", content=b"x", headers=h)
    assert r.status_code in (200, 201)
    t.join(timeout=30)
    data = got["r"].json()["data"]
    assert [e.get("key") for e in data] == ["users/dan/late"], data
    # The stream resumes from a cursor and delivers the same event.
    with httpx.stream("GET", f"{node.base_url}/v1/changes/stream", params={"after": cursor},
                      headers=h, timeout=30) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data:"):
                assert "users/dan/late" in line
                break


# Queries whose answers do not depend on ids or times (which differ between the two sides).
SQL = [
    "SELECT count(*) AS n FROM items",
    "SELECT user_id, count(*) AS n FROM conversations GROUP BY user_id ORDER BY user_id",
    "SELECT c.user_id, count(*) AS n, min(i.text) AS first FROM conversations c"
    " JOIN items i ON i.conversation_id = c.id GROUP BY c.user_id ORDER BY c.user_id",
    "SELECT text FROM items WHERE text LIKE '%pears 1' ORDER BY text LIMIT 3",
    "SELECT key, value_text FROM memory WHERE key NOT LIKE '%/late' ORDER BY key",
    "SELECT op, count(*) AS n FROM changes WHERE key IS NULL OR key NOT LIKE '%/late'"
    " GROUP BY op ORDER BY op",
    "SELECT i.text FROM search('pears', mode => 'text', top_k => 100) s"
    " JOIN items i ON i.item_id = s.item_id ORDER BY i.text",
]


def sql_rows(srv, who, query, **headers):
    r = srv.http.post("/v1/sql", json={"query": query}, headers={**bearer(world_ref[0], who), **headers})
    assert r.status_code == 200, (query, r.text)
    return r.json()["rows"]


world_ref = []


def test_sql_equals_a_single_servers(world):
    """Tenant-wide and per-user SQL over shards (scans, joins, aggregates, search()) answers
    what a single server answers, through every node."""
    world_ref[:] = [world]
    for who in [("app", "ta"), ("app", "tb"), ("ta", "alice"), ("ta", "bob"), ("tb", "carol")]:
        for query in SQL:
            want = sql_rows(world["single"], who, query)
            for node in world["cluster"].nodes:
                assert sql_rows(node, who, query) == want, (who, query, node.node_id)
    # The plan reads other nodes' shards remotely.
    plan = sql_rows(world["cluster"].nodes[0], ("app", "ta"), "EXPLAIN SELECT count(*) FROM items")
    assert any("MnemoRemoteScan" in str(r) for r in plan), plan
    # Arrow answers stream from the shards as well.
    r = world["cluster"].nodes[1].http.post(
        "/v1/sql", json={"query": "SELECT text FROM items ORDER BY text"},
        headers={**bearer(world, ("app", "ta")), "Accept": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 200, r.text
    import pyarrow as pa
    table = pa.ipc.open_stream(r.content).read_all()
    want = sql_rows(world["single"], ("app", "ta"), "SELECT text FROM items ORDER BY text")
    assert table.column("text").to_pylist() == [row[0] for row in want]
    # The route between nodes is not open to clients.
    r = world["cluster"].nodes[0].http.post("/v1/cluster/shard-read", json={}, headers=bearer(world, ("app", "ta")))
    assert r.status_code == 404


def test_sql_isolation_across_shards(world):
    """user × user and tenant × tenant through SQL over shards: only the caller's rows."""
    world_ref[:] = [world]
    for node in world["cluster"].nodes:
        for t, users in USERS.items():
            for u in users:
                rows = sql_rows(node, (t, u), "SELECT DISTINCT user_id FROM items")
                assert rows == [[u]], (node.node_id, u, rows)
                keys = [r[0] for r in sql_rows(node, (t, u), "SELECT key FROM memory")]
                assert keys and all(k.startswith(f"users/{u}/") or k.startswith("shared/") for k in keys), keys
                texts = [r[0] for r in sql_rows(node, (t, u), "SELECT i.text FROM search('apples', mode => 'text', top_k => 100) s JOIN items i ON i.item_id = s.item_id")]
                assert texts and all(x.startswith(f"{u} ") for x in texts), texts
            users_seen = {r[0] for r in sql_rows(node, ("app", t), "SELECT DISTINCT user_id FROM conversations")}
            assert users_seen == set(users), (node.node_id, t, users_seen)
            keys = [r[0] for r in sql_rows(node, ("app", t), "SELECT key FROM memory")]
            others = [x for x in USERS if x != t]
            assert not any(k.startswith(f"users/{v}/") for o in others for v in USERS[o] for k in keys)


def test_isolation_matrix_across_shards(world):
    """user × user and tenant × tenant, through every node: nothing of another is visible."""
    convs = world["convs"]
    cluster = world["cluster"]
    for node in cluster.nodes:
        for owner_t, users in USERS.items():
            for owner in users:
                for cid in convs[(owner_t, owner, 1)]:
                    for t, vs in USERS.items():
                        for v in vs:
                            r = node.http.get(f"/v1/conversations/{cid}", headers=bearer(world, (t, v)))
                            want = 200 if (t, v) == (owner_t, owner) else 404
                            assert r.status_code == want, (node.node_id, owner, v, r.status_code)
                        app = node.http.get(f"/v1/conversations/{cid}", headers=bearer(world, ("app", t)))
                        assert app.status_code == (200 if t == owner_t else 404)
        # Memory of another user: not found; of another tenant: not there at all.
        r = node.http.get("/v1/kv/users/alice/note", headers=bearer(world, ("ta", "bob")))
        assert r.status_code == 404
        r = node.http.get("/v1/kv/users/alice/note", headers=bearer(world, ("app", "tb")))
        assert r.status_code == 404
        # Search and the feed of one user hold only that user's and shared data.
        texts = search_texts(node, bearer(world, ("ta", "bob")), {"query": "apples", "mode": "text", "top_k": 100})
        assert texts and all(t.startswith("bob ") for t in texts), texts
        events, _ = feed(node, bearer(world, ("ta", "bob")))
        assert all(e.get("user_id") in (None, "bob") for e in events)
        assert not any("alice" in (e.get("key") or "") for e in events)
        events, _ = feed(node, bearer(world, ("app", "tb")))
        assert not any((e.get("key") or "").startswith("users/alice") for e in events)


def audit_entries(srv, who, limit=3):
    """The whole audit log, a page of `limit` at a time."""
    out, after = [], None
    for _ in range(200):
        params = {"limit": limit, **({"after": after} if after is not None else {})}
        r = srv.http.get("/v1/admin/audit", params=params, headers=bearer(world_ref[0], who))
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["next_after"]
    raise AssertionError("the audit log did not end")


def test_audit_log_over_shards(world):
    """The audit log of a tenant over shards holds what a single server's holds (admin actions
    on users on every shard), pages with a cluster cursor, and shows no other tenant's."""
    world_ref[:] = [world]
    for srv in [world["single"], world["cluster"].nodes[2]]:
        for t, users in USERS.items():
            for u in users:
                r = srv.http.put(f"/v1/admin/users/{u}/consent", json={"research": True},
                                 headers=bearer(world, ("app", t)))
                assert r.status_code == 200, r.text
    for t in USERS:
        want = sorted((e["action"], e.get("target")) for e in audit_entries(world["single"], ("app", t)))
        assert len(want) >= len(USERS[t]), want
        for node in world["cluster"].nodes:
            got = audit_entries(node, ("app", t))
            assert sorted((e["action"], e.get("target")) for e in got) == want, (t, node.node_id)
            # Oldest first, and every entry names its shard.
            ats = [e["at_ms"] for e in got]
            assert ats == sorted(ats)
            assert all(isinstance(e["shard"], int) for e in got)
            assert {e.get("target") for e in got if e["action"] == "user.consent"} == set(USERS[t])
    # Resuming from an entry's cursor gives the entries after it.
    node = world["cluster"].nodes[0]
    full = audit_entries(node, ("app", "ta"), limit=1000)
    r = node.http.get("/v1/admin/audit", params={"after": full[1]["cursor"], "limit": 1000},
                      headers=bearer(world, ("app", "ta")))
    assert [e["cursor"] for e in r.json()["data"]] == [e["cursor"] for e in full[2:]]
    # A single server's sequence number is not a cursor of the cluster's log.
    r = node.http.get("/v1/admin/audit", params={"after": 3}, headers=bearer(world, ("app", "ta")))
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"

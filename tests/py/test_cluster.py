"""A cluster of three nodes over one store (S3 emulator) with leases in a real etcd: any node
answers any request; kill -9, SIGSTOP past the lease and etcd outages lose no acknowledged
write and never let two nodes acknowledge for one shard."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest

from cluster_util import Cluster
from conftest import httpx


@pytest.fixture
def cluster():
    c = Cluster(n=3, shards=8, ttl=3)
    try:
        yield c
    finally:
        c.close()


def user_client(node, user: str):
    return node.make_openai(default_headers={"X-Mnemo-User": user})


def test_every_node_answers_every_request(cluster):
    nodes = cluster.nodes
    owners = cluster.owners()
    assert len(owners) == 8 and set(owners.values()) == {"n1", "n2", "n3"}
    served_by = set()
    for i, user in enumerate([f"user-{k}" for k in range(6)]):
        writer = nodes[i % 3]
        conv = user_client(writer, user).conversations.create(
            items=[{"type": "message", "role": "user", "content": f"hello from {user}"}],
            metadata={"user": user})
        user_client(writer, user).conversations.items.create(
            conv.id, items=[{"type": "message", "role": "assistant", "content": f"hi {user}"}])
        seen = []
        for reader in nodes:
            c = user_client(reader, user)
            got = c.conversations.retrieve(conv.id)
            items = c.conversations.items.list(conv.id, order="asc")
            seen.append((got.model_dump(), [it.model_dump() for it in items.data]))
            r = reader.http.get(f"/v1/conversations/{conv.id}", headers={"X-Mnemo-User": user})
            served_by.add(r.headers["x-mnemo-node"])
        assert seen[0] == seen[1] == seen[2]
        assert [it["content"][0]["text"] for it in seen[0][1]] == [f"hello from {user}", f"hi {user}"]
        # Another user does not see it, through any node.
        for reader in nodes:
            r = reader.http.get(f"/v1/conversations/{conv.id}", headers={"X-Mnemo-User": "someone-else"})
            assert r.status_code == 404, r.text
    assert served_by == {"n1", "n2", "n3"}, "requests were forwarded to every owner"

    # Memory: shared keys and per-user keys, written through one node, read through all.
    for k in range(12):
        key = f"users/u{k}/profile" if k % 2 else f"shared/k{k}"
        r = nodes[k % 3].http.put(f"/v1/kv/{key}", content=f"v{k}".encode())
        assert r.status_code in (200, 201), r.text
    listings = []
    for node in nodes:
        for k in range(12):
            key = f"users/u{k}/profile" if k % 2 else f"shared/k{k}"
            r = node.http.get(f"/v1/kv/{key}")
            assert r.status_code == 200 and r.content == f"v{k}".encode(), (key, r.status_code)
        page = node.http.get("/v1/kv", params={"limit": 5}).json()
        keys = [e["key"] for e in page["data"]]
        while page["has_more"]:
            page = node.http.get("/v1/kv", params={"limit": 5, "after": page["next_after"]}).json()
            keys += [e["key"] for e in page["data"]]
        listings.append(keys)
    assert listings[0] == listings[1] == listings[2] == sorted(listings[0])
    assert len(listings[0]) == 12

    # A batch is atomic within one shard: keys of two shards are refused, one shard's pass.
    r = nodes[0].http.post("/v1/kv/batch", json={"operations": [
        {"op": "put", "key": "users/u1/a", "value": "1"}, {"op": "put", "key": "users/u3/b", "value": "2"}]})
    owners_differ = r.status_code == 400
    if owners_differ:
        assert r.json()["error"]["code"] == "cross_shard_batch"
    r = nodes[0].http.post("/v1/kv/batch", json={"operations": [
        {"op": "put", "key": "users/u1/a", "value": "1"}, {"op": "put", "key": "users/u1/b", "value": "2"}]})
    assert r.status_code == 200, r.text

    # Metrics per shard: how each node served each shard's requests.
    text = nodes[0].http.get("/metrics").text
    served = {line.split('served="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("mnemo_cluster_requests_total{")}
    assert {"local", "forwarded"} <= served, served
    held = [line for line in text.splitlines() if line.startswith("mnemo_cluster_shard_held{") and line.endswith(" 1")]
    assert len(held) == sum(1 for o in cluster.owners().values() if o == "n1"), held


class Load:
    """16 clients writing memory keys and conversation items through the live nodes; every
    acknowledged (2xx) write is recorded."""

    def __init__(self, cluster: Cluster, clients: int = 16):
        self.cluster = cluster
        self.acked_keys: dict = {}
        self.acked_items: list = []
        self.errors: dict = {}
        self.down: set = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.first_ok_after: dict = {}
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def live(self):
        return [n for n in self.cluster.nodes if n.node_id not in self.down]

    def run(self, i: int) -> None:
        rnd = random.Random(i)
        http = {}
        convs = {}
        n = 0
        while not self.stop.is_set():
            node = rnd.choice(self.live())
            c = http.get(node.node_id)
            if c is None:
                c = http[node.node_id] = httpx.Client(base_url=node.base_url, timeout=60)
            user = f"load-{i}-{n % 4}"
            n += 1
            try:
                if n % 2:
                    key = f"users/{user}/k{n}"
                    r = c.put(f"/v1/kv/{key}", content=f"{i}:{n}".encode())
                    if r.status_code in (200, 201):
                        with self.lock:
                            self.acked_keys[key] = f"{i}:{n}"
                else:
                    conv = convs.get(user)
                    if conv is None:
                        r = c.post("/v1/conversations", json={}, headers={"X-Mnemo-User": user})
                        if r.status_code == 200:
                            convs[user] = r.json()["id"]
                    else:
                        text = f"item {i}:{n}"
                        r = c.post(f"/v1/conversations/{conv}/items", headers={"X-Mnemo-User": user},
                                   json={"items": [{"type": "message", "role": "user", "content": text}]})
                        if r.status_code == 200:
                            with self.lock:
                                self.acked_items.append((user, conv, r.json()["data"][0]["id"], text))
                if r.status_code >= 300:
                    with self.lock:
                        self.errors[r.status_code] = self.errors.get(r.status_code, 0) + 1
            except httpx.HTTPError as e:
                with self.lock:
                    self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
                time.sleep(0.05)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def verify(self) -> None:
        """Every acknowledged write is there, read through a live node."""
        node = self.live()[0]
        c = httpx.Client(base_url=node.base_url, timeout=60)
        missing = []
        for key, value in self.acked_keys.items():
            r = c.get(f"/v1/kv/{key}")
            if r.status_code != 200 or r.text != value:
                missing.append((key, r.status_code))
        for user, conv, item, text in self.acked_items:
            r = c.get(f"/v1/conversations/{conv}/items/{item}", headers={"X-Mnemo-User": user})
            if r.status_code != 200 or r.json()["content"][0]["text"] != text:
                missing.append((item, r.status_code))
        assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"
        assert len(self.acked_keys) > 50 and len(self.acked_items) > 20, (len(self.acked_keys), len(self.acked_items))


def wait_owned_by(cluster, alive, shards, timeout):
    deadline = time.monotonic() + timeout
    ids = {n.node_id for n in alive}
    while time.monotonic() < deadline:
        owners = cluster.owners(alive[0])
        if all(owners.get(s) in ids for s in shards):
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"shards {shards} not taken over: {cluster.owners(alive[0])}")


def test_kill9_under_load_loses_nothing(cluster):
    victim = cluster.nodes[2]
    lost = [s for s, o in cluster.owners().items() if o == victim.node_id]
    assert lost
    with Load(cluster) as load:
        time.sleep(3)
        load.down.add(victim.node_id)
        killed = time.monotonic()
        victim.kill9()
        alive = cluster.nodes[:2]
        moved = wait_owned_by(cluster, alive, lost, timeout=cluster.ttl + 30)
        print(f"shards {lost} served again {moved - killed:.1f} s after kill -9 (TTL {cluster.ttl} s)")
        time.sleep(3)
    print("load:", len(load.acked_keys), "keys,", len(load.acked_items), "items, errors", load.errors)
    load.verify()
    # Every shard is served by the survivors.
    cluster.wait_settled(alive=cluster.nodes[:2])


def test_paused_node_acknowledges_nothing_for_shards_it_lost(cluster):
    victim = cluster.nodes[0]
    others = cluster.nodes[1:]
    lost = [s for s, o in cluster.owners().items() if o == victim.node_id]
    # A user whose shard the victim owns.
    user = next(u for u in (f"p{k}" for k in range(1000))
                if shard_of_user(cluster, u) in lost)
    direct = httpx.Client(base_url=victim.base_url, timeout=60)
    with Load(cluster) as load:
        time.sleep(2)
        load.down.add(victim.node_id)
        victim.pause()
        # A write sent to the paused node itself hangs; it must not be acknowledged once the
        # node resumes without its lease.
        result = {}

        def write_to_paused():
            try:
                r = direct.put(f"/v1/kv/users/{user}/during-pause", content=b"x")
                result["status"] = r.status_code
                result["node"] = r.headers.get("x-mnemo-node")
            except httpx.HTTPError as e:
                result["error"] = repr(e)

        t = threading.Thread(target=write_to_paused)
        t.start()
        wait_owned_by(cluster, others, lost, timeout=cluster.ttl + 30)
        # The others write to the moved shards meanwhile.
        r = others[0].http.put(f"/v1/kv/users/{user}/after-move", content=b"y")
        assert r.status_code in (200, 201), r.text
        victim.resume()
        t.join(timeout=60)
        # The paused node must not acknowledge as owner of a shard it lost.
        if result.get("status", 0) < 300 and "status" in result:
            assert result["node"] != victim.node_id, result
        time.sleep(cluster.ttl + 2)
    load.verify()
    # After resuming, the victim answers again (forwarding, or owning the shard anew).
    r = direct.get(f"/v1/kv/users/{user}/after-move")
    assert r.status_code == 200 and r.content == b"y", (r.status_code, r.text)


def shard_of_user(cluster, user: str) -> int:
    import hashlib
    h = hashlib.sha256(b"default" + b"\x00" + user.encode()).digest()
    return int.from_bytes(h[:8], "big") % cluster.shards


def test_etcd_restart_and_outage(cluster):
    with Load(cluster) as load:
        time.sleep(2)
        # A quick restart: leases survive (etcd keeps them), service resumes.
        cluster.etcd.stop()
        time.sleep(0.5)
        cluster.etcd.start()
        time.sleep(cluster.ttl + 2)
        before = len(load.acked_keys)
        time.sleep(2)
        assert len(load.acked_keys) > before, f"no writes after etcd restart: {load.errors}"
        # Down past the TTL: every node stops acknowledging.
        cluster.etcd.stop()
        stopped = time.monotonic()
        time.sleep(cluster.ttl + 1)
        frozen_at = time.monotonic()
        with load.lock:
            n_keys, n_items = len(load.acked_keys), len(load.acked_items)
        time.sleep(3)
        with load.lock:
            assert (len(load.acked_keys), len(load.acked_items)) == (n_keys, n_items), \
                "a node acknowledged a write with etcd down past the lease TTL"
        for node in cluster.nodes:
            r = node.http.put("/v1/kv/users/x/outage", content=b"z")
            assert r.status_code == 503, (node.node_id, r.status_code, r.text)
        print(f"writes refused from {frozen_at - stopped:.1f} s after etcd stopped")
        cluster.etcd.start()
        cluster.wait_settled(timeout=60)
        time.sleep(3)
        with load.lock:
            assert len(load.acked_keys) > n_keys, f"no recovery: {load.errors}"
    load.verify()


def eventually(f, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def test_reader_node_serves_reads_and_forwards_writes(cluster):
    import subprocess

    from cluster_util import Node
    from conftest import mnemo_bin

    reader = Node("r1", cluster.etcd, cluster.store_url, cluster.shards, cluster.ttl,
                  ["--role", "reader", "--follow-interval-ms", "200"], cluster.name)
    reader.start()
    try:
        # Until it follows a shard, a reader forwards that shard's reads to the owner.
        assert eventually(lambda: len(reader.status().get("replicas", [])) == cluster.shards, timeout=60), \
            reader.status()
        writer = cluster.nodes[0]
        for k in range(8):
            r = writer.http.put(f"/v1/kv/users/r{k}/v", content=f"value {k}".encode())
            assert r.status_code in (200, 201), r.text
        conv = user_client(writer, "reading-user").conversations.create(
            items=[{"type": "message", "role": "user", "content": "read me from a replica"}])
        # Reads through the reader are answered by the reader itself, from its replicas,
        # with a lag bound; they catch up with what the writers acknowledged.
        for k in range(8):
            got = eventually(lambda: (lambda r: r if r.status_code == 200 else None)(
                reader.http.get(f"/v1/kv/users/r{k}/v")))
            assert got is not None, f"users/r{k}/v never reached the reader"
            assert got.content == f"value {k}".encode()
            assert got.headers["x-mnemo-node"] == "r1"
            assert int(got.headers["x-mnemo-replica-lag-ms"]) >= 0
        items = eventually(lambda: (lambda r: r.json()["data"] if r.status_code == 200 else None)(
            reader.http.get(f"/v1/conversations/{conv.id}/items", headers={"X-Mnemo-User": "reading-user"})))
        assert items and items[0]["content"][0]["text"] == "read me from a replica"
        # Search and SQL run on the reader too.
        hits = eventually(lambda: reader.http.post(
            "/v1/search", json={"query": "replica", "mode": "text"},
            headers={"X-Mnemo-User": "reading-user"}).json()["data"])
        assert hits and hits[0]["conversation_id"] == conv.id
        r = reader.http.post("/v1/sql", json={"query": "SELECT count(*) AS n FROM items"},
                             headers={"X-Mnemo-User": "reading-user"})
        assert r.status_code == 200 and r.json()["rows"] == [[1]] and r.headers["x-mnemo-node"] == "r1", r.text
        # A write through the reader goes to the owner; read-your-writes goes there too.
        r = reader.http.put("/v1/kv/users/r0/w", content=b"via the reader")
        assert r.status_code in (200, 201) and r.headers["x-mnemo-node"] != "r1", r.headers
        r = reader.http.get("/v1/kv/users/r0/w", headers={"X-Mnemo-Consistency": "strong"})
        assert r.status_code == 200 and r.content == b"via the reader" and r.headers["x-mnemo-node"] != "r1"
        # The reader owns nothing, and status lists it with its replicas' lag.
        st = reader.status()
        assert [x["id"] for x in st["readers"]] == ["r1"]
        assert all(o["node"] != "r1" for o in st["owners"])
        assert len(st["replicas"]) == cluster.shards
        def cli_status():
            out = subprocess.run([mnemo_bin(), "cluster", "status", "--cluster-etcd", cluster.etcd.url,
                                  "--cluster-name", cluster.name, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out)

        # The reader registers its lag bound once it follows every shard.
        status = eventually(lambda: (lambda s: s if s["readers"] and "lag_ms" in s["readers"][0] else None)(
            cli_status()))
        assert status, cli_status()
        assert [n["id"] for n in status["nodes"]] == ["n1", "n2", "n3"]
        assert [n["id"] for n in status["readers"]] == ["r1"]
        assert len(status["owners"]) == cluster.shards and all(o["node"] for o in status["owners"])
        text = subprocess.run([mnemo_bin(), "cluster", "status", "--cluster-etcd", cluster.etcd.url,
                               "--cluster-name", cluster.name],
                              check=True, capture_output=True, text=True).stdout
        assert "every shard has an owner" in text and "lag at most" in text
    finally:
        reader.close()

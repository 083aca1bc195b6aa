"""Research export on a cluster: a job started through any node reads every shard and writes one
dataset equal to a single server's export of the same data; incremental runs follow each
shard's log; jobs stay within their tenant and need `admin`; a job whose node is killed is run
again by the node that takes the tenant's shard over."""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster_util import Cluster, need_cluster_parts
from conftest import MnemoServer
from test_cluster_fanout import make_key
from test_export import wait_job

# Who consents to research: alice, bob and dan yes; erin no; frank never answered (opt-in).
USERS = {"ta": {"alice": True, "bob": True, "dan": True, "erin": False, "frank": None},
         "tb": {"carol": True}}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def say(srv, key: str, texts: list) -> str:
    items = [{"type": "message", "role": "user", "content": t} for t in texts]
    r = srv.http.post("/v1/conversations", json={"items": items}, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def world():
    """A single server and a 3-node cluster with the same keys and the same data."""
    need_cluster_parts()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-export-"))
    keyfile = tmp / "keys.json"
    keys = {("app", t): make_key(keyfile, t) for t in USERS}
    for t, users in USERS.items():
        for u in users:
            keys[(t, u)] = make_key(keyfile, t, u)
    keys[("ta", "alice", "no-admin")] = make_key(keyfile, "ta", "alice", ["Conversations.ReadWrite"])
    auth = ["--auth", "keys", "--api-keys-file", str(keyfile)]
    single = MnemoServer(name="export-single", extra_args=auth)
    single.start()
    cluster = Cluster(n=3, shards=8, ttl=5, extra_args=auth)
    convs = {}
    try:
        for side, srvs in (("single", [single]), ("cluster", cluster.nodes)):
            i = 0
            for t, users in USERS.items():
                for u, research in users.items():
                    for c in range(2):
                        srv = srvs[i % len(srvs)]
                        i += 1
                        convs[(side, u, c)] = say(srv, keys[(t, u)], [
                            f"{u} asks about pears {c}", f"write to {u}@example.com", f"{u} thanks {c}"])
                    if research is not None:
                        r = srvs[i % len(srvs)].http.put(
                            f"/v1/admin/users/{u}/consent", json={"research": research},
                            headers=bearer(keys[("app", t)]))
                        assert r.status_code == 200, r.text
        yield {"single": single, "cluster": cluster, "keys": keys, "convs": convs, "tmp": tmp}
    finally:
        single.close()
        cluster.close()


def run_job(srv, key: str, path: str, body: dict, via=None, timeout: float = 120) -> dict:
    r = srv.http.post(path, json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    return wait_job(via or srv, r.json()["id"], bearer(key), timeout)


def read(dataset: Path) -> tuple[dict, pa.Table, pa.Table]:
    m = json.loads((dataset / "_manifest.json").read_text())

    def table(name):
        parts = [pq.read_table(io.BytesIO((dataset / f["path"]).read_bytes()))
                 for f in m["files"] if f["table"] == name]
        return pa.concat_tables(parts) if parts else None
    return m, table("conversations"), table("items")


def rows(items: pa.Table) -> list:
    """What a dataset says, without pseudonyms (each store has its own key)."""
    if items is None:
        return []
    d = items.to_pydict()
    return sorted(zip(d["role"], d["text"]))


def test_export_equals_a_single_servers(world):
    single, nodes = world["single"], world["cluster"].nodes
    app = world["keys"][("app", "ta")]
    want_dir, got_dir = world["tmp"] / "single-ds", world["tmp"] / "cluster-ds"
    job = run_job(single, app, "/v1/admin/exports", {"to": f"file://{want_dir}"})
    assert job["status"] == "succeeded", job
    # Started through one node, followed through another.
    job = run_job(nodes[1], app, "/v1/admin/exports", {"to": f"file://{got_dir}"}, via=nodes[2])
    assert job["status"] == "succeeded", job
    for node in nodes:
        r = node.http.get(f"/v1/admin/exports/{job['id']}", headers=bearer(app))
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    wm, wc, wi = read(want_dir)
    gm, gc, gi = read(got_dir)
    assert rows(gi) == rows(wi) and len(rows(gi)) == 3 * 2 * 3, rows(gi)
    assert gc.num_rows == wc.num_rows == 6
    assert len(set(gi["user"].to_pylist())) == 3
    text = "\n".join(t for _, t in rows(gi))
    assert "@example.com" not in text and "carol" not in text and "erin" not in text
    # One position per shard of the tenant's change log.
    assert sorted(gm["checkpoint"]["log"]) == [f"ta@{n:05}" for n in range(8)], gm["checkpoint"]
    assert job["rows"] == {"conversations": 6, "items": 18}

    # More items, an erasure and new consent: an incremental run on each side agrees again.
    for side, srv in (("single", single), ("cluster", nodes[0])):
        r = srv.http.post(f"/v1/conversations/{world['convs'][(side, 'bob', 0)]}/items",
                          json={"items": [{"type": "message", "role": "user", "content": "bob adds plums"}]},
                          headers=bearer(world["keys"][("ta", "bob")]))
        assert r.status_code == 200, r.text
        r = srv.http.delete("/v1/admin/users/alice", headers=bearer(app))
        assert r.status_code == 200, r.text
        r = srv.http.put("/v1/admin/users/frank/consent", json={"research": True}, headers=bearer(app))
        assert r.status_code == 200, r.text
    job = run_job(single, app, "/v1/admin/exports", {"to": f"file://{want_dir}", "incremental": True})
    assert job["status"] == "succeeded" and job["outcome"]["mode"] == "incremental", job
    job = run_job(nodes[0], app, "/v1/admin/exports", {"to": f"file://{got_dir}", "incremental": True})
    assert job["status"] == "succeeded" and job["outcome"]["mode"] == "incremental", job
    _, _, wi = read(want_dir)
    _, _, gi = read(got_dir)
    assert rows(gi) == rows(wi), (rows(gi), rows(wi))
    texts = [t for _, t in rows(gi)]
    assert "bob adds plums" in texts and "frank thanks 0" in texts
    assert not any(t.startswith("alice") for t in texts)

    # A refresh through the cluster.
    job = run_job(nodes[2], app, "/v1/admin/exports/refresh", {"to": f"file://{got_dir}", "grace_seconds": 0})
    assert job["status"] == "succeeded" and job["outcome"]["mode"] == "refresh", job


def test_export_jobs_are_per_tenant_and_need_admin(world):
    nodes = world["cluster"].nodes
    keys = world["keys"]
    ds = world["tmp"] / "tb-ds"
    job = run_job(nodes[0], keys[("app", "tb")], "/v1/admin/exports", {"to": f"file://{ds}"})
    assert job["status"] == "succeeded", job
    _, _, items = read(ds)
    texts = [t for _, t in rows(items)]
    assert texts and all("carol" in t or "[EMAIL]" in t for t in texts), texts
    for node in nodes:
        # Another tenant's admin does not see the job; a user without admin starts none.
        r = node.http.get(f"/v1/admin/exports/{job['id']}", headers=bearer(keys[("app", "ta")]))
        assert r.status_code == 404, r.text
        r = node.http.post("/v1/admin/exports", json={"to": f"file://{ds}-x"},
                           headers=bearer(keys[("ta", "alice", "no-admin")]))
        assert r.status_code == 403, r.text
    # Re-exporting a checkpoint is a single store's: each shard is read at its own point.
    r = nodes[1].http.post("/v1/admin/exports", json={"to": f"file://{ds}", "checkpoint": "x"},
                           headers=bearer(keys[("app", "tb")]))
    assert r.status_code == 400 and "cluster" in r.json()["error"]["message"], r.text


def test_a_job_whose_node_is_killed_runs_on_the_new_owner(world):
    cluster = world["cluster"]
    app = world["keys"][("app", "ta")]
    ds = world["tmp"] / "failover-ds"
    r = cluster.nodes[0].http.post("/v1/admin/exports", json={"to": f"file://{ds}"}, headers=bearer(app))
    assert r.status_code == 202, r.text
    owner = r.headers["x-mnemo-node"]
    victim = next(n for n in cluster.nodes if n.node_id == owner)
    victim.kill9()
    killed = time.time()
    alive = [n for n in cluster.nodes if n is not victim]
    cluster.wait_settled(alive=alive)
    job = wait_job(alive[0], r.json()["id"], bearer(app), timeout=180)
    assert job["status"] == "succeeded", job
    # The run that finished started after the kill: the new owner ran the job again.
    assert job["started_at"] >= int(killed), (job, killed)
    _, _, items = read(ds)
    assert len(rows(items)) == job["rows"]["items"] > 0

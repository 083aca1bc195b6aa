"""The built-in embedder on a cluster (`mnemo serve --cluster-etcd … --embedding-model DIR`):
one model per node serves all of its shards. Text-only items written through one node are
found by meaning through another, for each user and tenant-wide; after a node hands its
shards over, the new owner finds them by meaning too.

Needs the model (env MNEMO_MODEL_DIR, set by scripts/test.sh) and the cluster's parts (etcd,
the S3 emulator)."""

from __future__ import annotations

import os
import time

import pytest

from cluster_util import Cluster

MODEL_DIR = os.environ.get("MNEMO_MODEL_DIR")
pytestmark = pytest.mark.skipif(
    not MODEL_DIR,
    reason="MNEMO_MODEL_DIR is not set: run scripts/fetch-model.sh and export the directory it prints")

TRAVEL = "Flying into Portugal's capital next week"
DISTRACTORS = [
    "My cat knocked the vase off the kitchen table",
    "The quarterly revenue report is due on Friday",
    "Water the tomatoes in the garden every morning",
]
QUERY = "trip to Lisbon"
USERS = [f"u{i}" for i in range(6)]


def strong_search(node, body, user=None, deadline_s=120.0):
    """A strong vector search, retried while background embedding is behind (503)."""
    body = dict(body, consistency="strong")
    headers = {"X-Mnemo-User": user} if user else {}
    deadline = time.monotonic() + deadline_s
    while True:
        r = node.http.post("/v1/search", json=body, headers=headers, timeout=30.0)
        if r.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        assert r.status_code == 200, r.text
        return r.json()["data"]


def texts(hits):
    return [h["item"]["content"][0]["text"] for h in hits]


def test_cluster_nodes_embed_and_find_by_meaning(tmp_path):
    cluster = Cluster(n=2, shards=8, ttl=3, extra_args=["--embedding-model", MODEL_DIR])
    try:
        a, b = cluster.nodes
        owners = cluster.owners()
        assert set(owners.values()) == {"n1", "n2"}, owners
        travel = {}
        for u in USERS:
            items = [{"type": "message", "role": "user", "content": t} for t in DISTRACTORS[:2] + [TRAVEL]]
            r = a.http.post("/v1/conversations", json={"items": items}, headers={"X-Mnemo-User": u})
            assert r.status_code == 200, r.text
            travel[u] = r.json()["id"]
        # Each user's search, through the other node: the travel item first, by meaning alone.
        for u in USERS:
            hits = strong_search(b, {"query": QUERY, "mode": "vector", "top_k": 3}, user=u)
            assert texts(hits)[0] == TRAVEL, (u, texts(hits))
            assert hits[0]["conversation_id"] == travel[u]
        # Tenant-wide: the best hits over every shard are the users' travel items.
        hits = strong_search(a, {"query": QUERY, "mode": "vector", "top_k": len(USERS)})
        assert texts(hits) == [TRAVEL] * len(USERS), texts(hits)
        # A node hands its shards over: the other one finds the same by meaning.
        assert a.terminate() == 0
        cluster.wait_settled(alive=[b])
        for u in USERS:
            hits = strong_search(b, {"query": QUERY, "mode": "vector", "top_k": 3}, user=u)
            assert texts(hits)[0] == TRAVEL, (u, texts(hits))
        # New text-only writes on the moved shards are embedded by their new owner.
        for u in USERS:
            r = b.http.post(f"/v1/conversations/{travel[u]}/items",
                            json={"items": [{"type": "message", "role": "user", "content": "Booked a flight to Lisboa"}]},
                            headers={"X-Mnemo-User": u})
            assert r.status_code == 200, r.text
        for u in USERS:
            hits = strong_search(b, {"query": "airplane ticket for Portugal", "mode": "vector", "top_k": 5}, user=u)
            assert {TRAVEL, "Booked a flight to Lisboa"} <= set(texts(hits)[:2]), (u, texts(hits))
    finally:
        cluster.close()

"""Replicas: `mnemo replicate` keeps a consistent copy of a live store, `mnemo serve --read-only`
serves it, `mnemo promote` turns it into a writable store.

Under a write load, every opening of the replica must hold a prefix of the acknowledged writes:
each writer's items 0..k-1 and nothing after a gap, and never a write without every write that
was acknowledged before it was sent. After the primary dies, the promoted replica must hold
every write acknowledged before the last replicated point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import MnemoServer, httpx, mnemo_bin, store_kind

pytestmark = pytest.mark.storage

WRITERS = 4


def now_ms() -> int:
    return int(time.time() * 1000)


class Load:
    """WRITERS threads, each appending numbered items to its own conversation."""

    def __init__(self, server: MnemoServer):
        self.server = server
        self.convs: List[str] = []
        self.sent: Dict[Tuple[int, int], int] = {}     # (writer, i) -> ms when sent
        self.acked: Dict[Tuple[int, int], int] = {}    # (writer, i) -> ms when acknowledged
        self.stop = threading.Event()
        self.threads: List[threading.Thread] = []
        self.errors: List[str] = []
        http = server.new_http()
        for w in range(WRITERS):
            r = http.post("/v1/conversations", json={"metadata": {"writer": str(w)}})
            assert r.status_code == 200, r.text
            self.convs.append(r.json()["id"])

    def start(self) -> "Load":
        for w in range(WRITERS):
            t = threading.Thread(target=self._run, args=(w,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run(self, w: int) -> None:
        http = self.server.new_http(timeout=20.0)
        i = 0
        while not self.stop.is_set():
            self.sent[(w, i)] = now_ms()
            try:
                r = http.post(f"/v1/conversations/{self.convs[w]}/items",
                              json={"items": [{"type": "message", "role": "user", "content": f"w{w}-{i}"}]})
            except httpx.HTTPError:
                return  # the primary died: this write's outcome is unknown
            if r.status_code != 200:
                if not self.stop.is_set():
                    self.errors.append(r.text)
                return
            self.acked[(w, i)] = now_ms()
            i += 1

    def halt(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def visible(server: MnemoServer, conv: str) -> List[str]:
    http = server.new_http(timeout=30.0)
    out: List[str] = []
    after = None
    while True:
        params = {"limit": 100, "order": "asc"}
        if after:
            params["after"] = after
        r = http.get(f"/v1/conversations/{conv}/items", params=params)
        if r.status_code == 404:
            return out
        assert r.status_code == 200, r.text
        page = r.json()
        out += [it["content"][0]["text"] for it in page["data"]]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def check_prefix(load: Load, seen: Dict[int, List[str]], require_before: Optional[int] = None) -> int:
    """Each writer's visible items are w-0..w-(k-1); no visible write lacks a write acknowledged
    before it was sent; with `require_before`, every write acknowledged before it is visible."""
    counts = {}
    for w, texts in seen.items():
        assert texts == [f"w{w}-{i}" for i in range(len(texts))], f"writer {w}: not a prefix: {texts[:5]}…"
        counts[w] = len(texts)
    acked = dict(load.acked)
    sent = dict(load.sent)
    # Acknowledgement times grow with i for each writer, so the earliest acknowledged write
    # that is not visible is each writer's first missing one; no visible write may have been
    # sent after any of those was acknowledged.
    first_missing = {w2: acked[(w2, k)] for w2, k in counts.items() if (w2, k) in acked}
    for w, k in counts.items():
        if k == 0:
            continue
        last_sent = sent[(w, k - 1)]
        for w2, at in first_missing.items():
            assert at >= last_sent, (
                f"w{w}-{k - 1} visible without w{w2}-{counts[w2]}, acknowledged before it was sent")
    if require_before is not None:
        for (w, i), acked in list(load.acked.items()):
            if acked < require_before:
                assert i < counts[w], (
                    f"w{w}-{i} acknowledged at {acked}, before the replicated point {require_before}, "
                    f"but missing (visible: {counts}, sent at {load.sent[(w, i)]})")
    return sum(counts.values())


def source_url(primary: MnemoServer) -> str:
    return primary.store_url or str(primary.data_dir / "store")


def replica_url(kind: str, root: Path) -> str:
    if kind == "local":
        return f"file://{root / 'replica'}"
    if kind == "s3":
        return f"s3://{os.environ['MNEMO_TEST_S3_BUCKET']}/replica-{uuid.uuid4().hex[:12]}"
    return f"az://{os.environ['MNEMO_TEST_AZ_CONTAINER']}/replica-{uuid.uuid4().hex[:12]}"


class Replicator:
    def __init__(self, src: str, dst: str, log: Path):
        self.proc = subprocess.Popen(
            [mnemo_bin(), "replicate", "--from", src, "--to", dst, "--watch", "--interval-ms", "200", "--json"],
            stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)
        self.rounds: List[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.rounds.append(json.loads(line))

    def wait_round_after(self, ms: int, timeout: float = 60.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = [r for r in self.rounds if r["as_of_ms"] > ms]
            if done:
                return done[0]
            assert self.proc.poll() is None, "the replicator exited"
            time.sleep(0.05)
        raise AssertionError("no replication round finished in time")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.reader.join(timeout=5)


def open_replica(url: str, name: str) -> MnemoServer:
    # A follow interval of an hour: the replica is read at the state it had when opened.
    srv = MnemoServer(name=name, store_url=url, extra_args=["--read-only", "--follow-interval-ms", "3600000"])
    srv.start()
    return srv


@pytest.mark.parametrize("target", ["local", "remote"])
def test_replica_under_load_then_promote(target):
    kind = store_kind()
    if target == "remote":
        if kind != "file":
            pytest.skip("a remote target is covered from the local store")
        if not os.environ.get("MNEMO_TEST_S3_BUCKET"):
            pytest.skip("needs the S3 emulator")
        tkind = "s3"
    else:
        tkind = "local"
    root = Path(tempfile.mkdtemp(prefix="replica-"))
    dst = replica_url(tkind, root)
    primary = MnemoServer(name="primary")
    primary.start()
    load = Load(primary).start()
    rep = Replicator(source_url(primary), dst, root / "replicate.log")
    try:
        openings = 0
        for n in range(4):
            time.sleep(1.0)
            rep.wait_round_after(now_ms() - 1)
            replica = open_replica(dst, f"replica-{n}")
            try:
                seen = {w: visible(replica, c) for w, c in enumerate(load.convs)}
            finally:
                replica.close()
            check_prefix(load, seen)
            openings += 1
            # Writes are refused by a read-only server.
        assert not load.errors, load.errors[:3]
        if tkind == "local" and kind == "file":
            # Run until the log has moved to a second segment, so that shipping a segment that
            # stopped growing is covered too.
            seg_dir = root / "replica" / "db" / "local-wal"
            deadline = time.time() + 120
            while len(list(seg_dir.glob("*.wal"))) < 2:
                assert time.time() < deadline, "the source's log never reached a second segment"
                time.sleep(0.5)
        # Disaster: the primary dies under load; the replicator keeps its last round.
        primary.kill9()
        load.halt()
        time.sleep(0.5)
        rep.stop()
        last = rep.rounds[-1]
        promoted = subprocess.run([mnemo_bin(), "promote", "--store", dst, "--data-dir", str(root / "scratch")],
                                  capture_output=True, text=True, timeout=120)
        assert promoted.returncode == 0, promoted.stderr
        report = json.loads(promoted.stdout)
        assert report["round"] == last
        srv = MnemoServer(name="promoted", store_url=dst)
        srv.start()
        try:
            seen = {w: visible(srv, c) for w, c in enumerate(load.convs)}
            total = check_prefix(load, seen, require_before=last["as_of_ms"])
            assert total > 0
            # The promoted store takes writes.
            r = srv.new_http().post(f"/v1/conversations/{load.convs[0]}/items",
                                    json={"items": [{"type": "message", "role": "user", "content": "after"}]})
            assert r.status_code == 200, r.text
        finally:
            srv.close()
        assert openings == 4
    finally:
        load.halt()
        if rep.proc.poll() is None:
            rep.stop()
        primary.close()
        shutil.rmtree(root, ignore_errors=True)


def test_read_only_server_follows_and_refuses_writes(tmp_path):
    primary = MnemoServer(name="primary-ro")
    primary.start()
    dst = f"file://{tmp_path / 'replica'}"
    try:
        http = primary.new_http()
        conv = http.post("/v1/conversations", json={"items": [{"type": "message", "role": "user", "content": "one"}]}).json()["id"]
        r = subprocess.run([mnemo_bin(), "replicate", "--from", source_url(primary), "--to", dst, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # Without --read-only a replica is refused: it must be promoted first.
        bad = subprocess.run([mnemo_bin(), "serve", "--store", dst, "--data-dir", str(tmp_path / "d"),
                              "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "--read-only" in bad.stderr
        replica = MnemoServer(name="ro", store_url=dst, extra_args=["--read-only", "--follow-interval-ms", "100"])
        replica.start()
        try:
            rh = replica.new_http()
            assert visible(replica, conv) == ["one"]
            for method, path, body in [("POST", "/v1/conversations", {}),
                                       ("POST", f"/v1/conversations/{conv}/items",
                                        {"items": [{"type": "message", "role": "user", "content": "x"}]}),
                                       ("PUT", "/v1/kv/k", None),
                                       ("DELETE", f"/v1/conversations/{conv}", None)]:
                resp = rh.request(method, path, json=body) if body is not None else rh.request(method, path, content=b"v")
                assert resp.status_code == 403, (path, resp.text)
                assert resp.json()["error"]["code"] == "read_only"
            assert visible(replica, conv) == ["one"]
            # The primary moves on; the next round reaches the read-only server, search included.
            http.post(f"/v1/conversations/{conv}/items",
                      json={"items": [{"type": "message", "role": "user", "content": "two zebra"}]})
            r = subprocess.run([mnemo_bin(), "replicate", "--from", source_url(primary), "--to", dst, "--json"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            deadline = time.time() + 20
            while visible(replica, conv) != ["one", "two zebra"]:
                assert time.time() < deadline, visible(replica, conv)
                time.sleep(0.1)
            while True:
                hits = rh.post("/v1/search", json={"query": "zebra", "mode": "text"}).json().get("data", [])
                if hits:
                    break
                assert time.time() < deadline, "search never saw the replicated item"
                time.sleep(0.1)
        finally:
            replica.close()
    finally:
        primary.close()


def test_replicate_refuses_a_database_that_is_not_its_replica(tmp_path):
    a = MnemoServer(name="a")
    a.start()
    b = MnemoServer(name="b", store_url=None)
    b.start()
    try:
        a.new_http().post("/v1/conversations", json={})
        b.new_http().post("/v1/conversations", json={})
        b_store = str(b.data_dir / "store")
        b.terminate()
        r = subprocess.run([mnemo_bin(), "replicate", "--from", source_url(a), "--to", b_store],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "not a replica" in r.stderr
        r = subprocess.run([mnemo_bin(), "promote", "--store", b_store, "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "not a replica" in r.stderr
    finally:
        a.close()
        b.close()

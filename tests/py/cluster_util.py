"""A cluster for the tests: a real etcd (Debian's etcd-server) and mnemo nodes over one store
in the S3 emulator, everything on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from conftest import MnemoServer, free_port, httpx

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def need_cluster_parts() -> None:
    """Skips (locally) or fails (under CI) when etcd or the S3 emulator is missing."""
    missing = []
    if not os.path.exists(ETCD_BIN):
        missing.append("etcd (Debian: etcd-server)")
    if not os.environ.get("MNEMO_TEST_S3_BUCKET"):
        missing.append("the S3 emulator (MNEMO_TEST_S3_BUCKET)")
    if missing:
        msg = "cluster tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class Etcd:
    """One etcd member; stop() and start() keep its data and ports."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> "Etcd":
        log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [ETCD_BIN, "--name", "t", "--data-dir", str(self.dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", f"t=http://127.0.0.1:{self.peer_port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("etcd did not start:\n" + (self.dir / "etcd.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Node(MnemoServer):
    """A cluster node: `mnemo serve --cluster-etcd … --node-id … --advertise …`."""

    def __init__(self, node_id: str, etcd: Etcd, store_url: str, shards: int, ttl: int,
                 extra_args: Optional[list] = None, cluster_name: str = "mnemo"):
        super().__init__(name=f"node-{node_id}", store_url=store_url, extra_args=extra_args)
        self.node_id = node_id
        self.etcd = etcd
        self.shards = shards
        self.ttl = ttl
        self.cluster_name = cluster_name

    def command(self) -> list:
        return super().command() + [
            "--cluster-etcd", self.etcd.url, "--cluster-name", self.cluster_name,
            "--node-id", self.node_id, "--advertise", self.base_url,
            "--shards", str(self.shards), "--lease-ttl-secs", str(self.ttl)]

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def status(self) -> dict:
        return httpx.get(f"{self.base_url}/v1/cluster/status", timeout=5).json()


class Cluster:
    """etcd plus `n` nodes over one fresh store prefix in the S3 emulator."""

    def __init__(self, n: int = 3, shards: int = 8, ttl: int = 3, extra_args: Optional[list] = None):
        need_cluster_parts()
        self.etcd = Etcd().start()
        self.store_url = f"s3://{os.environ['MNEMO_TEST_S3_BUCKET']}/cluster-{uuid.uuid4().hex[:12]}"
        self.shards, self.ttl = shards, ttl
        self.name = f"c{uuid.uuid4().hex[:8]}"
        self.nodes = [Node(f"n{i + 1}", self.etcd, self.store_url, shards, ttl, extra_args, self.name)
                      for i in range(n)]
        try:
            for node in self.nodes:
                node.start()
            self.wait_settled()
        except Exception:
            self.close()
            raise

    def owners(self, via: Optional[Node] = None) -> dict:
        node = via or next(n for n in self.nodes if n.is_running())
        st = node.status()
        return {o["shard"]: o.get("node") for o in st["owners"]}

    def wait_settled(self, timeout: float = 60, alive: Optional[list] = None) -> dict:
        """Waits until every shard is owned by a live node and each live node holds some."""
        alive = alive or [n for n in self.nodes if n.is_running()]
        ids = {n.node_id for n in alive}
        deadline = time.monotonic() + timeout
        owners = {}
        while time.monotonic() < deadline:
            try:
                owners = self.owners(alive[0])
                held = set(owners.values())
                if len(owners) == self.shards and all(o in ids for o in owners.values()) \
                        and held == ids:
                    return owners
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"cluster did not settle: {owners}")

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.resume()
            except Exception:
                pass
            node.close()
        self.etcd.close()

"""Cluster benchmark (run by scripts/bench-cluster.sh): failover time, the cost of a forwarding
hop, throughput of 1 and 3 nodes against a single server, memory per open shard, SQL over
shards and a research export over shards against a single server.

Everything runs on this machine: etcd (Debian's etcd-server), the nodes, one shared store in a
local directory (file://), and the load generator (`mnemo-bench load`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(os.environ.get("MNEMO_BIN_DIR", "target/release"))
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PORTS = iter(range(21000, 22000))  # below the ephemeral range (TIME_WAIT after load runs)


def port() -> int:
    while True:
        p = next(PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if body is not None and body[:1] == b"{":
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, {}, b""


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Etcd:
    def __init__(self, root: Path):
        self.dir, self.cport, self.pport = root / "etcd", port(), port()
        self.url = f"http://127.0.0.1:{self.cport}"
        self.proc = subprocess.Popen(
            [ETCD, "--data-dir", str(self.dir), "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", f"http://127.0.0.1:{self.pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.pport}",
             "--initial-cluster", f"default=http://127.0.0.1:{self.pport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if http("GET", f"{self.url}/health", timeout=1)[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Node:
    def __init__(self, root: Path, node_id: str, store: str, etcd: Etcd | None, shards: int, ttl: int):
        self.root, self.node_id, self.store, self.etcd, self.shards, self.ttl = root, node_id, store, etcd, shards, ttl
        self.proc = None
        self.start()

    def start(self):
        self.port = port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN / "mnemo"), "serve", "--data-dir", str(self.root / self.node_id),
               "--listen", f"127.0.0.1:{self.port}", "--store", self.store]
        if self.etcd:
            cmd += ["--cluster-etcd", self.etcd.url, "--node-id", self.node_id, "--advertise", self.url,
                    "--shards", str(self.shards), "--lease-ttl-secs", str(self.ttl)]
        log = open(self.root / f"{self.node_id}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        for _ in range(600):
            if http("GET", f"{self.url}/healthz", timeout=1)[0] == 200:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited; see {self.root}/{self.node_id}.log")
            time.sleep(0.1)
        raise RuntimeError(f"{self.node_id} did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def owners(self) -> dict:
        st = json.loads(http("GET", f"{self.url}/v1/cluster/status")[2])
        return {o["shard"]: o.get("node") for o in st["owners"]}


def settle(nodes, shards, timeout=120):
    ids = {n.node_id for n in nodes}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            o = nodes[0].owners()
            if len(o) == shards and set(o.values()) == ids:
                return o
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError("cluster did not settle")


def shard_of_key(node: Node, key: str) -> int:
    st, headers, _ = http("PUT", f"{node.url}/v1/kv/{key}", b"x")
    return int({k.lower(): v for k, v in headers.items()}["x-mnemo-shard"])


def failover(root: Path, kills: int, ttl: int, shards: int):
    etcd = Etcd(root / "failover")
    store = f"file://{root}/store-failover"
    nodes = [Node(root, f"n{i}", store, etcd, shards, ttl) for i in range(1, 4)]
    settle(nodes, shards)
    times = []
    try:
        for k in range(kills):
            victim = nodes[k % 3]
            other = nodes[(k + 1) % 3]
            owners = other.owners()
            # A key on one of the victim's shards.
            key = None
            for i in range(5000):
                cand = f"users/f{k}-{i}/k"
                if shard_of_key(other, cand) in [s for s, o in owners.items() if o == victim.node_id]:
                    key = cand
                    break
            assert key, "no key on the victim's shards"
            victim.kill()
            t0 = time.monotonic()
            while True:
                st, _, _ = http("PUT", f"{other.url}/v1/kv/{key}", b"after", timeout=60)
                if 200 <= st < 300:
                    break
                time.sleep(0.02)
            times.append(time.monotonic() - t0)
            print(f"  kill {k + 1}: {times[-1]:.2f} s", flush=True)
            victim.start()
            settle(nodes, shards)
    finally:
        for n in nodes:
            n.stop()
        etcd.stop()
    print(f"\n| failover (kill -9 to first acknowledged write on a moved shard), {kills} kills, "
          f"TTL {ttl} s, {shards} shards | p50 {statistics.median(times):.2f} s | max {max(times):.2f} s |")
    return times


def latency(url: str, method: str, key: str, n: int):
    lat = []
    for i in range(n):
        t = time.perf_counter()
        st, _, _ = http(method, f"{url}/v1/kv/{key}", b"v" * 100 if method == "PUT" else None)
        lat.append((time.perf_counter() - t) * 1000)
        assert 200 <= st < 300, st
    return lat


def hop(root: Path, shards: int, n: int):
    etcd = Etcd(root / "hop")
    store = f"file://{root}/store-hop"
    nodes = [Node(root, f"h{i}", store, etcd, shards, 10) for i in range(1, 4)]
    owners = settle(nodes, shards)
    try:
        key = "users/hop/k"
        s = shard_of_key(nodes[0], key)
        owner = next(nd for nd in nodes if nd.node_id == owners[s])
        other = next(nd for nd in nodes if nd.node_id != owners[s])
        print("| request | owner p50 ms | non-owner p50 ms | owner p99 ms | non-owner p99 ms | hop p50 ms |")
        print("|---|---|---|---|---|---|")
        for method in ("GET", "PUT"):
            latency(owner.url, method, key, 50)
            a = latency(owner.url, method, key, n)
            b = latency(other.url, method, key, n)
            print(f"| {method} /v1/kv (1 client, {n} requests) | {pct(a, 50):.2f} | {pct(b, 50):.2f} | "
                  f"{pct(a, 99):.2f} | {pct(b, 99):.2f} | +{pct(b, 50) - pct(a, 50):.2f} |")
    finally:
        for nd in nodes:
            nd.stop()
        etcd.stop()


def load(urls, seconds: int, clients: int):
    procs = [subprocess.Popen([str(BIN / "mnemo-bench"), "load", "--url", u, "--workload", "kv-put",
                               "--per-user", "--targets", "4096", "--clients", str(clients // len(urls)),
                               "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True) for u in urls]
    total, rows = 0.0, []
    for p in procs:
        out, _ = p.communicate()
        row = [l for l in out.splitlines() if l.startswith("| KvPut")][0]
        cells = [c.strip() for c in row.strip("|").split("|")]
        total += float(cells[2])
        rows.append(cells)
    p99 = max(float(r[4]) for r in rows)
    errors = sum(int(r[6]) for r in rows)
    return total, p99, errors


def store_requests(urls) -> dict:
    """SlateDB's object-store requests so far, summed over nodes, by operation."""
    out = {}
    for u in urls:
        text = http("GET", f"{u}/metrics")[2].decode()
        for line in text.splitlines():
            if line.startswith("slatedb_object_store_request_count{"):
                labels, value = line.rsplit(" ", 1)
                op = labels.split('op="', 1)[1].split('"', 1)[0] if 'op="' in labels else "?"
                out[op] = out.get(op, 0) + float(value)
    return out


def throughput(root: Path, seconds: int, clients: int, shards: int):
    print(f"| system | nodes | shards | clients | puts/s | per node | worst p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    single = Node(root, "single", f"file://{root}/store-single", None, 0, 0)
    try:
        ops, p99, err = load([single.url], seconds, clients)
        print(f"| single server | 1 | - | {clients} | {ops:.0f} | {ops:.0f} | {p99:.1f} | {err} |", flush=True)
    finally:
        single.stop()
    for count in (1, 3):
        etcd = Etcd(root / f"t{count}")
        store = f"file://{root}/store-t{count}"
        nodes = [Node(root, f"t{count}-{i}", store, etcd, shards, 10) for i in range(count)]
        settle(nodes, shards)
        try:
            before = store_requests([n.url for n in nodes])
            ops, p99, err = load([n.url for n in nodes], seconds, clients)
            after = store_requests([n.url for n in nodes])
            print(f"| cluster | {count} | {shards} | {clients} | {ops:.0f} | {ops / count:.0f} | {p99:.1f} | {err} |",
                  flush=True)
            reqs = {op: after.get(op, 0) - before.get(op, 0) for op in after}
            writes = ops * seconds
            print("|   object-store requests per 1,000 puts: " + ", ".join(
                f"{op} {1000 * n / writes:.1f}" for op, n in sorted(reqs.items()) if n) + " |", flush=True)
        finally:
            for n in nodes:
                n.stop()
            etcd.stop()


def memory(root: Path, shards: int):
    single = Node(root, "m-single", f"file://{root}/store-msingle", None, 0, 0)
    time.sleep(2)
    base = rss_mib(single.proc.pid)
    single.stop()
    etcd = Etcd(root / "m")
    node = Node(root, "m1", f"file://{root}/store-m", etcd, shards, 10)
    settle([node], shards)
    time.sleep(2)
    held = rss_mib(node.proc.pid)
    node.stop()
    etcd.stop()
    print(f"| idle RSS | single server {base:.0f} MiB | node holding {shards} shards {held:.0f} MiB | "
          f"per open shard {(held - base) / shards:.2f} MiB |")


SQL_QUERIES = [
    ("count(*) of items", "SELECT count(*) FROM items", None),
    ("items per user, top 10", "SELECT user_id, count(*) AS n FROM items GROUP BY user_id ORDER BY n DESC, user_id LIMIT 10", None),
    ("LIKE over text", "SELECT count(*) FROM items WHERE text LIKE '%apples%'", None),
    ("join conversations-items", "SELECT count(*) FROM conversations c JOIN items i ON i.conversation_id = c.id", None),
    ("one user's items (2 shards)", "SELECT count(*) FROM items", "u7"),
]


def side_by_side(root: Path, name: str, shards: int):
    """A single server, and etcd with a settled 3-node cluster, each over its own store."""
    single = Node(root, f"{name}-single", f"file://{root}/store-{name}single", None, 0, 0)
    etcd = Etcd(root / name)
    store = f"file://{root}/store-{name}"
    nodes = [Node(root, f"{name}{i}", store, etcd, shards, 10) for i in range(1, 4)]
    settle(nodes, shards)
    return single, etcd, nodes


def sql_load(url: str, users: int, convs: int, items: int):
    words = ["apples", "pears", "plums", "figs"]
    for u in range(users):
        for c in range(convs):
            body = {"items": [{"type": "message", "role": "user",
                               "content": f"user {u} conversation {c} item {i} likes {words[(u + c + i) % 4]}"}
                              for i in range(items)]}
            st, _, out = http("POST", f"{url}/v1/conversations", json.dumps(body).encode(),
                              headers={"X-Mnemo-User": f"u{u}"})
            assert st == 200, out


def sql_time(url: str, query: str, user, n: int):
    headers = {"X-Mnemo-User": user} if user else {}
    lat, rows = [], None
    for _ in range(n):
        t = time.perf_counter()
        st, _, out = http("POST", f"{url}/v1/sql", json.dumps({"query": query}).encode(), headers=headers)
        lat.append((time.perf_counter() - t) * 1000)
        assert st == 200, out
        rows = json.loads(out)["rows"]
    return lat, rows


def sql(root: Path, shards: int, n: int):
    users, convs, items = 200, 10, 10
    single, etcd, nodes = side_by_side(root, "q", shards)
    try:
        sql_load(single.url, users, convs, items)
        sql_load(nodes[1].url, users, convs, items)
        print(f"{users * convs * items} items of {users} users ({users * convs} conversations) on each side; "
              f"the query goes to one node of 3 ({shards} shards, about 2/3 of them on the other nodes); {n} runs each")
        print("| query | single server p50 ms | cluster p50 ms | ratio | single p99 ms | cluster p99 ms |")
        print("|---|---|---|---|---|---|")
        for name, query, user in SQL_QUERIES:
            sql_time(single.url, query, user, 3)
            sql_time(nodes[0].url, query, user, 3)
            a, want = sql_time(single.url, query, user, n)
            b, got = sql_time(nodes[0].url, query, user, n)
            assert got == want, (name, got, want)
            print(f"| {name} | {pct(a, 50):.1f} | {pct(b, 50):.1f} | {pct(b, 50) / pct(a, 50):.2f}x | "
                  f"{pct(a, 99):.1f} | {pct(b, 99):.1f} |", flush=True)
    finally:
        single.stop()
        for nd in nodes:
            nd.stop()
        etcd.stop()


def export_time(url: str, to: Path) -> tuple[float, dict]:
    """Seconds from starting a full export job to its success, and the job."""
    t = time.perf_counter()
    st, _, out = http("POST", f"{url}/v1/admin/exports", json.dumps({"to": f"file://{to}"}).encode())
    assert st == 202, out
    job_id = json.loads(out)["id"]
    while True:
        st, _, out = http("GET", f"{url}/v1/admin/exports/{job_id}")
        job = json.loads(out)
        if job["status"] in ("succeeded", "failed"):
            assert job["status"] == "succeeded", job
            return time.perf_counter() - t, job
        time.sleep(0.05)


def export(root: Path, shards: int, n: int):
    users, convs, items = 200, 10, 10
    single, etcd, nodes = side_by_side(root, "e", shards)
    try:
        for url in (single.url, nodes[1].url):
            sql_load(url, users, convs, items)
            for u in range(users):
                st, _, out = http("PUT", f"{url}/v1/admin/users/u{u}/consent", b'{"research": true}')
                assert st == 200, out
        print(f"{users * convs * items} items of {users} consenting users on each side; a full export job "
              f"started on one node of 3 ({shards} shards); {n} runs each, each into a new dataset")
        print("| side | median s | min s | max s | items/s (median) |")
        print("|---|---|---|---|---|")
        results = {}
        for name, url in (("single server", single.url), ("3-node cluster", nodes[0].url)):
            times = []
            for i in range(n):
                secs, job = export_time(url, root / f"ds-{name[:6]}-{i}")
                assert job["rows"]["items"] == users * convs * items, job
                times.append(secs)
            results[name] = statistics.median(times)
            print(f"| {name} | {results[name]:.2f} | {min(times):.2f} | {max(times):.2f} | "
                  f"{users * convs * items / results[name]:.0f} |", flush=True)
        print(f"cluster / single: {results['3-node cluster'] / results['single server']:.2f}x")
    finally:
        single.stop()
        for nd in nodes:
            nd.stop()
        etcd.stop()


def main():
    phases = os.environ.get("PHASES", "failover,hop,throughput,memory,sql,export").split(",")
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    ttl = int(os.environ.get("TTL", "10"))
    shards = int(os.environ.get("SHARDS", "64"))
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        if "failover" in phases:
            failover(root, kills, ttl, shards)
        if "hop" in phases:
            hop(root, shards, 2000)
        if "throughput" in phases:
            throughput(root, seconds, 64, shards)
        if "memory" in phases:
            memory(root, shards)
        if "sql" in phases:
            sql(root, shards, 30)
        if "export" in phases:
            export(root, shards, 5)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Crash safety: a 2xx on a write means durable; SIGKILL loses no acknowledged write, writes are
atomic, and nothing that was never sent appears. SIGTERM shuts down gracefully.

Env: MNEMO_CRASH_ROUNDS (default 3), MNEMO_CRASH_LOAD_SECONDS (default "2-4": random in range).
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import quote

import pytest

from conftest import httpx

ROUNDS = int(os.environ.get("MNEMO_CRASH_ROUNDS", "3"))
_load = os.environ.get("MNEMO_CRASH_LOAD_SECONDS", "2-4").split("-")
LOAD_MIN, LOAD_MAX = float(_load[0]), float(_load[-1])

CONV_THREADS = 16
KV_THREADS = 12
BATCH_THREADS = 4          # 32 client threads in total
N_CONVS = 4                # conversation-append threads share these (4 writers each)
REQ_TIMEOUT = 20.0
KV_CTYPE = "application/x-mnemo-crash"

ACKED, UNKNOWN, PENDING = "acked", "unknown", "pending"


def kp(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="")


@dataclass
class Attempt:
    kind: str                  # "append" | "create" | "put" | "batch"
    thread: int
    round: int
    seq: int
    state: str = PENDING
    # append / create
    cid: Optional[str] = None
    texts: List[str] = field(default_factory=list)
    ids: List[str] = field(default_factory=list)
    metadata: Optional[dict] = None
    # put / batch: the state each written key must have if this attempt is the one that applied
    effect: Dict[str, Optional[bytes]] = field(default_factory=dict)
    etags: Dict[str, Optional[str]] = field(default_factory=dict)
    detail: str = ""


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: List[Attempt] = []
        self.unexpected: List[str] = []
        self.kill_started = threading.Event()

    def add(self, a: Attempt) -> Attempt:
        with self.lock:
            self.attempts.append(a)
        return a

    def bad(self, msg: str):
        with self.lock:
            self.unexpected.append(msg)


def _post_outcome(a: Attempt, r, rec: Recorder, killed: threading.Event):
    """Classify a response: 2xx acked, 503 unknown, anything else is a server bug."""
    if 200 <= r.status_code < 300:
        a.state = ACKED
        return True
    a.state = UNKNOWN
    a.detail = f"{r.status_code} {r.text[:200]}"
    if r.status_code != 503:
        rec.bad(f"{a.kind} t{a.thread} s{a.seq}: unexpected {r.status_code}: {r.text[:300]}")
    return False


def _transport_failure(a: Attempt, e: Exception, rec: Recorder, killed: threading.Event):
    a.state = UNKNOWN
    a.detail = repr(e)
    if not rec.kill_started.is_set():
        # the server was not killed yet: something else went wrong (crash? hang?)
        rec.bad(f"{a.kind} t{a.thread} s{a.seq}: transport error before the kill: {e!r}")


# --------------------------------------------------------------------------- workers

def conv_worker(base_url, t, rnd, convs, rec, killed, start):
    http = httpx.Client(base_url=base_url, timeout=REQ_TIMEOUT)
    cid = convs[t % len(convs)]
    try:
        start.wait()
        seq = 0
        while not killed.is_set():
            if seq % 10 == 9:
                texts = [f"r{rnd}-c{t:02d}-s{seq:05d}-new{j}" for j in range(2)]
                meta = {"thread": str(t), "round": str(rnd), "seq": str(seq)}
                a = rec.add(Attempt("create", t, rnd, seq, texts=texts, metadata=meta))
                try:
                    r = http.post("/v1/conversations", json={
                        "metadata": meta, "items": [{"role": "user", "content": x} for x in texts]})
                except httpx.TransportError as e:
                    _transport_failure(a, e, rec, killed)
                    break
                if _post_outcome(a, r, rec, killed):
                    a.cid = r.json()["id"]
            else:
                n = 1 + seq % 3
                texts = [f"r{rnd}-c{t:02d}-s{seq:05d}-i{j}" for j in range(n)]
                a = rec.add(Attempt("append", t, rnd, seq, cid=cid, texts=texts))
                try:
                    r = http.post(f"/v1/conversations/{cid}/items",
                                  json={"items": [{"role": "user", "content": x} for x in texts]})
                except httpx.TransportError as e:
                    _transport_failure(a, e, rec, killed)
                    break
                if _post_outcome(a, r, rec, killed):
                    data = r.json()["data"]
                    a.ids = [d["id"] for d in data]
                    got = [d["content"][0]["text"] for d in data]
                    if got != texts:
                        rec.bad(f"append t{t} s{seq}: response texts {got} != sent {texts}")
            seq += 1
    finally:
        http.close()


def kv_worker(base_url, t, rnd, rec, killed, start):
    http = httpx.Client(base_url=base_url, timeout=REQ_TIMEOUT)
    own_key = f"crash/o/t{t:02d}"          # single writer: this thread, across all rounds
    rng = random.Random(f"{t}-{rnd}-{uuid.uuid4()}")
    try:
        start.wait()
        seq = 0
        while not killed.is_set():
            if seq % 3 == 2:
                key = own_key
            else:
                key = f"crash/u/t{t:02d}/r{rnd}/s{seq:05d}"
            value = f"{key}|r{rnd}|s{seq}|".encode() + rng.randbytes(rng.randint(0, 300))
            a = rec.add(Attempt("put", t, rnd, seq, effect={key: value}))
            try:
                r = http.put(kp(key), content=value, headers={"Content-Type": KV_CTYPE})
            except httpx.TransportError as e:
                _transport_failure(a, e, rec, killed)
                break
            if _post_outcome(a, r, rec, killed):
                j = r.json()
                a.etags[key] = j["etag"]
                if j.get("key") != key or j.get("size") != len(value) or r.headers.get("etag") != j["etag"]:
                    rec.bad(f"put {key}: bad response {j} / ETag {r.headers.get('etag')}")
            seq += 1
    finally:
        http.close()


def batch_worker(base_url, t, rnd, rec, killed, start):
    http = httpx.Client(base_url=base_url, timeout=REQ_TIMEOUT)
    keys = [f"crash/b/t{t:02d}/k{i}" for i in range(3)]    # single writer across rounds
    try:
        start.wait()
        seq = 0
        while not killed.is_set():
            token = f"b{t}-r{rnd}-s{seq}-{uuid.uuid4().hex[:8]}"
            ops, effect = [], {}
            for i, k in enumerate(keys):
                if seq % 5 == 4 and i == 2:
                    ops.append({"op": "delete", "key": k})
                    effect[k] = None
                else:
                    v = f"{token}|k{i}".encode()
                    ops.append({"op": "put", "key": k, "value_base64": base64.b64encode(v).decode(),
                                "content_type": KV_CTYPE})
                    effect[k] = v
            a = rec.add(Attempt("batch", t, rnd, seq, effect=effect))
            try:
                r = http.post("/v1/kv/batch", json={"operations": ops})
            except httpx.TransportError as e:
                _transport_failure(a, e, rec, killed)
                break
            if _post_outcome(a, r, rec, killed):
                data = r.json()["data"]
                a.etags = {d["key"]: d["etag"] for d in data}
                if [d["key"] for d in data] != keys:
                    rec.bad(f"batch t{t} s{seq}: response keys {data}")
            seq += 1
    finally:
        http.close()


# --------------------------------------------------------------------------- model + verification

class Model:
    """What must be true after every restart."""

    def __init__(self):
        self.convs: List[str] = []
        self.conv_items: Dict[str, List[tuple]] = {}      # cid -> verified [(id, text)]
        self.created: List[Attempt] = []                  # acked conversation creations
        self.kv_state: Dict[str, Optional[bytes]] = {}    # single-writer key -> verified value
        self.kv_etag: Dict[str, Optional[str]] = {}
        self.acked_unique: Dict[str, tuple] = {}          # unique key -> (value, etag) acked
        self.attempted_unique: set = set()


def list_items(http, cid):
    out, after = [], None
    while True:
        params = {"order": "asc", "limit": 100}
        if after:
            params["after"] = after
        r = http.get(f"/v1/conversations/{cid}/items", params=params)
        assert r.status_code == 200, f"list {cid}: {r.status_code} {r.text}"
        body = r.json()
        out.extend(body["data"])
        if not body["has_more"]:
            return out
        after = body["last_id"]


def list_keys(http, prefix):
    out, after = [], None
    while True:
        params = {"prefix": prefix, "limit": 1000}
        if after is not None:
            params["after"] = after
        r = http.get("/v1/kv", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["data"])
        if not body["has_more"]:
            return out
        after = body["next_after"]


def verify_conversations(http, model: Model, attempts: List[Attempt], rnd: int):
    problems = []
    appends = [a for a in attempts if a.kind == "append"]
    by_text = {}
    for a in appends:
        for i, x in enumerate(a.texts):
            by_text[x] = (a, i)
    for cid in model.convs:
        items = list_items(http, cid)
        got = [(it["id"], it["content"][0]["text"]) for it in items]
        base = model.conv_items[cid]
        if got[:len(base)] != base:
            problems.append(f"{cid}: items verified after the previous restart changed/lost "
                            f"(had {len(base)}, now {len(got)}; first diff at "
                            f"{next((i for i, (x, y) in enumerate(zip(base, got)) if x != y), len(got))})")
            continue
        new = got[len(base):]
        texts = [x for _, x in new]
        if len(set(texts)) != len(texts):
            dups = sorted({x for x in texts if texts.count(x) > 1})
            problems.append(f"{cid}: duplicated items after restart: {dups[:5]}")
        pos = {}
        for i, x in enumerate(texts):
            if x not in by_text or by_text[x][0].cid != cid:
                problems.append(f"{cid}: item never sent (to this conversation) appeared: {x!r}")
            pos.setdefault(x, i)
        for it in items[len(base):]:
            if it.get("type") != "message" or it.get("role") != "user" or len(it.get("content", [])) != 1:
                problems.append(f"{cid}: item corrupted: {it}")
        last_seq = {}
        for a in sorted((a for a in appends if a.cid == cid), key=lambda a: (a.thread, a.seq)):
            present = [x in pos for x in a.texts]
            if a.state == ACKED and not all(present):
                problems.append(f"{cid}: ACKED append t{a.thread} s{a.seq} lost after kill -9: "
                                f"{[x for x in a.texts if x not in pos]}")
                continue
            if any(present) and not all(present):
                problems.append(f"{cid}: append t{a.thread} s{a.seq} half applied: {list(zip(a.texts, present))}")
                continue
            if not any(present):
                continue
            p = [pos[x] for x in a.texts]
            if p != list(range(p[0], p[0] + len(p))):
                problems.append(f"{cid}: append t{a.thread} s{a.seq} not contiguous/in order: {p}")
            if a.state == ACKED and [new[i][0] for i in p] != a.ids:
                problems.append(f"{cid}: ids of acked append t{a.thread} s{a.seq} changed: "
                                f"{a.ids} -> {[new[i][0] for i in p]}")
            if a.thread in last_seq and p[0] < last_seq[a.thread]:
                problems.append(f"{cid}: thread {a.thread} order broken at s{a.seq}")
            last_seq[a.thread] = p[-1]
        model.conv_items[cid] = got
    for a in attempts:
        if a.kind == "create" and a.state == ACKED:
            model.created.append(a)

    def check_created(a):
        out = []
        r = http.get(f"/v1/conversations/{a.cid}")
        if r.status_code != 200:
            return [f"acked conversation {a.cid} (r{a.round} t{a.thread} s{a.seq}) lost: {r.status_code} {r.text[:200]}"]
        if r.json().get("metadata") != a.metadata:
            out.append(f"conversation {a.cid} metadata {r.json().get('metadata')} != {a.metadata}")
        texts = [it["content"][0]["text"] for it in list_items(http, a.cid)]
        if texts != a.texts:
            out.append(f"conversation {a.cid} items {texts} != {a.texts}")
        return out

    with ThreadPoolExecutor(max_workers=16) as ex:
        for res in ex.map(check_created, model.created):
            problems += res
    return problems


def verify_kv(http, model: Model, attempts: List[Attempt], rnd: int):
    problems = []
    puts = [a for a in attempts if a.kind in ("put", "batch")]

    # --- unique keys (one attempt each)
    unique = [a for a in puts if a.kind == "put" and "/u/" in next(iter(a.effect))]
    for a in unique:
        (key, value), = a.effect.items()
        model.attempted_unique.add(key)
        if a.state == ACKED:
            model.acked_unique[key] = (value, a.etags[key])
    unknown_this_round = {next(iter(a.effect)): next(iter(a.effect.values()))
                          for a in unique if a.state != ACKED}
    listed = {d["key"]: d for d in list_keys(http, "crash/u/")}
    for k in listed:
        if k not in model.attempted_unique:
            problems.append(f"kv: key never written appeared: {k!r}")
    for k, (v, etag) in model.acked_unique.items():
        d = listed.get(k)
        if d is None:
            problems.append(f"kv: ACKED key lost after kill -9: {k!r}")
        elif d["size"] != len(v) or d["etag"] != etag:
            problems.append(f"kv: {k!r} listed as size={d['size']} etag={d['etag']}, acked {len(v)} {etag}")

    def fetch(key):
        r = http.get(kp(key))
        return key, r.status_code, r.content, r.headers.get("etag"), r.headers.get("content-type"), r.text[:200]

    acked_now = {next(iter(a.effect)) for a in unique if a.state == ACKED}
    to_read = sorted(acked_now | {k for k in unknown_this_round if k in listed})
    with ThreadPoolExecutor(max_workers=16) as ex:
        results = list(ex.map(fetch, to_read))
    for key, status, content, etag, ctype, text in results:
        if key in acked_now:
            value, acked_etag = model.acked_unique[key]
            if status != 200:
                problems.append(f"kv: GET acked {key!r} -> {status} {text}")
            elif content != value:
                problems.append(f"kv: {key!r} value differs from the acknowledged write")
            elif etag != acked_etag or ctype != KV_CTYPE:
                problems.append(f"kv: {key!r} etag/content-type {etag}/{ctype} != acked {acked_etag}/{KV_CTYPE}")
        elif status == 200 and content != unknown_this_round[key]:
            # an unacknowledged write that did apply must hold exactly the bytes sent
            problems.append(f"kv: unacknowledged {key!r} applied with a value never sent")
        elif status not in (200, 404):
            problems.append(f"kv: GET {key!r} -> {status} {text}")

    # --- single-writer keys: own keys (put) and batch key groups
    groups: Dict[tuple, List[Attempt]] = {}
    for a in puts:
        if a.kind == "put" and "/u/" in next(iter(a.effect)):
            continue
        groups.setdefault(tuple(sorted(a.effect)), []).append(a)
    for keys, seq in groups.items():
        seq.sort(key=lambda a: a.seq)
        last_ack = max((i for i, a in enumerate(seq) if a.state == ACKED), default=None)
        if last_ack is None:
            candidates = [{k: model.kv_state.get(k) for k in keys}] + [a.effect for a in seq]
            acked_etags = {k: model.kv_etag.get(k) for k in keys}
        else:
            candidates = [seq[last_ack].effect] + [a.effect for a in seq[last_ack + 1:]]
            acked_etags = seq[last_ack].etags
        observed, observed_etag = {}, {}
        for k in keys:
            r = http.get(kp(k))
            if r.status_code == 404:
                observed[k] = None
                observed_etag[k] = None
            elif r.status_code == 200:
                observed[k] = r.content
                observed_etag[k] = r.headers.get("etag")
            else:
                problems.append(f"kv: GET {k!r} -> {r.status_code} {r.text[:200]}")
        if observed not in candidates:
            what = "ACKED write lost or batch half-applied" if last_ack is not None else "unexpected state"
            problems.append(f"kv: {what} for {list(keys)}: observed {observed!r}; allowed (last acked first) "
                            f"{candidates[:3]!r}{' ...' if len(candidates) > 3 else ''}")
        elif observed == candidates[0] and last_ack is not None:
            for k in keys:
                if observed_etag[k] != acked_etags.get(k):
                    problems.append(f"kv: {k!r} etag {observed_etag[k]} != acknowledged {acked_etags.get(k)}")
        for k in keys:
            model.kv_state[k] = observed.get(k)
            model.kv_etag[k] = observed_etag.get(k)
    return problems


def run_load(srv, model: Model, rnd: int, seconds: float, stop=None):
    """Run the 32-thread load for `seconds`, then stop the server with `stop` (default SIGKILL)
    while the load is still running."""
    rec = Recorder()
    killed = threading.Event()
    start = threading.Event()
    threads = []
    for t in range(CONV_THREADS):
        threads.append(threading.Thread(target=conv_worker,
                                        args=(srv.base_url, t, rnd, model.convs, rec, killed, start)))
    for t in range(KV_THREADS):
        threads.append(threading.Thread(target=kv_worker, args=(srv.base_url, t, rnd, rec, killed, start)))
    for t in range(BATCH_THREADS):
        threads.append(threading.Thread(target=batch_worker, args=(srv.base_url, t, rnd, rec, killed, start)))
    for th in threads:
        th.daemon = True
        th.start()
    start.set()
    time.sleep(seconds)
    alive_before_kill = srv.is_running()
    rec.kill_started.set()
    (stop or srv.kill9)()            # while the load is still running
    killed.set()
    for th in threads:
        th.join(timeout=REQ_TIMEOUT + 30)
    assert not any(th.is_alive() for th in threads), "client threads hung after kill -9"
    assert alive_before_kill, f"server died on its own during load\n{srv.stderr_tail()}"
    return rec


def new_model(srv) -> Model:
    model = Model()
    for i in range(N_CONVS):
        r = srv.http.post("/v1/conversations", json={"metadata": {"crash": str(i)}})
        assert r.status_code == 200, r.text
        model.convs.append(r.json()["id"])
        model.conv_items[model.convs[-1]] = []
    return model


def verify_round(srv, model, rec, rnd):
    http = srv.http
    problems = list(rec.unexpected)
    problems += verify_conversations(http, model, rec.attempts, rnd)
    problems += verify_kv(http, model, rec.attempts, rnd)
    counts = {}
    for a in rec.attempts:
        counts[(a.kind, a.state)] = counts.get((a.kind, a.state), 0) + 1
    print(f"round {rnd}: {counts}")
    assert not problems, f"round {rnd}: {len(problems)} problems:\n" + "\n".join(problems[:40])
    acked_kinds = {a.kind for a in rec.attempts if a.state == ACKED}
    assert {"append", "put", "batch"} <= acked_kinds, (
        f"round {rnd}: the load acknowledged too little to test anything: {counts}")


@pytest.mark.storage
def test_kill9_under_load_loses_no_acknowledged_write(fresh_server):
    srv = fresh_server
    model = new_model(srv)

    rng = random.Random()
    for rnd in range(ROUNDS):
        t0 = time.monotonic()
        rec = run_load(srv, model, rnd, rng.uniform(LOAD_MIN, LOAD_MAX))
        t1 = time.monotonic()
        srv.restart()
        t2 = time.monotonic()
        verify_round(srv, model, rec, rnd)
        print(f"round {rnd}: load {t1 - t0:.1f}s, restart {t2 - t1:.1f}s, verify {time.monotonic() - t2:.1f}s")

    # finally a graceful stop keeps everything too
    rc = srv.terminate()
    assert rc == 0, f"SIGTERM exit code {rc}\n{srv.stderr_tail()}"
    srv.start()
    for cid in model.convs:
        got = [(it["id"], it["content"][0]["text"]) for it in list_items(srv.http, cid)]
        assert got == model.conv_items[cid], f"{cid} changed across a graceful restart"
    for k, v in model.kv_state.items():
        r = srv.http.get(kp(k))
        assert (r.content if r.status_code == 200 else None) == v, k


@pytest.mark.storage
def test_kill9_under_load_with_a_local_wal_dir(tmp_path):
    """A remote store with `--wal-dir`: writes are acknowledged once fdatasynced in the local
    segment log. kill -9 under concurrent appends, puts and batches, then a restart with the
    same directory: every acknowledged write is there, nothing unacknowledged half-present."""
    from conftest import start_server, store_kind

    if store_kind() in ("", "file", "local"):
        pytest.skip("--wal-dir is for a remote store (a local store keeps its log beside it)")
    srv = start_server("mnemo-waldir", extra_args=["--wal-dir", str(tmp_path / "wal")])
    try:
        model = new_model(srv)
        rng = random.Random()
        for rnd in range(2):
            rec = run_load(srv, model, rnd, rng.uniform(LOAD_MIN, LOAD_MAX))
            srv.restart()
            verify_round(srv, model, rec, rnd)
        assert any((tmp_path / "wal").glob("*.wal")), "the log was not kept in --wal-dir"
    finally:
        srv.close()


@pytest.mark.storage
def test_sigterm_under_load_keeps_acknowledged_writes(fresh_server):
    """Graceful shutdown in the middle of the load: exit code 0, every acknowledged write kept."""
    srv = fresh_server
    model = new_model(srv)
    rcs = []
    rec = run_load(srv, model, 0, random.uniform(LOAD_MIN, LOAD_MAX), stop=lambda: rcs.append(srv.terminate()))
    assert rcs == [0], f"exit code after SIGTERM under load: {rcs}\n{srv.stderr_tail()}"
    srv.start()
    verify_round(srv, model, rec, 0)


# --------------------------------------------------------------------------- deterministic durability

@pytest.mark.storage
def test_every_write_kind_survives_kill9(fresh_server):
    """Each kind of acknowledged write, then SIGKILL immediately, restart, read everything back."""
    srv = fresh_server
    h = srv.http
    conv = h.post("/v1/conversations", json={"metadata": {"v": "1"},
                                             "items": [{"role": "user", "content": "first"}]}).json()
    cid = conv["id"]
    r = h.post(f"/v1/conversations/{cid}/items", json={"items": [
        {"role": "assistant", "content": "second"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"x\": 1}"},
        {"id": "custom_id_1", "type": "function_call_output", "call_id": "call_1", "output": "ok"}]})
    assert r.status_code == 200, r.text
    appended = r.json()["data"]
    assert h.post(f"/v1/conversations/{cid}", json={"metadata": {"v": "2", "w": "x"}}).status_code == 200
    assert h.delete(f"/v1/conversations/{cid}/items/{appended[0]['id']}").status_code == 200
    gone = h.post("/v1/conversations", json={"items": [{"role": "user", "content": "gone"}]}).json()["id"]
    assert h.delete(f"/v1/conversations/{gone}").status_code == 200

    r = h.put(kp("dur/a"), content=bytes(range(256)), headers={"Content-Type": "x/y"})
    assert r.status_code == 200
    etag_a = r.json()["etag"]
    assert h.put(kp("dur/del"), content=b"x").status_code == 200
    assert h.delete(kp("dur/del")).status_code == 200
    r = h.post("/v1/kv/batch", json={"operations": [
        {"op": "put", "key": "dur/b1", "value": "one"}, {"op": "put", "key": "dur/b2", "value": "two"},
        {"op": "put", "key": "dur/b3", "value": "three", "ttl_seconds": 3600}]})
    assert r.status_code == 200, r.text
    b_etags = [d["etag"] for d in r.json()["data"]]
    expected_items = [(i["id"], i) for i in h.get(f"/v1/conversations/{cid}/items",
                                                   params={"order": "asc"}).json()["data"]]

    srv.kill9()
    srv.restart()
    h = srv.http

    c = h.get(f"/v1/conversations/{cid}").json()
    assert c == {"id": cid, "object": "conversation", "created_at": conv["created_at"],
                 "metadata": {"v": "2", "w": "x"}}
    items = h.get(f"/v1/conversations/{cid}/items", params={"order": "asc"}).json()["data"]
    assert [(i["id"], i) for i in items] == expected_items
    assert [i["id"] for i in items][1:] == [appended[1]["id"], "custom_id_1"]
    assert h.get(f"/v1/conversations/{cid}/items/{appended[0]['id']}").status_code == 404
    assert h.get(f"/v1/conversations/{gone}").status_code == 404
    g = h.get(kp("dur/a"))
    assert (g.status_code, g.content, g.headers.get("etag"), g.headers.get("content-type")) == (
        200, bytes(range(256)), etag_a, "x/y")
    assert h.get(kp("dur/del")).status_code == 404
    for k, v, e in zip(("dur/b1", "dur/b2", "dur/b3"), (b"one", b"two", b"three"), b_etags):
        g = h.get(kp(k))
        assert (g.status_code, g.content, g.headers.get("etag")) == (200, v, e), k
    listed = {d["key"]: d for d in h.get("/v1/kv", params={"prefix": "dur/"}).json()["data"]}
    assert sorted(listed) == ["dur/a", "dur/b1", "dur/b2", "dur/b3"]
    assert listed["dur/b3"]["expires_at"] is not None and listed["dur/b1"]["expires_at"] is None
    # a write after restart works and a conflicting id is still detected (id index survived)
    r = h.post(f"/v1/conversations/{cid}/items", json={"items": [
        {"id": "custom_id_1", "role": "user", "content": "dup"}]})
    assert r.status_code == 409, r.text


@pytest.mark.storage
def test_sigterm_graceful_shutdown(fresh_server):
    srv = fresh_server
    h = srv.http
    cid = h.post("/v1/conversations", json={}).json()["id"]
    for i in range(5):
        assert h.post(f"/v1/conversations/{cid}/items",
                      json={"items": [{"role": "user", "content": f"m{i}"}]}).status_code == 200
        assert h.put(kp(f"term/{i}"), content=f"v{i}".encode()).status_code == 200
    rc = srv.terminate()
    assert rc == 0, f"exit code after SIGTERM: {rc}\n{srv.stderr_tail()}"
    srv.start()
    h = srv.http
    texts = [i["content"][0]["text"] for i in
             h.get(f"/v1/conversations/{cid}/items", params={"order": "asc"}).json()["data"]]
    assert texts == [f"m{i}" for i in range(5)]
    for i in range(5):
        assert h.get(kp(f"term/{i}")).content == f"v{i}".encode()


@pytest.mark.storage
def test_repeated_kill9_restart_cycles(fresh_server):
    """Crashing again right after each restart (recovery path) must not lose or corrupt anything."""
    srv = fresh_server
    h = srv.http
    assert h.put(kp("boot/k"), content=b"v").status_code == 200
    for _ in range(3):
        srv.kill9()
        srv.restart()
    assert srv.http.get(kp("boot/k")).content == b"v"


def test_a_second_server_on_a_local_store_is_refused(fresh_server):
    """Two processes never both write one local store: a second server on the same data
    directory exits with a clear error (the write-ahead log's lock), and the first keeps
    acknowledging writes. (On a remote store the newer writer fences the older instead.)"""
    import subprocess

    if fresh_server.store_url:
        pytest.skip("the local write-ahead log's lock is a local-store guarantee")
    h = fresh_server.http
    assert h.put("/v1/kv/lock/a", content=b"1").status_code in (200, 201)
    second = subprocess.run(
        [fresh_server.command()[0], "serve", "--data-dir", str(fresh_server.data_dir),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    assert "locked by another process" in (second.stdout + second.stderr)
    assert h.put("/v1/kv/lock/b", content=b"2").status_code in (200, 201)
    assert h.get("/v1/kv/lock/a").content == b"1"

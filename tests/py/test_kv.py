"""Key-value memory API (httpx). Contract: docs/api.md."""

from __future__ import annotations

import base64
import copy
import threading
import time
from urllib.parse import quote

import pytest

from conftest import assert_api_error, assert_json_error

MAX_VALUE = 65_536
TEN_YEARS_365 = 10 * 365 * 24 * 3600


def kp(key: str) -> str:
    """Path of a key, every reserved byte (including '/') percent-encoded."""
    return "/v1/kv/" + quote(key, safe="")


def put(http, key, body=b"", headers=None, params=None):
    return http.put(kp(key), content=body, headers=headers or {}, params=params or {})


def put_ok(http, key, body=b"", headers=None, params=None) -> str:
    r = put(http, key, body, headers, params)
    assert r.status_code == 200, f"PUT {key!r} -> {r.status_code} {r.text}"
    j = r.json()
    assert j["key"] == key and j["size"] == len(body)
    assert r.headers.get("etag") == j["etag"], (r.headers.get("etag"), j)
    return j["etag"]


def get(http, key, **kw):
    return http.get(kp(key), **kw)


def list_all(http, prefix, limit=None):
    out, after, pages = [], None, 0
    while True:
        params = {"prefix": prefix}
        if limit:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        r = http.get("/v1/kv", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list"
        out.extend(body["data"])
        pages += 1
        if not body["has_more"]:
            return out
        assert body["data"], body
        assert body["next_after"] == body["data"][-1]["key"], body
        after = body["next_after"]
        assert pages < 10_000


def batch(http, ops):
    return http.post("/v1/kv/batch", json={"operations": ops})


# ============================================================================ put / get

ALL_BYTES = bytes(range(256))


@pytest.mark.storage
def test_put_get_exact_bytes(http, uid):
    key = f"kv-{uid}/bin"
    r = put(http, key, ALL_BYTES * 3, headers={"Content-Type": "application/x-mnemo-test"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) >= {"key", "etag", "size"}
    assert j["key"] == key and j["size"] == 768 and isinstance(j["etag"], str) and j["etag"]
    assert r.headers["etag"] == j["etag"]

    g = get(http, key)
    assert g.status_code == 200
    assert g.content == ALL_BYTES * 3
    assert g.headers["content-type"] == "application/x-mnemo-test"
    assert g.headers["etag"] == j["etag"]


def test_default_content_type_and_empty_value(http, uid):
    key = f"kv-{uid}/empty"
    etag = put_ok(http, key, b"")
    g = get(http, key)
    assert g.status_code == 200 and g.content == b""
    assert g.headers["content-type"] == "application/octet-stream"
    assert g.headers["etag"] == etag


def test_content_type_with_params_kept(http, uid):
    key = f"kv-{uid}/text"
    put_ok(http, key, "héllo".encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    g = get(http, key)
    assert g.content == "héllo".encode()
    assert g.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.storage
def test_overwrite_changes_etag_and_value(http, uid):
    key = f"kv-{uid}/ow"
    e1 = put_ok(http, key, b"v1", headers={"Content-Type": "text/a"})
    e2 = put_ok(http, key, b"v2", headers={"Content-Type": "text/b"})
    assert e1 != e2
    g = get(http, key)
    assert (g.content, g.headers["etag"], g.headers["content-type"]) == (b"v2", e2, "text/b")


def test_get_absent_404(http, uid):
    assert_api_error(get(http, f"kv-{uid}/nope"), 404)


# ============================================================================ conditions

@pytest.mark.storage
def test_if_match(http, uid):
    key = f"kv-{uid}/cas"
    e1 = put_ok(http, key, b"one")
    r = put(http, key, b"two", headers={"If-Match": '"definitely-not-the-etag"'})
    assert_api_error(r, 412)
    assert get(http, key).content == b"one"
    e2 = put_ok(http, key, b"two", headers={"If-Match": e1})
    assert get(http, key).content == b"two"
    # the old etag no longer matches
    assert_api_error(put(http, key, b"three", headers={"If-Match": e1}), 412)
    assert get(http, key).content == b"two"
    assert get(http, key).headers["etag"] == e2
    # If-Match on an absent key -> 412, nothing created
    assert_api_error(put(http, f"kv-{uid}/absent", b"x", headers={"If-Match": e2}), 412)
    assert_api_error(get(http, f"kv-{uid}/absent"), 404)


@pytest.mark.storage
def test_if_none_match_star(http, uid):
    key = f"kv-{uid}/create-only"
    e = put_ok(http, key, b"first", headers={"If-None-Match": "*"})
    assert_api_error(put(http, key, b"second", headers={"If-None-Match": "*"}), 412)
    g = get(http, key)
    assert (g.content, g.headers["etag"]) == (b"first", e)


@pytest.mark.storage
def test_delete_and_delete_if_match(http, uid):
    key = f"kv-{uid}/del"
    e = put_ok(http, key, b"bye")
    assert_api_error(http.delete(kp(key), headers={"If-Match": '"wrong"'}), 412)
    assert get(http, key).content == b"bye"
    r = http.delete(kp(key), headers={"If-Match": e})
    assert r.status_code == 200, r.text
    assert r.json() == {"key": key, "deleted": True}
    assert_api_error(get(http, key), 404)
    assert_api_error(http.delete(kp(key)), 404)
    assert_api_error(http.delete(kp(key), headers={"If-Match": e}), {404, 412})
    # unconditional delete
    put_ok(http, key, b"again")
    r = http.delete(kp(key))
    assert r.status_code == 200 and r.json() == {"key": key, "deleted": True}
    assert_api_error(get(http, key), 404)
    # recreate after delete with If-None-Match: *
    put_ok(http, key, b"reborn", headers={"If-None-Match": "*"})
    assert get(http, key).content == b"reborn"


# ============================================================================ size limits

@pytest.mark.storage
def test_value_size_limit(http, uid):
    key = f"kv-{uid}/big"
    big = bytes((i * 7 + 3) % 256 for i in range(MAX_VALUE))
    put_ok(http, key, big)
    assert get(http, key).content == big

    key2 = f"kv-{uid}/toobig"
    r = put(http, key2, big + b"!")
    assert_json_error(r, 413, "invalid_request_error", code="body_too_large")
    # the unread rest of the body ends the connection, and the response says so: a client
    # must not send its next request on it
    assert r.headers.get("connection") == "close", r.headers
    assert_api_error(get(http, key2), 404)

    # an oversized overwrite leaves the old value in place
    r = put(http, key, b"\x00" * (MAX_VALUE + 1))
    assert_json_error(r, 413, "invalid_request_error", code="body_too_large")
    assert r.headers.get("connection") == "close", r.headers
    assert get(http, key).content == big


# ============================================================================ keys

@pytest.mark.parametrize("suffix", [
    "a/b/c",
    "trailing/",
    "/leading-slash-after-prefix",
    "double//slash",
    "space and+plus",
    "percent%25sign%2Fliteral",
    "query?x=1&y=2#frag",
    "unicode/😀/日本語/עברית/مرحبا/e\u0301",
    "quotes\"'<>{}|\\^`",
])
def test_key_shapes_round_trip(http, uid, suffix):
    key = f"kv-{uid}/{suffix}"
    body = key.encode() + b"\xff\x00"
    put_ok(http, key, body)
    g = get(http, key)
    assert g.status_code == 200 and g.content == body
    keys = [d["key"] for d in list_all(http, f"kv-{uid}/")]
    assert keys == [key]
    r = http.delete(kp(key))
    assert r.status_code == 200 and r.json() == {"key": key, "deleted": True}


def test_slash_raw_and_encoded_are_the_same_key(http, uid):
    key = f"kv-{uid}/x/y/z"
    put_ok(http, key, b"slashes")
    raw_path = "/v1/kv/" + "/".join(quote(seg, safe="") for seg in key.split("/"))
    g = http.get(raw_path)
    assert g.status_code == 200 and g.content == b"slashes"
    e = put_ok(http, key, b"slashes2")
    r = http.put(raw_path, content=b"slashes3", headers={"If-Match": e})
    assert r.status_code == 200, r.text
    assert get(http, key).content == b"slashes3"


def test_key_length_limits(http, uid):
    base = f"kv-{uid}/"
    k1024 = base + "k" * (1024 - len(base.encode()))
    assert len(k1024.encode()) == 1024
    put_ok(http, k1024, b"max")
    assert get(http, k1024).content == b"max"
    k1025 = k1024 + "k"
    assert_api_error(put(http, k1025, b"x"), 400)
    assert_api_error(get(http, k1025), 400)
    assert_api_error(http.delete(kp(k1025)), 400)

    # the limit is in bytes: 3-byte characters
    pad = 1024 - len(base.encode())
    kcjk_ok = base + "日" * (pad // 3) + "k" * (pad % 3)
    assert len(kcjk_ok.encode()) == 1024
    put_ok(http, kcjk_ok, b"cjk")
    assert get(http, kcjk_ok).content == b"cjk"
    kcjk_bad = base + "日" * (pad // 3 + 1)
    assert len(kcjk_bad.encode()) > 1024
    assert_api_error(put(http, kcjk_bad, b"x"), 400)
    keys = sorted(d["key"] for d in list_all(http, base))
    assert keys == sorted([k1024, kcjk_ok])


# ============================================================================ ttl

def wait_absent(http, key, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = get(http, key)
        if r.status_code == 404:
            return r
        assert r.status_code == 200, r.text
        time.sleep(0.2)
    raise AssertionError(f"{key!r} still readable {timeout}s after its ttl")


@pytest.mark.storage
def test_ttl_expiry(http, uid):
    key = f"kv-{uid}/ttl"
    r = put(http, key, b"ephemeral", params={"ttl_seconds": 1})
    assert r.status_code == 200, r.text
    keep = f"kv-{uid}/keep"
    put_ok(http, keep, b"forever")
    assert_api_error(wait_absent(http, key), 404)
    # expired keys are absent everywhere
    assert [d["key"] for d in list_all(http, f"kv-{uid}/")] == [keep]
    assert_api_error(http.delete(kp(key)), 404)
    put_ok(http, key, b"second life", headers={"If-None-Match": "*"})
    assert get(http, key).content == b"second life"
    assert get(http, keep).content == b"forever"


def test_ttl_listing_fields(http, uid):
    key = f"kv-{uid}/long-ttl"
    now = time.time()
    put_ok(http, key, b"abc", headers={"Content-Type": "text/plain"}, params={"ttl_seconds": 3600})
    plain = f"kv-{uid}/no-ttl"
    put_ok(http, plain, b"abcd")
    entries = {d["key"]: d for d in list_all(http, f"kv-{uid}/")}
    exp = entries[key]["expires_at"]
    assert isinstance(exp, (int, float)), entries[key]
    assert now + 3600 - 300 <= exp <= now + 3600 + 300
    assert entries[plain]["expires_at"] is None
    assert get(http, key).content == b"abc"


@pytest.mark.parametrize("ttl", ["0", "-1", "abc", "1.5", str(TEN_YEARS_365 + 366 * 24 * 3600)])
def test_ttl_bad_values_400(http, uid, ttl):
    key = f"kv-{uid}/badttl"
    assert_api_error(put(http, key, b"x", params={"ttl_seconds": ttl}), 400)
    assert_api_error(get(http, key), 404)


def test_ttl_ten_years_ok(http, uid):
    key = f"kv-{uid}/decade"
    put_ok(http, key, b"x", params={"ttl_seconds": TEN_YEARS_365})
    assert get(http, key).content == b"x"


# ============================================================================ listing

SORT_NAMES = ["a", "B", "b", "a/b", "a0", "a.b", "A", " space", "é", "z", "~", "日本", "😀", "\uff5e", "ab", "aa"]


@pytest.mark.storage
def test_listing_byte_order_and_paging(http, uid):
    prefix = f"ls-{uid}/"
    etags = {}
    for i, n in enumerate(SORT_NAMES):
        k = prefix + n
        etags[k] = put_ok(http, k, b"x" * i, headers={"Content-Type": f"type/n{i}"})
    put_ok(http, f"ls-{uid}-sibling", b"not under the prefix")
    expected = sorted(etags, key=lambda s: s.encode("utf-8"))

    full = list_all(http, prefix)
    assert [d["key"] for d in full] == expected
    for d in full:
        i = SORT_NAMES.index(d["key"][len(prefix):])
        assert d["size"] == i and d["etag"] == etags[d["key"]] and d["content_type"] == f"type/n{i}"
        assert d["expires_at"] is None
        assert isinstance(d["updated_at"], (int, float)) and d["updated_at"] > 1_600_000_000

    for limit in (1, 3, 4, 16):
        assert [d["key"] for d in list_all(http, prefix, limit=limit)] == expected, limit

    body = http.get("/v1/kv", params={"prefix": prefix, "limit": 5}).json()
    assert [d["key"] for d in body["data"]] == expected[:5]
    assert body["has_more"] is True and body["next_after"] == expected[4]
    body = http.get("/v1/kv", params={"prefix": prefix, "limit": len(expected)}).json()
    assert [d["key"] for d in body["data"]] == expected and body["has_more"] is False

    # after a key that does not exist
    after = prefix + "a1"
    body = http.get("/v1/kv", params={"prefix": prefix, "after": after, "limit": 1000}).json()
    assert [d["key"] for d in body["data"]] == [k for k in expected if k.encode() > after.encode()]
    # after the last key
    body = http.get("/v1/kv", params={"prefix": prefix, "after": expected[-1]}).json()
    assert body["data"] == [] and body["has_more"] is False
    # a prefix matching nothing
    body = http.get("/v1/kv", params={"prefix": prefix + "zzz-none"}).json()
    assert body["data"] == [] and body["has_more"] is False
    # a narrower prefix
    assert [d["key"] for d in list_all(http, prefix + "a")] == [k for k in expected if k.startswith(prefix + "a")]


def test_listing_default_limit_100(http, uid):
    prefix = f"lim-{uid}/"
    ops = [{"op": "put", "key": f"{prefix}{i:03d}", "value": str(i)} for i in range(100)]
    r = batch(http, ops)
    assert r.status_code == 200, r.text
    for i in range(100, 105):
        put_ok(http, f"{prefix}{i:03d}", str(i).encode())
    body = http.get("/v1/kv", params={"prefix": prefix}).json()
    assert [d["key"] for d in body["data"]] == [f"{prefix}{i:03d}" for i in range(100)]
    assert body["has_more"] is True and body["next_after"] == f"{prefix}099"
    body = http.get("/v1/kv", params={"prefix": prefix, "after": body["next_after"]}).json()
    assert [d["key"] for d in body["data"]] == [f"{prefix}{i:03d}" for i in range(100, 105)]
    assert body["has_more"] is False
    body = http.get("/v1/kv", params={"prefix": prefix, "limit": 1000}).json()
    assert len(body["data"]) == 105 and body["has_more"] is False
    # deleted keys disappear from listings
    assert http.delete(kp(f"{prefix}050")).status_code == 200
    keys = [d["key"] for d in list_all(http, prefix)]
    assert len(keys) == 104 and f"{prefix}050" not in keys


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc"])
def test_listing_bad_limit_400(http, limit):
    assert_api_error(http.get("/v1/kv", params={"prefix": "x", "limit": limit}), 400)


# ============================================================================ batch

@pytest.mark.storage
def test_batch_success(http, uid):
    a, b, c, d = (f"b-{uid}/{x}" for x in "abcd")
    put_ok(http, c, b"to be deleted")
    ops = [
        {"op": "put", "key": a, "value": "text ✓", "content_type": "text/plain"},
        {"op": "put", "key": b, "value_base64": base64.b64encode(ALL_BYTES).decode()},
        {"op": "delete", "key": c},
        {"op": "delete", "key": d},  # absent, unconditional: idempotent success
    ]
    r = batch(http, ops)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    data = body["data"]
    assert [x["key"] for x in data] == [a, b, c, d]
    assert [x["deleted"] for x in data[:3]] == [False, False, True]
    assert data[2]["etag"] is None and data[3]["etag"] is None
    ga, gb = get(http, a), get(http, b)
    assert ga.content == "text ✓".encode() and ga.headers["content-type"] == "text/plain"
    assert gb.content == ALL_BYTES and gb.headers["content-type"] == "application/octet-stream"
    assert ga.headers["etag"] == data[0]["etag"] and gb.headers["etag"] == data[1]["etag"]
    assert_api_error(get(http, c), 404)
    assert_api_error(get(http, d), 404)


@pytest.mark.storage
def test_batch_all_or_nothing(http, uid):
    x, y, z = (f"bn-{uid}/{k}" for k in "xyz")
    ey = put_ok(http, y, b"y0")

    r = batch(http, [
        {"op": "put", "key": x, "value": "x1"},
        {"op": "put", "key": y, "value": "y1", "if_match": '"not-the-etag"'},
        {"op": "put", "key": z, "value": "z1"},
    ])
    err = assert_api_error(r, 412)
    assert err.get("param") == "operations[1]", r.text
    assert_api_error(get(http, x), 404)
    assert_api_error(get(http, z), 404)
    assert get(http, y).content == b"y0" and get(http, y).headers["etag"] == ey

    # first failing operation is named
    r = batch(http, [
        {"op": "put", "key": x, "value": "x1", "if_none_match": "*"},
        {"op": "delete", "key": y, "if_match": '"nope"'},
        {"op": "put", "key": z, "value": "z1", "if_match": '"nope"'},
    ])
    assert assert_api_error(r, 412).get("param") == "operations[1]", r.text
    r = batch(http, [
        {"op": "put", "key": y, "value": "y2", "if_none_match": "*"},
        {"op": "put", "key": x, "value": "x2", "if_match": ey},
    ])
    assert assert_api_error(r, 412).get("param") == "operations[0]", r.text
    r = batch(http, [
        {"op": "put", "key": x, "value": "x3"},
        {"op": "delete", "key": z, "if_match": ey},   # absent key with a condition -> fails
    ])
    assert assert_api_error(r, 412).get("param") == "operations[1]", r.text
    assert_api_error(get(http, x), 404)
    assert_api_error(get(http, z), 404)
    assert get(http, y).content == b"y0"

    # and with correct conditions everything applies
    r = batch(http, [
        {"op": "put", "key": x, "value": "x4", "if_none_match": "*"},
        {"op": "put", "key": y, "value": "y4", "if_match": ey},
        {"op": "delete", "key": z},
    ])
    assert r.status_code == 200, r.text
    assert get(http, x).content == b"x4" and get(http, y).content == b"y4"
    new_ey = r.json()["data"][1]["etag"]
    assert new_ey != ey and get(http, y).headers["etag"] == new_ey
    r = batch(http, [{"op": "delete", "key": y, "if_match": new_ey}])
    assert r.status_code == 200 and r.json()["data"] == [{"key": y, "etag": None, "deleted": True}]
    assert_api_error(get(http, y), 404)


def test_batch_ttl(http, uid):
    k = f"bt-{uid}/ttl"
    r = batch(http, [{"op": "put", "key": k, "value": "soon gone", "ttl_seconds": 1}])
    assert r.status_code == 200, r.text
    wait_absent(http, k)


@pytest.mark.parametrize("ops", [
    [],
    [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(101)],
    [{"op": "put", "key": "dup", "value": "1"}, {"op": "put", "key": "dup", "value": "2"}],
    [{"op": "put", "key": "dup", "value": "1"}, {"op": "delete", "key": "dup"}],
    [{"op": "frobnicate", "key": "k"}],
    [{"op": "put", "value": "no key"}],
    [{"op": "put", "key": "", "value": "empty key"}],
    [{"op": "put", "key": "k" * 1025, "value": "long key"}],
    [{"op": "put", "key": "k", "value_base64": "!!!not base64!!!"}],
    [{"op": "put", "key": "k", "value": 5}],
    [{"op": "put", "key": "k", "value": "v", "ttl_seconds": 0}],
    [{"key": "k", "value": "no op"}],
])
def test_batch_invalid_400(http, uid, ops):
    # keys are namespaced so nothing here can collide with other tests
    ops = copy.deepcopy(ops)
    for op in ops:
        if isinstance(op.get("key"), str) and op["key"]:
            op["key"] = f"bi-{uid}/{op['key']}"
    r = batch(http, ops)
    assert_api_error(r, 400)
    assert list_all(http, f"bi-{uid}/") == []


def test_batch_oversized_value_rejected(http, uid):
    k = f"bo-{uid}/v"
    r = batch(http, [{"op": "put", "key": k, "value_base64": base64.b64encode(b"\x01" * (MAX_VALUE + 1)).decode()}])
    assert_api_error(r, {400, 413})
    assert_api_error(get(http, k), 404)
    r = batch(http, [{"op": "put", "key": k, "value_base64": base64.b64encode(b"\x01" * MAX_VALUE).decode()}])
    assert r.status_code == 200, r.text
    assert get(http, k).content == b"\x01" * MAX_VALUE


# ============================================================================ linearizable CAS

CAS_THREADS = 16
CAS_PER_THREAD = 50


def _cas_run(server, key, n_threads, per_thread, do_cas):
    errors, written = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker(t):
        http = server.new_http()
        try:
            barrier.wait(timeout=30)
            ok = 0
            attempts = 0
            while ok < per_thread:
                attempts += 1
                if attempts > per_thread * 2000:
                    raise AssertionError("too many CAS retries (livelock?)")
                g = http.get(kp(key))
                assert g.status_code == 200, g.text
                val = int(g.content.decode())
                status, etag_sent = do_cas(http, key, val + 1, g.headers["etag"])
                if status == 200:
                    ok += 1
                    with lock:
                        written.append(val + 1)
                elif status != 412:
                    raise AssertionError(f"unexpected CAS status {status}")
        except BaseException as e:  # noqa: BLE001
            errors.append(f"thread {t}: {e!r}")
        finally:
            http.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "CAS workers hung"
    assert not errors, errors[:5]
    return written


def _put_if_match(http, key, value, etag):
    r = http.put(kp(key), content=str(value).encode(), headers={"If-Match": etag})
    if r.status_code not in (200, 412):
        raise AssertionError(f"PUT If-Match -> {r.status_code} {r.text}")
    return r.status_code, etag


def _batch_if_match(http, key, value, etag):
    r = http.post("/v1/kv/batch", json={"operations": [
        {"op": "put", "key": key, "value": str(value), "if_match": etag}]})
    if r.status_code not in (200, 412):
        raise AssertionError(f"batch if_match -> {r.status_code} {r.text}")
    return r.status_code, etag


@pytest.mark.storage
def test_cas_counter_linearizable(server, uid):
    http = server.http
    key = f"cas-{uid}/counter"
    put_ok(http, key, b"0", headers={"If-None-Match": "*"})
    written = _cas_run(server, key, CAS_THREADS, CAS_PER_THREAD, _put_if_match)
    total = CAS_THREADS * CAS_PER_THREAD
    assert len(written) == total
    final = get(http, key)
    assert int(final.content) == total, f"final counter {final.content!r} != successful CAS count {total}"
    # every successful CAS wrote a distinct next value: no lost update, no double success
    assert sorted(written) == list(range(1, total + 1))


def test_cas_counter_via_batch(server, uid):
    http = server.http
    key = f"casb-{uid}/counter"
    put_ok(http, key, b"0")
    written = _cas_run(server, key, 8, 20, _batch_if_match)
    assert int(get(http, key).content) == 160
    assert sorted(written) == list(range(1, 161))

"""Hostile and malformed input: every error is an OpenAI-shaped JSON error and the server stays up.
Contract: docs/api.md."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from conftest import MnemoServer, assert_api_error, assert_json_error, httpx

MiB = 1024 * 1024


def raw_request(server, method, path, body=None, headers=None):
    """Send `path` byte-for-byte (no client-side normalisation of '..' etc.) and wrap the answer in
    an httpx.Response so the shared assertions work."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return httpx.Response(resp.status, headers=list(resp.getheaders()), content=data,
                              request=httpx.Request(method, f"{server.base_url}{path}"))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def conv_id(server):
    r = server.http.post("/v1/conversations", json={"items": [{"role": "user", "content": "anchor"}]})
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def item_id(server, conv_id):
    r = server.http.get(f"/v1/conversations/{conv_id}/items")
    return r.json()["data"][0]["id"]


def items_of(http, cid):
    r = http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


JSON_HEADERS = {"Content-Type": "application/json"}

MALFORMED = [
    b'{"metadata": ',
    b"not json at all",
    b'{"items": [}',
    b"{'single': 'quotes'}",
    b'{"a": 1} trailing',
    b'{"a": 1,}',
    b"\xff\xfe{\x00}",
    b'{"items": [{"role": "user", "content": "\xff\xfe"}]}',  # invalid UTF-8 inside a string
    b'{"items": [{"role": "user", "content": "\\ud800"}]}',   # lone surrogate escape
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_json(http, conv_id, body):
    before = items_of(http, conv_id)
    for path in ("/v1/conversations", f"/v1/conversations/{conv_id}",
                 f"/v1/conversations/{conv_id}/items", "/v1/kv/batch"):
        assert_api_error(http.post(path, content=body, headers=JSON_HEADERS), 400)
    assert items_of(http, conv_id) == before


@pytest.mark.parametrize("payload", [
    {"items": "not a list"},
    {"items": {"role": "user", "content": "x"}},
    {"items": [5]},
    {"items": ["string item"]},
    {"items": [None]},
    {"metadata": {"k": 5}},
    {"metadata": {"k": None}},
    {"metadata": {"k": ["list"]}},
    {"metadata": ["not", "an", "object"]},
    {"metadata": "string"},
    {"items": [{"role": 5, "content": "x"}]},
    {"items": [{"type": "message", "role": "user", "content": 5}]},
    {"items": [{"type": 5, "role": "user", "content": "x"}]},
    {"items": [{"id": 5, "role": "user", "content": "x"}]},
    {"items": [{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}]},
    {"items": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"x": 1}}]},
    {"items": [{"type": "reasoning", "summary": "not a list"}]},
], ids=lambda p: json.dumps(p)[:70])
def test_wrong_types_create(http, payload):
    assert_api_error(http.post("/v1/conversations", json=payload), 400)


@pytest.mark.parametrize("payload", [
    {"items": "not a list"},
    {"items": {}},
    {"items": []},
    {"items": [7]},
    {"items": [{"role": 5, "content": "x"}]},
    {"items": [{"role": "user", "content": {"not": "a list"}}]},
    {},
    [],
    "items",
    5,
    None,
], ids=lambda p: json.dumps(p)[:70])
def test_wrong_types_append(http, conv_id, payload):
    before = items_of(http, conv_id)
    r = http.post(f"/v1/conversations/{conv_id}/items", content=json.dumps(payload).encode(),
                  headers=JSON_HEADERS)
    assert_api_error(r, 400)
    assert items_of(http, conv_id) == before


@pytest.mark.parametrize("payload", [
    {"metadata": 5}, {"metadata": "s"}, {"metadata": {"k": 1.5}}, {"metadata": {"k": True}}, [], 5,
], ids=lambda p: json.dumps(p)[:70])
def test_wrong_types_update(http, conv_id, payload):
    before = http.get(f"/v1/conversations/{conv_id}").json()
    r = http.post(f"/v1/conversations/{conv_id}", content=json.dumps(payload).encode(), headers=JSON_HEADERS)
    assert_api_error(r, 400)
    assert http.get(f"/v1/conversations/{conv_id}").json() == before


@pytest.mark.parametrize("payload", [
    {"operations": "x"}, {"operations": {}}, {"operations": [5]}, {"operations": [{"op": 5, "key": "k"}]},
    {"operations": [{"op": "put", "key": 5, "value": "v"}]}, {}, [], 5,
], ids=lambda p: json.dumps(p)[:70])
def test_wrong_types_batch(http, payload):
    r = http.post("/v1/kv/batch", content=json.dumps(payload).encode(), headers=JSON_HEADERS)
    assert_api_error(r, 400)


def test_empty_bodies(http, conv_id):
    before = items_of(http, conv_id)
    for path in (f"/v1/conversations/{conv_id}/items", "/v1/kv/batch", f"/v1/conversations/{conv_id}"):
        assert_api_error(http.post(path, content=b"", headers=JSON_HEADERS), 400)
        assert_api_error(http.post(path, content=b""), {400, 415})
    assert items_of(http, conv_id) == before
    # creating a conversation with an empty body may be accepted (no params) or rejected,
    # but a rejection must be a JSON error
    r = http.post("/v1/conversations", content=b"", headers=JSON_HEADERS)
    if r.status_code != 200:
        assert_api_error(r, 400)


def test_json_without_content_type(http, conv_id):
    before = items_of(http, conv_id)
    r = http.post(f"/v1/conversations/{conv_id}/items",
                  content=json.dumps({"items": [{"role": "user", "content": "no ctype"}]}).encode())
    if r.status_code == 200:
        assert [i["content"][0]["text"] for i in r.json()["data"]] == ["no ctype"]
    else:
        assert_json_error(r, {400, 415})
        assert items_of(http, conv_id) == before


@pytest.mark.parametrize("size", [MiB + 1024, 3 * MiB])
def test_oversized_conversation_bodies(server, http, conv_id, size):
    before = items_of(http, conv_id)
    big = {"items": [{"role": "user", "content": "x" * size}]}
    r = http.post(f"/v1/conversations/{conv_id}/items", json=big)
    err = assert_api_error(r, {400, 413})
    if r.status_code == 413:
        assert err.get("code") == "body_too_large", r.text
        assert r.headers.get("connection") == "close", r.headers
    assert items_of(http, conv_id) == before
    r = http.post("/v1/conversations", json=big)
    assert_api_error(r, {400, 413})
    many = {"items": [{"role": "user", "content": "y" * (60 * 1024)} for _ in range(20)]}  # ~1.2 MiB
    r = http.post(f"/v1/conversations/{conv_id}/items", json=many)
    assert_api_error(r, {400, 413})
    assert items_of(http, conv_id) == before
    r = http.post(f"/v1/conversations/{conv_id}", json={"metadata": {"k": "z" * size}})
    assert_api_error(r, {400, 413})


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/no-such-route"),                  # unknown route: 404
    ("PUT", "/v1/conversations"),                   # wrong method: 405
])
def test_answers_that_leave_the_body_unread_close_the_connection(http, conv_id, method, path):
    """The server answers without reading the body and then drops the connection; the
    response must say so, or a pooled client sends its next request into the closing socket."""
    r = http.request(method, path, content=b"x" * (2 * MiB), headers=JSON_HEADERS)
    assert_api_error(r, {404, 405})
    assert r.headers.get("connection") == "close", r.headers
    assert http.get(f"/v1/conversations/{conv_id}").status_code == 200
    # A request whose body was read keeps its connection.
    r = http.post(f"/v1/conversations/{conv_id}", json={"metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    assert r.headers.get("connection") != "close", r.headers


def test_deeply_nested_json_is_rejected_not_fatal(http, conv_id):
    depth = 200_000
    before = items_of(http, conv_id)
    body = ('{"items": [{"role": "user", "content": "deep", "extra": ' + "[" * depth + "]" * depth + "}]}").encode()
    r = http.post(f"/v1/conversations/{conv_id}/items", content=body, headers=JSON_HEADERS)
    assert_api_error(r, {400, 413})
    body = ('{"metadata": {"k": ' + "{\"a\":" * 50_000 + "1" + "}" * 50_000 + "}}").encode()
    assert_api_error(http.post("/v1/conversations", content=body, headers=JSON_HEADERS), {400, 413})
    assert items_of(http, conv_id) == before
    assert http.get("/healthz").status_code == 200


BAD_CONV_IDS = [
    "conv_nope",
    "conv_" + "0" * 48,
    "..%2Fetc",
    "..%2F..%2Fetc%2Fpasswd",
    "conv_" + "a" * 10_000,
    "conv%20with%20spaces",
    "with space",
    "%FF%FE",
    "conv_%00nul",
    "conv_%0A",
    "%2E%2E",
]


@pytest.mark.parametrize("cid", BAD_CONV_IDS)
def test_bad_conversation_ids(http, cid):
    for method, path, body in (
        ("GET", f"/v1/conversations/{cid}", None),
        ("POST", f"/v1/conversations/{cid}", {"metadata": {"a": "b"}}),
        ("DELETE", f"/v1/conversations/{cid}", None),
        ("GET", f"/v1/conversations/{cid}/items", None),
        ("POST", f"/v1/conversations/{cid}/items", {"items": [{"role": "user", "content": "x"}]}),
        ("GET", f"/v1/conversations/{cid}/items/msg_x", None),
        ("DELETE", f"/v1/conversations/{cid}/items/msg_x", None),
    ):
        r = http.request(method, path, json=body) if body is not None else http.request(method, path)
        assert_api_error(r, {400, 404})


@pytest.mark.parametrize("path", [
    "/v1/conversations/../etc",
    "/v1/conversations/../../etc/passwd",
    "/v1/conversations/./conv_x",
    "/v1/kv/../../etc/passwd",
    "/v1/nope",
    "/",
])
def test_dot_segments_and_unknown_routes(server, path):
    r = raw_request(server, "GET", path)
    assert_api_error(r, {400, 404})


@pytest.mark.parametrize("bad_item", [
    "msg_nope", "..%2F..", "x" * 5000, "bad%20id", "%FF", "msg_%00",
])
def test_bad_item_ids(http, conv_id, bad_item):
    assert_api_error(http.get(f"/v1/conversations/{conv_id}/items/{bad_item}"), {400, 404})
    assert_api_error(http.delete(f"/v1/conversations/{conv_id}/items/{bad_item}"), {400, 404})
    assert_api_error(http.get(f"/v1/conversations/{conv_id}/items", params={"after": bad_item}), {400, 404})


@pytest.mark.parametrize("path", ["/v1/kv/%FF%FE", "/v1/kv/ok%FFthen", "/v1/kv/a/%C3%28", "/v1/kv/%ED%A0%80"])
def test_invalid_utf8_kv_key(http, path):
    assert_api_error(http.get(path), 400)
    assert_api_error(http.put(path, content=b"x"), 400)
    assert_api_error(http.delete(path), 400)


def test_invalid_utf8_kv_list_params(server):
    assert_api_error(raw_request(server, "GET", "/v1/kv?prefix=%FF%FE"), 400)
    assert_api_error(raw_request(server, "GET", "/v1/kv?prefix=a&after=%FF"), 400)


def test_empty_kv_key(server, http):
    assert_api_error(http.get("/v1/kv/"), {400, 404, 405})
    assert_api_error(http.put("/v1/kv/", content=b"x"), {400, 404, 405})
    assert_api_error(http.delete("/v1/kv/"), {400, 404, 405})


@pytest.mark.parametrize("params", [
    {"order": "sideways"}, {"order": "ASC "}, {"order": ""}, {"limit": "abc"}, {"limit": "1.5"}, {"limit": "-1"},
    {"limit": "0"}, {"limit": "101"}, {"limit": "99999999999999999999999"},
])
def test_bad_list_query_params(http, conv_id, params):
    assert_api_error(http.get(f"/v1/conversations/{conv_id}/items", params=params), 400)


@pytest.mark.parametrize("params", [
    {"limit": "abc"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "2.0"},
])
def test_bad_kv_list_query_params(http, params):
    assert_api_error(http.get("/v1/kv", params=params), 400)


@pytest.mark.parametrize("ttl", ["abc", "0", "-3", "1e3", "99999999999999999999999"])
def test_bad_ttl_query(http, ttl):
    assert_api_error(http.put("/v1/kv/bad-ttl-key", content=b"x", params={"ttl_seconds": ttl}), 400)
    assert_api_error(http.get("/v1/kv/bad-ttl-key"), 404)


@pytest.mark.parametrize("method,path", [
    ("PUT", "/v1/conversations"),
    ("DELETE", "/v1/conversations"),
    ("GET", "/v1/conversations"),
    ("PATCH", "/v1/conversations/conv_x"),
    ("PUT", "/v1/conversations/conv_x/items"),
    ("PATCH", "/v1/kv/some-key"),
    ("POST", "/healthz"),
])
def test_method_not_allowed(http, method, path):
    r = http.request(method, path)
    assert_api_error(r, 405)


@pytest.mark.parametrize("kind", ["garbage", "weak-etag"])
def test_bad_precondition_headers(http, kind):
    """A garbage If-Match, or a weak validator W/"<etag>" (If-Match uses strong comparison,
    RFC 9110 13.1.1), never matches: 400 or 412, and the write is not applied."""
    key = f"/v1/kv/bad-precond-{kind}"
    r = http.put(key, content=b"v")
    assert r.status_code == 200, r.text
    etag = r.json()["etag"]
    hdr = "garbage-without-quotes" if kind == "garbage" else "W/" + etag
    r = http.put(key, content=b"changed", headers={"If-Match": hdr})
    assert_api_error(r, {400, 412})
    r = http.delete(key, headers={"If-Match": hdr})
    assert_api_error(r, {400, 412})
    g = http.get(key)
    assert g.content == b"v" and g.headers["etag"] == etag


def test_garbage_http_does_not_kill_server(server):
    payloads = [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"meta",  # truncated
        b"POST /v1/kv/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        b"\x00\x01\x02\x03" * 1000,
        b"GET /v1/kv/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for p in payloads:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            try:
                s.sendall(p)
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    assert server.http.get("/healthz").status_code == 200


def _counter(text, name, labels):
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            lab = series[len(name):]
            if lab == want or (lab == "" and want == "{}") or (
                    lab.startswith("{") and set(lab[1:-1].split(",")) == set(want[1:-1].split(","))):
                return float(value)
    return 0.0


def test_metrics(http):
    """GET /metrics: Prometheus text with the documented series; counters count exactly."""
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    text0 = http.get("/metrics").text
    before = _counter(text0, "mnemo_http_requests_total", labels)
    flushes0 = _counter(text0, "mnemo_store_flushes_total", {})
    ops0 = _counter(text0, "slatedb_db_write_ops", {})
    for _ in range(5):
        assert http.get("/healthz").status_code == 200
    assert http.put("/v1/kv/metrics-probe", content=b"x").status_code == 200  # one durable write
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _counter(text, "mnemo_http_requests_total", labels) == before + 5
    assert _counter(text, "mnemo_store_flushes_total", {}) >= flushes0 + 1
    # The storage engine's own series are there too, and count the put.
    assert _counter(text, "slatedb_db_write_ops", {}) >= ops0 + 1
    for name in ("mnemo_http_requests_total", "mnemo_http_request_duration_seconds_bucket",
                 "mnemo_http_request_duration_seconds_count", "mnemo_store_flushes_total",
                 "mnemo_store_flush_duration_seconds", "mnemo_store_write_errors_total",
                 "slatedb_db_l0_sst_count", "slatedb_db_backpressure_count",
                 "mnemo_wal_bytes_total"):
        assert any(line.startswith(name) for line in text.splitlines()), f"/metrics has no {name}"


def test_storage_engine_logs_reach_the_server_log(monkeypatch):
    """SlateDB logs through the `log` crate; its records reach mnemo's log, filtered by RUST_LOG
    like mnemo's own (by default only its warnings: "info,slatedb=warn")."""
    monkeypatch.setenv("RUST_LOG", "info,slatedb=info")
    srv = MnemoServer(name="mnemo-logs").start()
    try:
        log = srv.log_path.read_text(errors="replace")
        assert "slatedb::db::builder" in log and "opening SlateDB database" in log, srv.stderr_tail()
    finally:
        srv.close()


def test_zz_server_still_up(server, http):
    """Runs last in this module: after everything above the server is alive and healthy."""
    assert server.is_running(), server.stderr_tail()
    r = http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = http.post("/v1/conversations", json={"items": [{"role": "user", "content": "still works"}]})
    assert r.status_code == 200, r.text

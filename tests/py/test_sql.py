"""SQL: `POST /v1/sql` (JSON and Arrow answers) and `serve --pg-listen` (psql, psycopg 3).

Answers are checked against what the REST API returns for the same data, computed here in
Python; pushdown is checked by EXPLAIN and by the scan's rows_read metric; errors and limits
by status and code; isolation in test_sql_isolation.py."""
from __future__ import annotations

import datetime as dt
import io
import json
import random
import re
import subprocess
import time
import uuid
from collections import Counter, defaultdict

import psycopg
import pyarrow as pa
import pyarrow.ipc
import pytest

from conftest import MnemoServer, assert_json_error, free_port

ROLES = ["user", "assistant", "system"]


@pytest.fixture(scope="module")
def pg_port():
    return free_port()


@pytest.fixture(scope="module")
def srv(pg_port):
    s = MnemoServer(name="mnemo-sql", extra_args=["--pg-listen", f"127.0.0.1:{pg_port}"])
    s.start()
    yield s
    s.close()


def sql(srv, query, params=None, user=None, **kw):
    headers = {"X-Mnemo-User": user} if user else {}
    headers.update(kw.pop("headers", {}))
    body = {"query": query}
    if params is not None:
        body["params"] = params
    return srv.http.post("/v1/sql", json=body, headers=headers, **kw)


def rows(srv, query, params=None, user=None):
    r = sql(srv, query, params, user)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "sql.result" and body["truncated"] is False
    return body["rows"]


@pytest.fixture(scope="module")
def data(srv):
    """Three users with conversations, items and memory, as the REST API reports them."""
    rnd = random.Random(7)
    h = srv.http
    tag = uuid.uuid4().hex[:8]
    users = [f"u{i}-{tag}" for i in range(3)]
    convs = defaultdict(list)  # user -> [conversation json]
    items = {}  # conversation id -> [item json in order]
    for u in users:
        for c in range(4):
            meta = {"topic": rnd.choice(["travel", "food", "work"]), "n": str(c)}
            conv = h.post("/v1/conversations", json={"metadata": meta}, headers={"X-Mnemo-User": u}).json()
            for _ in range(rnd.randint(1, 3)):
                batch = [{"type": "message", "role": rnd.choice(ROLES),
                          "content": [{"type": "input_text", "text": f"word{rnd.randint(0, 9)} {tag}"}]}
                         for _ in range(rnd.randint(1, 4))]
                r = h.post(f"/v1/conversations/{conv['id']}/items", json={"items": batch},
                           headers={"X-Mnemo-User": u})
                assert r.status_code == 200, r.text
            listed = h.get(f"/v1/conversations/{conv['id']}/items", params={"order": "asc", "limit": 100},
                           headers={"X-Mnemo-User": u}).json()["data"]
            convs[u].append(h.get(f"/v1/conversations/{conv['id']}", headers={"X-Mnemo-User": u}).json())
            items[conv["id"]] = listed
        h.put(f"/v1/kv/users/{u}/profile", json={"name": u, "tag": tag}, headers={"X-Mnemo-User": u})
        h.put(f"/v1/kv/users/{u}/blob", content=b"\xff\x00raw", headers={"X-Mnemo-User": u,
                                                                      "content-type": "application/octet-stream"})
    h.put(f"/v1/kv/shared-{tag}/motd", content=b"hello", headers={"content-type": "text/plain"})
    return {"users": users, "convs": convs, "items": items, "tag": tag}


def texts(item):
    return "\n".join(p["text"] for p in item.get("content", []) if "text" in p)


def test_counts_by_role_match_the_rest_api(srv, data):
    for u in data["users"]:
        expect = Counter(i["role"] for c in data["convs"][u] for i in data["items"][c["id"]])
        got = rows(srv, "SELECT role, count(*) AS n FROM items GROUP BY role ORDER BY role", user=u)
        assert {r: n for r, n in got} == dict(expect)


def test_conversations_columns_and_json_metadata(srv, data):
    u = data["users"][0]
    got = rows(srv, "SELECT id, user_id, metadata->>'topic', item_count, created_at FROM conversations "
                    "ORDER BY id", user=u)
    expect = sorted(data["convs"][u], key=lambda c: c["id"])
    assert [r[0] for r in got] == [c["id"] for c in expect]
    for r, c in zip(got, expect):
        assert r[1] == u
        assert r[2] == c["metadata"]["topic"]
        assert r[3] == len(data["items"][c["id"]])
        assert dt.datetime.fromisoformat(r[4].replace("Z", "+00:00")).timestamp() == pytest.approx(c["created_at"], abs=1)
    travel = rows(srv, "SELECT count(*) FROM conversations WHERE json_get_str(metadata, 'topic') = 'travel'", user=u)
    assert travel == [[sum(c["metadata"]["topic"] == "travel" for c in data["convs"][u])]]


def test_items_columns_match_the_rest_api(srv, data):
    u = data["users"][1]
    conv = data["convs"][u][0]["id"]
    got = rows(srv, "SELECT item_id, seq, parent_id, type, role, text, content, user_id FROM items "
                    "WHERE conversation_id = $1 ORDER BY seq", [conv], user=u)
    listed = data["items"][conv]
    assert [r[0] for r in got] == [i["id"] for i in listed]
    assert [r[1] for r in got] == sorted(r[1] for r in got)
    assert got[0][2] is None and all(got[k][2] == got[k - 1][0] for k in range(1, len(got)))
    for r, i in zip(got, listed):
        assert r[3] == "message" and r[4] == i["role"] and r[5] == texts(i)
        assert json.loads(r[6]) == i["content"] and r[7] == u


def test_joins_windows_and_newest_first_match_the_rest_api(srv, data):
    u = data["users"][2]
    got = rows(srv, "SELECT c.id, count(i.item_id) FROM conversations c JOIN items i ON i.conversation_id = c.id "
                    "GROUP BY c.id ORDER BY c.id", user=u)
    assert got == sorted([[c["id"], len(data["items"][c["id"]])] for c in data["convs"][u]])
    conv = max(data["convs"][u], key=lambda c: len(data["items"][c["id"]]))["id"]
    newest = srv.http.get(f"/v1/conversations/{conv}/items", params={"order": "desc", "limit": 2},
                          headers={"X-Mnemo-User": u}).json()["data"]
    got = rows(srv, "SELECT item_id FROM items WHERE conversation_id = $1 ORDER BY created_at DESC, seq DESC LIMIT 2",
               [conv], user=u)
    assert [r[0] for r in got] == [i["id"] for i in newest]
    got = rows(srv, "SELECT item_id, row_number() OVER (PARTITION BY conversation_id ORDER BY seq) AS pos "
                    "FROM items WHERE conversation_id = $1 ORDER BY pos", [conv], user=u)
    assert [r[0] for r in got] == [i["id"] for i in data["items"][conv]]
    assert [r[1] for r in got] == list(range(1, len(got) + 1))


def test_one_conversation_in_order_with_computed_columns(srv, data):
    # A sort pushed into the scan of one conversation stays satisfied under a projection that
    # computes columns (the planner once refused it: "does not satisfy order requirements").
    u = data["users"][1]
    conv = max(data["convs"][u], key=lambda c: len(data["items"][c["id"]]))["id"]
    want = [i["id"] for i in data["items"][conv]]
    for order, expect in (("", want), (" DESC", want[::-1])):
        got = rows(srv, "SELECT item_id, parent_id IS NULL AS root, length(role) FROM items "
                        f"WHERE conversation_id = $1 ORDER BY seq{order}", [conv], user=u)
        assert [r[0] for r in got] == expect
        got = rows(srv, "SELECT item_id, upper(role) FROM items "
                        f"WHERE conversation_id = $1 ORDER BY created_at{order}, seq{order}", [conv], user=u)
        assert [r[0] for r in got] == expect


def test_memory_table(srv, data):
    u = data["users"][0]
    got = rows(srv, "SELECT key, user_id, value_text, value_json, content_type, size, etag FROM memory "
                    "WHERE key LIKE 'users/%' OR key LIKE $1 ORDER BY key", [f"shared-{data['tag']}/%"], user=u)
    keys = [r[0] for r in got]
    assert keys == sorted([f"users/{u}/blob", f"users/{u}/profile", f"shared-{data['tag']}/motd"])
    by_key = {r[0]: r for r in got}
    blob = by_key[f"users/{u}/blob"]
    assert blob[2] is None and blob[3] is None and blob[5] == 5
    prof = by_key[f"users/{u}/profile"]
    assert json.loads(prof[3]) == {"name": u, "tag": data["tag"]} and prof[1] == u
    rest = srv.http.get(f"/v1/kv/users/{u}/profile", headers={"X-Mnemo-User": u})
    assert prof[6] == rest.headers["etag"]
    assert by_key[f"shared-{data['tag']}/motd"][1] is None


def test_changes_table_follows_the_feed(srv, data):
    u = data["users"][0]
    got = rows(srv, "SELECT op, conversation_id, item_ids FROM changes WHERE user_id = $1 ORDER BY seq", [u], user=u)
    ops = Counter(r[0] for r in got)
    assert ops["conversation.created"] == 4
    added = sum(len(r[2]) for r in got if r[0] == "item.created")
    assert added == sum(len(data["items"][c["id"]]) for c in data["convs"][u])


def test_parameters_are_bound_and_typed(srv, data):
    u = data["users"][0]
    n = rows(srv, "SELECT count(*) FROM items WHERE created_at >= $1", ["2020-01-01T00:00:00Z"], user=u)[0][0]
    assert n == sum(len(data["items"][c["id"]]) for c in data["convs"][u])
    assert rows(srv, "SELECT count(*) FROM items WHERE created_at >= $1", ["2999-01-01T00:00:00Z"], user=u) == [[0]]
    # A parameter is a value, never SQL.
    assert rows(srv, "SELECT count(*) FROM items WHERE role = $1", ["x' OR '1'='1"], user=u) == [[0]]
    assert rows(srv, "SELECT $1 + 1, $2", [41, "a"]) == [[42, "a"]]
    err = assert_json_error(sql(srv, "SELECT $1, $2", [1]), 400, code="sql_invalid_param")
    assert "parameters" in err["message"]
    assert_json_error(sql(srv, "SELECT 1", [{"a": [1, "x"]}, ["x"]]), 400, code="sql_invalid_param")


def test_arrow_answers_read_with_pyarrow(srv, data):
    u = data["users"][1]
    q = "SELECT conversation_id, item_id, seq, created_at, embedding FROM items ORDER BY conversation_id, seq"
    r = sql(srv, q, user=u, headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    as_json = rows(srv, q, user=u)
    assert table.num_rows == len(as_json) > 0
    assert table.column("item_id").to_pylist() == [x[1] for x in as_json]
    assert table.schema.field("created_at").type == pa.timestamp("ms", tz="UTC")
    empty = sql(srv, "SELECT item_id FROM items WHERE false", user=u,
                headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert pa.ipc.open_stream(io.BytesIO(empty.content)).read_all().num_rows == 0


def test_explain_shows_pushdown_and_one_conversation_reads_only_its_items(srv, data):
    u = data["users"][0]
    conv = data["convs"][u][0]["id"]
    n = len(data["items"][conv])
    plan = "\n".join(r[1] for r in rows(srv, "EXPLAIN SELECT text FROM items WHERE conversation_id = $1", [conv], user=u))
    assert f"key_ranges=[{conv}]" in plan and "columns=[text]" in plan
    analyzed = "\n".join(r[1] for r in rows(srv, f"EXPLAIN ANALYZE SELECT count(*) FROM items WHERE conversation_id = '{conv}'"))
    assert re.search(rf"rows_read={n}\b", analyzed), analyzed
    # Newest first with a limit reads only the newest rows.
    analyzed = "\n".join(r[1] for r in rows(srv, f"EXPLAIN ANALYZE SELECT item_id FROM items WHERE conversation_id = '{conv}' "
                                                 "ORDER BY seq DESC LIMIT 1"))
    assert "newest_first" in analyzed and re.search(r"rows_read=1\b", analyzed), analyzed
    # A walk over many conversations is split among the session's partitions.
    plan = "\n".join(r[1] for r in rows(srv, "EXPLAIN SELECT role, count(*) FROM items GROUP BY role", user=u))
    assert "partitions=2" in plan, plan
    # A user filter walks that user's conversations only.
    plan = "\n".join(r[1] for r in rows(srv, "EXPLAIN SELECT id FROM conversations WHERE user_id = $1", [u]))
    assert f"user={u}" in plan


def metric(srv, name, labels=""):
    text = srv.http.get("/metrics").text
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_statement_is_planned_once_and_each_run_binds_its_own_values(srv, data):
    """A statement run again reuses its plan: each run reads only the conversation its
    parameter names, a null parameter matches nothing (not everything), and a plan with now()
    is planned again each time rather than keeping the first run's time."""
    u = data["users"][1]
    convs = [c["id"] for c in data["convs"][u]]
    q = f"SELECT count(*) FROM items WHERE conversation_id = $1 -- {data['tag']}"
    rows(srv, q, [convs[0]], user=u)
    for conv in convs[1:]:
        hits, read = metric(srv, "mnemo_sql_plans_total", '{cache="hit"}'), \
            metric(srv, "mnemo_sql_rows_read_total", '{table="items"}')
        assert rows(srv, q, [conv], user=u) == [[len(data["items"][conv])]]
        assert metric(srv, "mnemo_sql_plans_total", '{cache="hit"}') == hits + 1
        # The filter over $1 was pushed into the scan of the reused plan.
        assert metric(srv, "mnemo_sql_rows_read_total", '{table="items"}') - read == len(data["items"][conv])
    assert rows(srv, q, [None], user=u) == [[0]]
    q_in = "SELECT count(*) FROM items WHERE conversation_id IN ($1, $2)"
    assert rows(srv, q_in, [convs[0], None], user=u) == [[len(data["items"][convs[0]])]]
    assert rows(srv, q_in, [None, None], user=u) == [[0]]
    assert rows(srv, "SELECT count(*) FROM conversations WHERE user_id = $1", [None]) == [[0]]
    # A time bound over a parameter narrows the scan as a constant does.
    q_t = "SELECT count(*) FROM items WHERE conversation_id = $1 AND created_at > $2"
    assert rows(srv, q_t, [convs[0], "2999-01-01T00:00:00Z"], user=u) == [[0]]
    assert rows(srv, q_t, [convs[0], "2000-01-01T00:00:00Z"], user=u) == [[len(data["items"][convs[0]])]]
    first = rows(srv, "SELECT CAST(now() AS VARCHAR)")
    time.sleep(0.01)
    assert rows(srv, "SELECT CAST(now() AS VARCHAR)") != first


def test_bad_sql_is_a_clear_400(srv):
    err = assert_json_error(sql(srv, "SELEC 1"), 400, code="sql_syntax_error")
    assert "Line: 1, Column" in err["message"]
    for q in ["DELETE FROM items", "INSERT INTO memory VALUES ('k')", "CREATE TABLE t (a INT)", "DROP TABLE items",
              "UPDATE items SET role = 'x'", "SELECT 1; SELECT 2", "COPY items TO '/tmp/x'", "SET x = 1"]:
        assert_json_error(sql(srv, q), 400, code="sql_read_only")
    err = assert_json_error(sql(srv, "SELECT * FROM nope"), 400, code="sql_invalid")
    assert "nope" in err["message"]
    err = assert_json_error(sql(srv, "SELECT nope FROM items"), 400, code="sql_invalid")
    assert "nope" in err["message"]
    assert_json_error(srv.http.post("/v1/sql", json={"query": ""}), 400)
    assert_json_error(srv.http.post("/v1/sql", json={"sql": "SELECT 1"}), 400)
    assert_json_error(srv.http.post("/v1/sql", content=b"{", headers={"content-type": "application/json"}), 400)
    assert rows(srv, "SELECT 1") == [[1]]


def test_time_memory_and_row_limits(tmp_path):
    s = MnemoServer(name="mnemo-sql-limits", extra_args=["--sql-timeout-ms", "3000", "--sql-memory-limit-mb", "1",
                                                         "--sql-max-rows", "3"])
    s.start()
    try:
        r = sql(s, "SELECT * FROM generate_series(1, 10)")
        assert r.status_code == 200 and r.json()["truncated"] is True and len(r.json()["rows"]) == 3
        slow = "SELECT count(*) FROM generate_series(1, 3000) a, generate_series(1, 3000) b, generate_series(1, 3000) c"
        started = time.monotonic()
        assert_json_error(sql(s, slow), 408, code="sql_timeout")
        assert time.monotonic() - started < 20
        big = "SELECT a.value % 100000 AS k, count(*) FROM generate_series(1, 2000000) a GROUP BY k ORDER BY k"
        assert_json_error(sql(s, big), 400, code="sql_memory_limit")
        # The server keeps serving.
        assert s.http.get("/healthz").status_code == 200
        assert rows(s, "SELECT 2") == [[2]]
    finally:
        s.close()


def test_psql_and_psycopg_with_parameters(srv, data, pg_port):
    u = data["users"][0]
    conv = data["convs"][u][0]["id"]
    out = subprocess.run(["psql", f"host=127.0.0.1 port={pg_port} user={u} password=x dbname=mnemo",
                          "-At", "-c", "SELECT conversation_id, text FROM items ORDER BY created_at DESC LIMIT 5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == min(5, sum(len(data["items"][c["id"]]) for c in data["convs"][u]))
    own = {c["id"] for c in data["convs"][u]}
    assert all(line.split("|")[0] in own for line in lines)
    with psycopg.connect(host="127.0.0.1", port=pg_port, user=u, password="x", dbname="mnemo") as conn:
        got = conn.execute("SELECT item_id, role FROM items WHERE conversation_id = %s ORDER BY seq", (conv,)).fetchall()
        assert [g[0] for g in got] == [i["id"] for i in data["items"][conv]]
        n = conn.execute("SELECT count(*) FROM items WHERE created_at >= %s AND seq >= %s",
                         (dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), 1)).fetchone()[0]
        assert n == sum(len(data["items"][c["id"]]) for c in data["convs"][u])
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
    with psycopg.connect(host="127.0.0.1", port=pg_port, user=u, password="x", dbname="mnemo",
                         autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute("DELETE FROM items")
        assert e.value.sqlstate == "25006"
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_vector_ordering_is_exact_and_planned_onto_the_index(srv):
    rnd = random.Random(3)
    u = f"vec-{uuid.uuid4().hex[:8]}"
    h = {"X-Mnemo-User": u}
    conv = srv.http.post("/v1/conversations", json={}, headers=h).json()["id"]
    vecs = {}
    for _ in range(2):
        batch = [{"type": "message", "role": "user", "content": f"v{k}",
                  "embedding": [rnd.uniform(-1, 1) for _ in range(8)]} for k in range(15)]
        r = srv.http.post(f"/v1/conversations/{conv}/items", json={"items": batch}, headers=h)
        assert r.status_code == 200, r.text
        for item, sent in zip(r.json()["data"], batch):
            vecs[item["id"]] = sent["embedding"]
    q = [rnd.uniform(-1, 1) for _ in range(8)]

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    expect = sorted(vecs, key=lambda i: cos(vecs[i], q), reverse=True)[:5]
    query = "SELECT item_id, cosine_similarity(embedding, $1) AS s FROM items ORDER BY s DESC LIMIT 5"
    got = rows(srv, query, [q], user=u)
    assert [g[0] for g in got] == expect
    assert all(g[1] == pytest.approx(cos(vecs[g[0]], q), abs=1e-4) for g in got)
    plan = "\n".join(r[1] for r in rows(srv, "EXPLAIN " + query, [q], user=u))
    assert "nearest=exact vector search (top 5 of 8 dims)" in plan, plan
    # Another filter keeps the scan (the index's top k would not be the same rows), same answer.
    scoped = query.replace("FROM items", "FROM items WHERE conversation_id = $2")
    plan = "\n".join(r[1] for r in rows(srv, "EXPLAIN " + scoped, [q, conv], user=u))
    assert "nearest" not in plan
    assert [g[0] for g in rows(srv, scoped, [q, conv], user=u)] == expect
    assert rows(srv, "SELECT cosine_similarity([1, 0], [0, 2]), cosine_similarity([1], [1, 2]), "
                     "cosine_similarity(NULL, [1]), cosine_similarity([0, 0], [1, 1])") == [[0.0, None, None, None]]

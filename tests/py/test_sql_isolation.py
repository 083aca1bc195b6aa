"""SQL isolation: user × user and tenant × tenant, through every table and query shape, over
HTTP and over the PostgreSQL wire protocol, with tokens from the test identity provider.

The scope comes from the verified token (and the acting user it may name); no join,
subquery, CTE, UNION, catalog query or function shows a row the REST API would not."""
from __future__ import annotations

import uuid

import psycopg
import pytest

from conftest import MnemoServer, assert_json_error, free_port
from idp import IdentityProvider

SCP = "Conversations.ReadWrite Memory.ReadWrite Search Changes.Read"


@pytest.fixture(scope="module")
def idp():
    p = IdentityProvider().start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def world(idp):
    pg = free_port()
    srv = MnemoServer(name="mnemo-sql-iso", extra_args=idp.server_args() + ["--pg-listen", f"127.0.0.1:{pg}"])
    srv.start()
    tag = uuid.uuid4().hex[:8]
    a, b = f"a-{tag}", f"b-{tag}"
    h = srv.http
    made = {}
    for tenant, user in [("tenant-x", a), ("tenant-x", b), ("tenant-y", a)]:
        tok = idp.user(user, tenant=tenant, scp=SCP)
        hdr = {"Authorization": f"Bearer {tok}"}
        conv = h.post("/v1/conversations", headers=hdr, json={
            "metadata": {"owner": f"{tenant}/{user}"},
            "items": [{"type": "message", "role": "user", "content": f"secret of {tenant} {user} {tag}"}]}).json()
        assert h.put(f"/v1/kv/users/{user}/note", content=f"{tenant}/{user}".encode(), headers=hdr).status_code == 200
        made[(tenant, user)] = conv["id"]
    x_app = idp.app(["Conversations.ReadWrite", "Memory.ReadWrite", "Changes.Read", "Search"], tenant="tenant-x")
    h.put(f"/v1/kv/x-shared-{tag}", content=b"x", headers={"Authorization": f"Bearer {x_app}"})
    yield {"srv": srv, "pg": pg, "a": a, "b": b, "made": made, "tag": tag, "x_app": x_app}
    srv.close()


def shapes(tag):
    """Queries that each return the conversation ids they can see, in every shape."""
    return [
        "SELECT id FROM conversations",
        "SELECT conversation_id FROM items",
        "SELECT c.id FROM conversations c JOIN items i ON i.conversation_id = c.id",
        "SELECT id FROM conversations WHERE id IN (SELECT conversation_id FROM items)",
        "WITH x AS (SELECT conversation_id AS id FROM items) SELECT id FROM x",
        "SELECT id FROM conversations UNION SELECT conversation_id FROM items",
        "SELECT conversation_id FROM changes WHERE conversation_id IS NOT NULL",
        "SELECT json_get_str(metadata, 'owner') FROM conversations",
        f"SELECT conversation_id FROM search('secret {tag}', mode => 'text', top_k => 50)",
        "SELECT conversation_id FROM items WHERE user_id IS NULL OR user_id IS NOT NULL",
    ]


def http_values(world, token, user=None, query=""):
    h = {"Authorization": f"Bearer {token}"}
    if user:
        h["X-Mnemo-User"] = user
    r = world["srv"].http.post("/v1/sql", json={"query": query}, headers=h)
    assert r.status_code == 200, (query, r.text)
    return {row[0] for row in r.json()["rows"]}


def pg_values(world, token, user, query):
    with psycopg.connect(host="127.0.0.1", port=world["pg"], user=user, password=token, dbname="mnemo",
                         autocommit=True) as conn:
        return {row[0] for row in conn.execute(query).fetchall()}


def allowed(world, tenant, user):
    conv = world["made"][(tenant, user)]
    return {conv, f"{tenant}/{user}"}


@pytest.mark.parametrize("via", ["http", "pg"])
def test_users_and_tenants_see_only_their_own_rows(world, idp, via):
    a, b, tag = world["a"], world["b"], world["tag"]
    run = http_values if via == "http" else pg_values
    for tenant, user in [("tenant-x", a), ("tenant-x", b), ("tenant-y", a)]:
        tok = idp.user(user, tenant=tenant, scp=SCP)
        for q in shapes(tag):
            got = run(world, tok, user, q)
            assert got <= allowed(world, tenant, user), (via, tenant, user, q, got)
            assert got, (via, tenant, user, q)


@pytest.mark.parametrize("via", ["http", "pg"])
def test_memory_and_catalogs_are_scoped(world, idp, via):
    a, b, tag = world["a"], world["b"], world["tag"]
    run = http_values if via == "http" else pg_values
    tok = idp.user(a, tenant="tenant-x", scp=SCP)
    keys = run(world, tok, a, "SELECT key FROM memory")
    assert f"users/{a}/note" in keys and f"x-shared-{tag}" in keys
    assert not any(k.startswith("users/") and not k.startswith(f"users/{a}/") for k in keys)
    values = run(world, tok, a, "SELECT value_text FROM memory WHERE key LIKE 'users/%'")
    assert values == {f"tenant-x/{a}"}
    # A filter naming another user finds nothing rather than widening the scope.
    assert run(world, tok, a, f"SELECT id FROM conversations WHERE user_id = '{b}'") == set()
    assert run(world, tok, a, f"SELECT key FROM memory WHERE key = 'users/{b}/note'") == set()
    # Tenant Y's application sees none of tenant X.
    y_app = idp.app(["Conversations.ReadWrite", "Memory.ReadWrite"], tenant="tenant-y")
    assert run(world, y_app, "mnemo" if via == "pg" else None, "SELECT id FROM conversations") == {
        world["made"][("tenant-y", a)]}
    # The catalog lists tables, never data.
    tables = run(world, tok, a, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == {"conversations", "items", "memory", "changes", "audit"}


def test_applications_see_their_tenant_or_the_user_they_name(world, idp):
    a, b = world["a"], world["b"]
    app = world["x_app"]
    both = http_values(world, app, None, "SELECT id FROM conversations")
    assert {world["made"][("tenant-x", a)], world["made"][("tenant-x", b)]} <= both
    assert world["made"][("tenant-y", a)] not in both
    assert http_values(world, app, a, "SELECT id FROM conversations") == {world["made"][("tenant-x", a)]}
    assert pg_values(world, app, a, "SELECT id FROM conversations") == {world["made"][("tenant-x", a)]}


def test_permissions_are_those_of_rest(world, idp):
    h = world["srv"].http
    a = world["a"]
    mem_only = idp.user(a, tenant="tenant-x", scp="Memory.Read")
    r = h.post("/v1/sql", json={"query": "SELECT * FROM items"}, headers={"Authorization": f"Bearer {mem_only}"})
    err = assert_json_error(r, 403, code="forbidden")
    assert "conversations.read" in err["message"]
    ok = h.post("/v1/sql", json={"query": "SELECT key FROM memory"}, headers={"Authorization": f"Bearer {mem_only}"})
    assert ok.status_code == 200
    tok = idp.user(a, tenant="tenant-x", scp=SCP)
    r = h.post("/v1/sql", json={"query": "SELECT * FROM audit"}, headers={"Authorization": f"Bearer {tok}"})
    assert_json_error(r, 403, code="forbidden")
    admin = idp.app(["Admin"], tenant="tenant-x")
    r = h.post("/v1/sql", json={"query": "SELECT action FROM audit"}, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    # A user token cannot act for someone else; a bad token is refused.
    r = h.post("/v1/sql", json={"query": "SELECT 1"}, headers={"Authorization": f"Bearer {tok}",
                                                             "X-Mnemo-User": world["b"]})
    assert r.status_code == 403
    r = h.post("/v1/sql", json={"query": "SELECT 1"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=world["pg"], user=a, password="nope", dbname="mnemo")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=world["pg"], user=world["b"], password=tok, dbname="mnemo")
    with psycopg.connect(host="127.0.0.1", port=world["pg"], user=a, password=mem_only, dbname="mnemo",
                         autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM conversations")

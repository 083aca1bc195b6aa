"""Authentication, permissions and isolation over HTTP, with a test identity provider
(tests/py/idp.py) and the official openai SDK sending the bearer token.

Each case checks the status and that nothing leaks: another tenant's or user's ids are 404
(never 403, which would confirm they exist)."""

from __future__ import annotations

import subprocess
import time
import uuid

import openai
import pytest

from conftest import MnemoServer, free_port, mnemo_bin
from idp import SigningKey, IdentityProvider, claims, hs256_token, unsigned_token

ALL_USER_SCOPES = "Conversations.ReadWrite Memory.ReadWrite Search"


@pytest.fixture(scope="module")
def idp():
    p = IdentityProvider().start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def jwt_server(idp):
    srv = MnemoServer(name="mnemo-jwt", extra_args=idp.server_args())
    srv.start()
    yield srv
    srv.close()


def bearer(token: str, user: str | None = None) -> dict:
    h = {"Authorization": f"Bearer {token}"}
    if user is not None:
        h["X-Mnemo-User"] = user
    return h


def sdk(srv: MnemoServer, token: str, user: str | None = None) -> openai.OpenAI:
    headers = {"X-Mnemo-User": user} if user else None
    return openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key=token, max_retries=0, timeout=30.0,
                         default_headers=headers)


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ------------------------------------------------------------------------------- tokens

def test_valid_tokens_work_with_the_official_sdk(jwt_server, idp):
    client = sdk(jwt_server, idp.user(f"u-{uuid.uuid4().hex[:8]}"))
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    items = client.conversations.items.list(conv.id)
    assert [i.content[0].text for i in items.data] == ["hi"]
    # ES256 keys work as well as RS256.
    es = idp.mint(claims("tenant-x", "alice", scp=ALL_USER_SCOPES), key=idp.keys[1])
    assert sdk(jwt_server, es).conversations.create().id.startswith("conv_")


@pytest.mark.parametrize("case", [
    "missing", "garbage", "expired", "not_yet_valid", "wrong_aud", "wrong_iss", "alg_none",
    "hs256_with_public_key", "no_tid", "bad_signature", "basic_scheme",
])
def test_bad_tokens_are_401(jwt_server, idp, case):
    rsa_key = idp.keys[0]
    now = int(time.time())
    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "expired": idp.mint(claims(scp=ALL_USER_SCOPES, exp=now - 120)),
        "not_yet_valid": idp.mint(claims(scp=ALL_USER_SCOPES, nbf=now + 600)),
        "wrong_aud": idp.mint(claims(scp=ALL_USER_SCOPES, aud="api://someone-else")),
        "wrong_iss": idp.mint(claims(scp=ALL_USER_SCOPES, iss="https://evil.test/tenant-x/v2.0")),
        "alg_none": unsigned_token(claims(scp=ALL_USER_SCOPES)),
        "hs256_with_public_key": hs256_token(rsa_key.public_pem(), claims(scp=ALL_USER_SCOPES),
                                             kid=rsa_key.kid),
        "no_tid": idp.mint(claims(scp=ALL_USER_SCOPES, tid=None)),
        "bad_signature": idp.mint(claims(scp=ALL_USER_SCOPES), key=SigningKey("rsa-1")),
        "basic_scheme": None,
    }
    token = tokens[case]
    if case == "basic_scheme":
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    else:
        headers = {} if token is None else bearer(token)
    r = jwt_server.http.post("/v1/conversations", json={}, headers=headers)
    assert r.status_code == 401, (case, r.text)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    err = error_of(r)
    assert err["type"] == "authentication_error"
    if token:
        assert token not in r.text
    # The SDK surfaces it as an authentication error.
    if token:
        with pytest.raises(openai.AuthenticationError):
            sdk(jwt_server, token).conversations.create()


def test_tokens_never_reach_the_log_and_failures_are_counted(jwt_server, idp):
    token = idp.mint(claims(scp=ALL_USER_SCOPES, aud="api://wrong"))
    assert jwt_server.http.get("/v1/kv", headers=bearer(token)).status_code == 401
    assert token.split(".")[1] not in jwt_server.log_path.read_text(errors="replace")
    metrics = jwt_server.http.get("/metrics").text
    assert 'mnemo_auth_failures_total{reason="wrong_audience"}' in metrics


def test_rotation_unknown_kid_refetches_and_removed_keys_are_distrusted(idp):
    p = IdentityProvider().start()
    srv = MnemoServer(name="mnemo-jwt-rot", extra_args=p.server_args())
    try:
        srv.start()
        old = p.keys[0]
        assert srv.http.get("/v1/kv", headers=bearer(p.mint(claims(scp="Memory.Read"), key=old))).status_code == 200
        new = SigningKey("rsa-2")
        p.published = [new]  # emergency rotation: old key removed
        fetches = p.fetches
        r = srv.http.get("/v1/kv", headers=bearer(p.mint(claims(scp="Memory.Read"), key=new)))
        assert r.status_code == 200, r.text
        assert p.fetches == fetches + 1, "an unknown kid triggers one fetch"
        r = srv.http.get("/v1/kv", headers=bearer(p.mint(claims(scp="Memory.Read"), key=old)))
        assert r.status_code == 401, "a key removed from the JWKS is distrusted at once"
    finally:
        srv.close()
        p.stop()


def test_keys_survive_an_idp_outage_and_a_restart(idp):
    p = IdentityProvider().start()
    srv = MnemoServer(name="mnemo-jwt-down", extra_args=p.server_args())
    try:
        srv.start()
        token = p.mint(claims(scp="Memory.ReadWrite"))
        assert srv.http.put("/v1/kv/shared-x", content=b"v", headers=bearer(p.app(["Memory.ReadWrite"]))).status_code == 200
        p.stop()
        # The endpoint is down: cached keys still validate.
        assert srv.http.get("/v1/kv/shared-x", headers=bearer(token)).status_code == 200
        # A restart while it is down uses the on-disk key cache.
        srv.restart()
        assert srv.http.get("/v1/kv/shared-x", headers=bearer(token)).status_code == 200
        # Unknown keys cannot be fetched: refused (never let in).
        r = srv.http.get("/v1/kv/shared-x", headers=bearer(p.mint(claims(scp="Memory.Read"), key=SigningKey("rsa-9"))))
        assert r.status_code == 401
    finally:
        srv.close()
        p.stop()


def test_no_keys_ever_fetched_fails_closed_with_503():
    port = free_port()  # nothing listens there
    srv = MnemoServer(name="mnemo-jwt-nokeys", extra_args=[
        "--auth", "jwt", "--jwt-issuer", "https://login.test/{tenantid}/v2.0",
        "--jwt-audience", "api://mnemo-test", "--jwks-url", f"http://127.0.0.1:{port}/jwks"])
    idp = IdentityProvider()
    try:
        srv.start()
        r = srv.http.get("/v1/kv", headers=bearer(idp.mint(claims(scp="Memory.Read"))))
        assert r.status_code == 503, r.text
        assert error_of(r)["code"] == "auth_unavailable"
    finally:
        srv.close()


# ------------------------------------------------------------------------------- isolation

def test_user_a_cannot_touch_user_b_conversations(jwt_server, idp):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    ca, cb = sdk(jwt_server, idp.user(a)), sdk(jwt_server, idp.user(b))
    conv = ca.conversations.create(items=[{"type": "message", "role": "user", "content": "secret of a"}])
    item_id = ca.conversations.items.list(conv.id).data[0].id
    for call in (
        lambda: cb.conversations.retrieve(conv.id),
        lambda: cb.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: cb.conversations.items.list(conv.id),
        lambda: cb.conversations.items.retrieve(item_id, conversation_id=conv.id),
        lambda: cb.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "x"}]),
        lambda: cb.conversations.items.delete(item_id, conversation_id=conv.id),
        lambda: cb.conversations.delete(conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # Naming A in X-Mnemo-User does not help B: 403, and still nothing of A's.
    r = jwt_server.http.get(f"/v1/conversations/{conv.id}", headers=bearer(idp.user(b), user=a))
    assert r.status_code == 403 and error_of(r)["type"] == "permission_error"
    assert "secret of a" not in r.text
    # A still has everything.
    assert [i.content[0].text for i in ca.conversations.items.list(conv.id).data] == ["secret of a"]
    assert jwt_server.http.get(f"/v1/conversations/{conv.id}", headers=bearer(idp.user(a), user=a)).status_code == 200


def test_tenants_are_isolated_on_every_route(jwt_server, idp):
    x_app = idp.app(["Conversations.ReadWrite", "Memory.ReadWrite"], tenant="tenant-x")
    y_app = idp.app(["Conversations.ReadWrite", "Memory.ReadWrite"], tenant="tenant-y")
    conv = sdk(jwt_server, x_app).conversations.create(
        items=[{"type": "message", "role": "user", "content": "x only"}])
    item_id = sdk(jwt_server, x_app).conversations.items.list(conv.id).data[0].id
    h = jwt_server.http
    for method, url in [("GET", f"/v1/conversations/{conv.id}"), ("POST", f"/v1/conversations/{conv.id}"),
                        ("GET", f"/v1/conversations/{conv.id}/items"),
                        ("GET", f"/v1/conversations/{conv.id}/items/{item_id}"),
                        ("DELETE", f"/v1/conversations/{conv.id}/items/{item_id}"),
                        ("DELETE", f"/v1/conversations/{conv.id}")]:
        body = {"metadata": {"a": "b"}} if method == "POST" else None
        r = h.request(method, url, json=body, headers=bearer(y_app))
        assert r.status_code == 404, (method, url, r.text)
    # None of Y's attempts changed X's conversation.
    x = sdk(jwt_server, x_app)
    assert x.conversations.retrieve(conv.id).metadata == {}
    assert [i.id for i in x.conversations.items.list(conv.id).data] == [item_id]
    key = f"cfg-{uuid.uuid4().hex[:8]}"
    assert h.put(f"/v1/kv/{key}", content=b"x-value", headers=bearer(x_app)).status_code == 200
    assert h.get(f"/v1/kv/{key}", headers=bearer(y_app)).status_code == 404
    assert h.delete(f"/v1/kv/{key}", headers=bearer(y_app)).status_code == 404
    listed = h.get("/v1/kv", params={"prefix": key}, headers=bearer(y_app)).json()
    assert listed["data"] == []
    # Y writing the same key name writes its own key; X's value is untouched.
    assert h.put(f"/v1/kv/{key}", content=b"y-value", headers=bearer(y_app)).status_code == 200
    assert h.get(f"/v1/kv/{key}", headers=bearer(x_app)).content == b"x-value"
    r = h.post("/v1/kv/batch", json={"operations": [{"op": "delete", "key": key, "if_match": '"nope"'}]},
               headers=bearer(y_app))
    assert r.status_code == 412
    assert h.get(f"/v1/kv/{key}", headers=bearer(x_app)).content == b"x-value"


def test_permissions_are_enforced_per_route(jwt_server, idp):
    h = jwt_server.http
    reader = idp.app(["Memory.Read"])
    r = h.post("/v1/conversations", json={}, headers=bearer(reader))
    assert r.status_code == 403
    err = error_of(r)
    assert err["type"] == "permission_error" and "conversations.write" in err["message"]
    assert h.put("/v1/kv/k", content=b"v", headers=bearer(reader)).status_code == 403
    assert h.get("/v1/kv", headers=bearer(reader)).status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        sdk(jwt_server, reader).conversations.create()
    # Read-only conversation scope: may read, may not write.
    ro_user = idp.user("ro-user", scp="Conversations.Read")
    assert h.post("/v1/conversations", json={}, headers=bearer(ro_user)).status_code == 403
    # No roles or scopes at all: nothing.
    nobody = idp.mint(claims("tenant-x", "nobody"))
    assert h.get("/v1/kv", headers=bearer(nobody)).status_code == 403
    assert h.get("/v1/admin/audit", headers=bearer(nobody)).status_code == 403


def test_applications_act_for_users_of_their_tenant(jwt_server, idp):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    app = idp.app(["Conversations.ReadWrite"])
    conv = sdk(jwt_server, app, user=a).conversations.create(
        items=[{"type": "message", "role": "user", "content": "for a"}])
    # The conversation belongs to A: A sees it, B does not, the app tenant-wide does.
    assert sdk(jwt_server, idp.user(a)).conversations.retrieve(conv.id).id == conv.id
    with pytest.raises(openai.NotFoundError):
        sdk(jwt_server, idp.user(b)).conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        sdk(jwt_server, app, user=b).conversations.retrieve(conv.id)
    assert sdk(jwt_server, app).conversations.retrieve(conv.id).id == conv.id
    # A user token naming someone else is refused; naming itself is fine.
    r = jwt_server.http.post("/v1/conversations", json={}, headers=bearer(idp.user(a), user=b))
    assert r.status_code == 403
    assert jwt_server.http.post("/v1/conversations", json={}, headers=bearer(idp.user(a), user=a)).status_code == 200


def test_memory_user_spaces(jwt_server, idp):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    h = jwt_server.http
    ta, tb = idp.user(a), idp.user(b)
    app = idp.app(["Memory.ReadWrite"])
    shared = f"shared-{a}"
    assert h.put(f"/v1/kv/{shared}", content=b"s", headers=bearer(app)).status_code == 200
    assert h.put(f"/v1/kv/users/{a}/note", content=b"a1", headers=bearer(ta)).status_code == 200
    assert h.put(f"/v1/kv/users/{b}/note", content=b"b1", headers=bearer(tb)).status_code == 200
    # A cannot read (404), write or delete (403) B's space; cannot write shared keys.
    assert h.get(f"/v1/kv/users/{b}/note", headers=bearer(ta)).status_code == 404
    assert h.put(f"/v1/kv/users/{b}/note", content=b"x", headers=bearer(ta)).status_code == 403
    assert h.delete(f"/v1/kv/users/{b}/note", headers=bearer(ta)).status_code == 403
    assert h.put(f"/v1/kv/{shared}", content=b"x", headers=bearer(ta)).status_code == 403
    r = h.post("/v1/kv/batch", json={"operations": [
        {"op": "put", "key": f"users/{a}/ok", "value": "1"},
        {"op": "put", "key": f"users/{b}/evil", "value": "1"}]}, headers=bearer(ta))
    assert r.status_code == 403 and error_of(r)["param"] == "operations[1].key"
    assert h.get(f"/v1/kv/users/{a}/ok", headers=bearer(ta)).status_code == 404, "batch is all-or-nothing"
    # A reads shared keys and its own space.
    assert h.get(f"/v1/kv/{shared}", headers=bearer(ta)).content == b"s"
    assert h.get(f"/v1/kv/users/{a}/note", headers=bearer(ta)).content == b"a1"
    assert h.get(f"/v1/kv/users/{b}/note", headers=bearer(tb)).content == b"b1"
    # Listings never show another user's keys, whatever the prefix.
    for prefix in ["", "users/", f"users/{b}", "u"]:
        keys = []
        after = None
        while True:
            params = {"prefix": prefix, "limit": 2}
            if after:
                params["after"] = after
            page = h.get("/v1/kv", params=params, headers=bearer(ta)).json()
            keys += [e["key"] for e in page["data"]]
            if not page["has_more"]:
                break
            after = page["next_after"]
        assert not any(k.startswith(f"users/{b}") for k in keys), (prefix, keys)
        assert not any(k.startswith("users/") and not k.startswith(f"users/{a}/") for k in keys), (prefix, keys)
        if prefix in ("", "users/", "u"):
            assert f"users/{a}/note" in keys
        if prefix == "":
            assert shared in keys
    # The application sees everything in the tenant.
    all_keys = [e["key"] for e in h.get("/v1/kv", params={"prefix": "users/", "limit": 1000},
                                        headers=bearer(app)).json()["data"]]
    assert f"users/{a}/note" in all_keys and f"users/{b}/note" in all_keys


def test_admin_erase_is_audited_and_denials_too(jwt_server, idp):
    victim, other = f"v-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    h = jwt_server.http
    tv = idp.user(victim)
    conv = sdk(jwt_server, tv).conversations.create(items=[{"type": "message", "role": "user", "content": "bye"}])
    keep = sdk(jwt_server, idp.user(other)).conversations.create()
    assert h.put(f"/v1/kv/users/{victim}/m", content=b"1", headers=bearer(tv)).status_code == 200
    # Without the Admin role: 403, audited.
    not_admin = idp.app(["Conversations.ReadWrite"], subject="intruder-app")
    assert h.delete(f"/v1/admin/users/{victim}", headers=bearer(not_admin)).status_code == 403
    admin = idp.app(["Admin", "Conversations.ReadWrite"], subject="admin-app")
    r = h.delete(f"/v1/admin/users/{victim}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json()["conversations_deleted"] == 1 and r.json()["memory_keys_deleted"] == 1
    with pytest.raises(openai.NotFoundError):
        sdk(jwt_server, admin).conversations.retrieve(conv.id)
    assert sdk(jwt_server, admin).conversations.retrieve(keep.id).id == keep.id
    log = h.get("/v1/admin/audit", params={"limit": 1000}, headers=bearer(admin)).json()["data"]
    erase = [e for e in log if e["action"] == "user.erase" and e["target"] == victim]
    assert len(erase) == 1 and erase[0]["actor"] == "admin-app" and erase[0]["actor_kind"] == "application"
    denied = [e for e in log if e["action"] == "denied" and e["actor"] == "intruder-app"]
    assert denied and denied[0]["target"] == f"/v1/admin/users/{victim}"
    # Another tenant's admin sees its own tenant's log, and none of this.
    y_admin = idp.app(["Admin"], tenant="tenant-y", subject="admin-app")
    y_victim = f"y-{victim}"
    assert h.delete(f"/v1/admin/users/{y_victim}", headers=bearer(y_admin)).status_code == 200
    y_log = h.get("/v1/admin/audit", params={"limit": 1000}, headers=bearer(y_admin)).json()["data"]
    assert [e["target"] for e in y_log if e["action"] == "user.erase" and e["target"] in (victim, y_victim)] == [y_victim]
    assert not any(e.get("target") in (victim, f"/v1/admin/users/{victim}") for e in y_log)


# ------------------------------------------------------------------------------- API keys and modes

def keys_cli(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([mnemo_bin(), "keys", "--file", str(path), *args], capture_output=True,
                          text=True, timeout=60)


def test_api_keys_create_use_revoke(tmp_path):
    key_file = tmp_path / "api-keys.json"
    out = keys_cli(key_file, "create", "--tenant", "acme", "--role", "Conversations.ReadWrite",
                   "--role", "Memory.ReadWrite", "--note", "test")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("mnemo_") and key not in key_file.read_text()
    user_key = keys_cli(key_file, "create", "--tenant", "acme", "--role", "Conversations.ReadWrite",
                        "--user", "alice").stdout.strip()
    srv = MnemoServer(name="mnemo-keys", extra_args=["--auth", "keys", "--api-keys-file", str(key_file)])
    try:
        srv.start()
        conv = sdk(srv, key, user="alice").conversations.create()
        assert sdk(srv, user_key).conversations.retrieve(conv.id).id == conv.id
        other = sdk(srv, key, user="bob").conversations.create()
        with pytest.raises(openai.NotFoundError):
            sdk(srv, user_key).conversations.retrieve(other.id)
        with pytest.raises(openai.AuthenticationError):
            sdk(srv, key[:-1] + ("A" if key[-1] != "A" else "B")).conversations.create()
        key_id = key.split("_")[1]
        listing = keys_cli(key_file, "list").stdout
        assert key_id in listing and "active" in listing
        assert keys_cli(key_file, "revoke", key_id).returncode == 0
        deadline = time.time() + 10
        while time.time() < deadline:
            if srv.http.get("/v1/kv", headers=bearer(key)).status_code == 401:
                break
            time.sleep(0.2)
        assert srv.http.get("/v1/kv", headers=bearer(key)).status_code == 401, "revoked key still accepted"
        assert sdk(srv, user_key).conversations.retrieve(conv.id).id == conv.id
    finally:
        srv.close()


def test_no_auth_is_refused_off_loopback(tmp_path):
    r = subprocess.run([mnemo_bin(), "serve", "--data-dir", str(tmp_path), "--listen", f"0.0.0.0:{free_port()}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "loopback" in r.stderr


def test_config_file_sets_auth_and_permissions(tmp_path, idp):
    cfg = tmp_path / "mnemo.toml"
    cfg.write_text(f"""
[auth]
mode = "jwt"
jwt_issuer = ["https://login.test/{{tenantid}}/v2.0"]
jwt_audience = ["api://mnemo-test"]
jwks_url = "{idp.jwks_url}"

[auth.permissions]
"Notes.Writer" = ["memory.read", "memory.write"]
""")
    srv = MnemoServer(name="mnemo-cfg", extra_args=["--config", str(cfg)])
    try:
        srv.start()
        writer = idp.app(["Notes.Writer"])
        assert srv.http.put("/v1/kv/n", content=b"1", headers=bearer(writer)).status_code == 200
        # The configured map replaces the default one.
        default_role = idp.app(["Memory.ReadWrite"])
        assert srv.http.get("/v1/kv/n", headers=bearer(default_role)).status_code == 403
        assert srv.http.get("/v1/kv/n").status_code == 401
    finally:
        srv.close()


def test_search_is_confined_to_the_caller(jwt_server, idp):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    word = f"w{uuid.uuid4().hex[:12]}"
    item = {"type": "message", "role": "user", "content": f"says {word}"}
    conv_a = sdk(jwt_server, idp.user(a)).conversations.create(items=[item]).id
    conv_b = sdk(jwt_server, idp.user(b)).conversations.create(items=[item]).id
    y_app = idp.app(["Search", "Conversations.ReadWrite"], tenant="tenant-y")
    conv_y = sdk(jwt_server, y_app).conversations.create(items=[item]).id
    h = jwt_server.http
    body = {"query": word}

    def found(headers):
        r = h.post("/v1/search", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return sorted(x["conversation_id"] for x in r.json()["data"])

    # Each user finds their own item and only it; B naming A is refused.
    assert found(bearer(idp.user(a))) == [conv_a]
    assert found(bearer(idp.user(b))) == [conv_b]
    assert h.post("/v1/search", json=body, headers=bearer(idp.user(b), user=a)).status_code == 403
    # Another tenant's application finds its own tenant's item only.
    assert found(bearer(y_app)) == [conv_y]
    # The tenant's application may search for A, for B, and tenant-wide.
    x_app = idp.app(["Search", "Conversations.Read"])
    assert found(bearer(x_app, user=a)) == [conv_a]
    assert found(bearer(x_app, user=b)) == [conv_b]
    assert found(bearer(x_app)) == sorted([conv_a, conv_b])
    # Without the Search permission: 403.
    assert h.post("/v1/search", json=body, headers=bearer(idp.app(["Conversations.Read"]))).status_code == 403


def test_the_change_feed_is_confined_to_the_caller(jwt_server, idp):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    scp = "Conversations.ReadWrite Memory.ReadWrite Changes.Read"
    h = jwt_server.http
    x_app = idp.app(["Changes.Read", "Memory.ReadWrite"])
    y_app = idp.app(["Changes.Read", "Memory.ReadWrite"], tenant="tenant-y")
    start_x = h.get("/v1/changes", params={"after": "now"}, headers=bearer(x_app)).json()["next_cursor"]
    start_y = h.get("/v1/changes", params={"after": "now"}, headers=bearer(y_app)).json()["next_cursor"]
    conv_a = sdk(jwt_server, idp.user(a, scp=scp)).conversations.create(
        items=[{"type": "message", "role": "user", "content": "hi"}]).id
    assert h.put(f"/v1/kv/users/{b}/note", content=b"v", headers=bearer(idp.user(b, scp=scp))).status_code == 200
    assert h.put("/v1/kv/y-shared", content=b"v", headers=bearer(y_app)).status_code == 200

    def events(headers, after):
        r = h.get("/v1/changes", params={"after": after, "limit": 1000}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    # Each user sees their own changes and nothing of the other user or tenant.
    seen_a = events(bearer(idp.user(a, scp=scp)), start_x)
    assert {e.get("conversation_id") for e in seen_a} == {conv_a}
    assert all(e["user_id"] == a for e in seen_a)
    seen_b = events(bearer(idp.user(b, scp=scp)), start_x)
    assert [(e["type"], e["key"]) for e in seen_b] == [("memory.put", f"users/{b}/note")]
    # A user token naming another user is refused.
    assert h.get("/v1/changes", headers=bearer(idp.user(b, scp=scp), user=a)).status_code == 403
    # The tenant's application sees both users, or one it names; the other tenant sees its own.
    assert {e.get("user_id") for e in events(bearer(x_app), start_x)} >= {a, b}
    assert {e["user_id"] for e in events(bearer(x_app, user=a), start_x)} == {a}
    assert [e["key"] for e in events(bearer(y_app), start_y)] == ["y-shared"]
    # Without the permission: 403.
    assert h.get("/v1/changes", headers=bearer(idp.user(a))).status_code == 403

"""Research consent: `PUT/GET /v1/admin/users/{user}/consent`, audited, with the tenant policy
`--research-consent` deciding users who never answered."""
from __future__ import annotations

import uuid

import pytest

from conftest import MnemoServer, assert_json_error


@pytest.fixture(scope="module")
def srv():
    s = MnemoServer(name="mnemo-consent")
    s.start()
    yield s
    s.close()


def test_consent_is_recorded_audited_and_survives_a_restart(srv):
    user = f"u-{uuid.uuid4().hex[:8]}"
    url = f"/v1/admin/users/{user}/consent"
    got = srv.http.get(url).json()
    assert got == {"object": "user.consent", "user": user, "research": False, "explicit": False,
                   "policy": "opt-in", "updated_at": None}
    put = srv.http.put(url, json={"research": True})
    assert put.status_code == 200, put.text
    assert put.json()["research"] is True and put.json()["explicit"] is True
    assert isinstance(put.json()["updated_at"], int)
    assert srv.http.put(url, json={"research": False}).json()["research"] is False
    audit = srv.http.get("/v1/admin/audit").json()["data"]
    mine = [e for e in audit if e.get("target") == user]
    assert [(e["action"], e["details"]) for e in mine] == [
        ("user.consent", {"research": True}), ("user.consent", {"research": False})]
    srv.restart()
    assert srv.http.get(url).json()["research"] is False


def test_bad_consent_bodies_are_clear_400s(srv):
    url = "/v1/admin/users/alice/consent"
    assert_json_error(srv.http.put(url, json={"research": "yes"}), 400)
    assert_json_error(srv.http.put(url, json={}), 400)
    assert_json_error(srv.http.put(url, json={"research": True, "extra": 1}), 400)
    assert_json_error(srv.http.put(url, content=b"", headers={"content-type": "application/json"}), 400)
    assert srv.http.get(url).json()["explicit"] is False


def test_opt_out_policy_exports_users_who_never_answered():
    s = MnemoServer(name="mnemo-consent-optout", extra_args=["--research-consent", "opt-out"])
    s.start()
    try:
        got = s.http.get("/v1/admin/users/bob/consent").json()
        assert got["research"] is True and got["explicit"] is False and got["policy"] == "opt-out"
        s.http.put("/v1/admin/users/bob/consent", json={"research": False})
        assert s.http.get("/v1/admin/users/bob/consent").json()["research"] is False
    finally:
        s.close()


def test_consent_is_per_tenant_and_needs_admin():
    from idp import IdentityProvider

    idp = IdentityProvider().start()
    s = MnemoServer(name="mnemo-consent-auth", extra_args=idp.server_args())
    s.start()
    try:
        x, y = idp.app(["Admin"], tenant="tenant-x"), idp.app(["Admin"], tenant="tenant-y")
        auth = lambda tok: {"Authorization": f"Bearer {tok}"}  # noqa: E731
        url = "/v1/admin/users/alice/consent"
        assert s.http.put(url, json={"research": True}, headers=auth(x)).status_code == 200
        # The same user id in another tenant is another user.
        assert s.http.get(url, headers=auth(y)).json()["explicit"] is False
        assert s.http.get(url, headers=auth(x)).json()["research"] is True
        # Users and applications without Admin cannot read or set it, for themselves or others.
        for tok in [idp.user("alice", tenant="tenant-x", scp="Conversations.ReadWrite Memory.ReadWrite"),
                    idp.app(["Conversations.ReadWrite"], tenant="tenant-x")]:
            assert_json_error(s.http.put(url, json={"research": False}, headers=auth(tok)), 403)
            assert_json_error(s.http.get(url, headers=auth(tok)), 403)
        assert s.http.get(url, headers=auth(x)).json()["research"] is True
    finally:
        s.close()
        idp.stop()

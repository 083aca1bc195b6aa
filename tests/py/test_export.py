"""Research export end to end: jobs over HTTP, the `mnemo export` command, the dataset read by
pyarrow and DuckDB, consent, scrubbing, reproducibility, erasure reaching every object, and
crashes.

The store and the dataset live on the backend `MNEMO_TEST_STORE` names (local directory, S3
emulator or Azure emulator); the tests marked `storage` run against each."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MnemoServer, assert_json_error, mnemo_bin, store_kind


# --------------------------------------------------------------------------- datasets
class Dataset:
    """A dataset URL on the test backend, and a reader of its objects."""

    def __init__(self, name: str):
        kind = store_kind()
        tag = f"{name}-{uuid.uuid4().hex[:10]}"
        if kind == "s3":
            import boto3
            self.bucket, self.prefix = os.environ["MNEMO_TEST_S3_BUCKET"], f"datasets/{tag}"
            self.url = f"s3://{self.bucket}/{self.prefix}"
            self.s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        elif kind == "az":
            from azure.storage.blob import BlobServiceClient
            self.bucket, self.prefix = os.environ["MNEMO_TEST_AZ_CONTAINER"], f"datasets/{tag}"
            self.url = f"az://{self.bucket}/{self.prefix}"
            account, key = os.environ["AZURE_STORAGE_ACCOUNT_NAME"], os.environ["AZURE_STORAGE_ACCOUNT_KEY"]
            endpoint = os.environ["AZURITE_BLOB_STORAGE_URL"]
            conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
                    f"BlobEndpoint={endpoint}/{account};")
            self.az = BlobServiceClient.from_connection_string(conn).get_container_client(self.bucket)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix=f"mnemo-{name}-"))
            self.url = f"file://{self.dir}"
        self.kind = kind

    def objects(self) -> dict:
        """Every object under the dataset's root: relative path -> bytes."""
        out = {}
        if self.kind == "s3":
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
            for page in pages:
                for o in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
                    out[o["Key"][len(self.prefix) + 1:]] = body
        elif self.kind == "az":
            for b in self.az.list_blobs(name_starts_with=self.prefix + "/"):
                out[b.name[len(self.prefix) + 1:]] = self.az.download_blob(b.name).readall()
        else:
            for p in self.dir.rglob("*"):
                if p.is_file():
                    out[str(p.relative_to(self.dir))] = p.read_bytes()
        return out

    def local_copy(self) -> Path:
        """The dataset on local disk (DuckDB and pyarrow read files)."""
        d = Path(tempfile.mkdtemp(prefix="mnemo-ds-copy-"))
        for rel, body in self.objects().items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(body)
        return d


def manifest(objects: dict) -> dict:
    return json.loads(objects["_manifest.json"])


def table(objects: dict, name: str) -> pa.Table:
    m = manifest(objects)
    parts = [pq.read_table(io.BytesIO(objects[f["path"]])) for f in m["files"] if f["table"] == name]
    schema = parts[0].schema if parts else None
    return pa.concat_tables(parts) if parts else pa.table({}, schema=schema)


def decoded_strings(objects: dict) -> bytes:
    """Every object's bytes, with Parquet files decoded to their string values (pages are
    compressed, so raw bytes alone would hide text)."""
    out = []
    for rel, body in objects.items():
        if rel.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(body))
            for col in t.columns:
                if pa.types.is_string(col.type):
                    out.extend(v.encode() for v in col.to_pylist() if v is not None)
        else:
            out.append(body)
    return b"\n".join(out)


def wait_job(srv, job_id: str, headers=None, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = srv.http.get(f"/v1/admin/exports/{job_id}", headers=headers or {})
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"export job {job_id} did not finish: {job}")


def start_job(srv, path: str, body: dict, headers=None) -> dict:
    r = srv.http.post(path, json=body, headers=headers or {})
    assert r.status_code == 202, r.text
    assert set(r.json()) >= {"id", "status"} and r.json()["status"] in ("queued", "running")
    return wait_job(srv, r.json()["id"], headers)


def say(srv, user: str, texts: list, metadata=None) -> str:
    h = {"X-Mnemo-User": user}
    items = [{"type": "message", "role": "user", "content": t} for t in texts]
    r = srv.http.post("/v1/conversations", headers=h, json={"items": items[:20], "metadata": metadata or {}})
    assert r.status_code == 200, r.text
    conv = r.json()["id"]
    for i in range(20, len(items), 20):
        r = srv.http.post(f"/v1/conversations/{conv}/items", headers=h, json={"items": items[i:i + 20]})
        assert r.status_code == 200, r.text
    return conv


def consent(srv, user: str, research: bool, headers=None):
    r = srv.http.put(f"/v1/admin/users/{user}/consent", json={"research": research}, headers=headers or {})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def srv():
    s = MnemoServer(name="mnemo-export")
    s.start()
    yield s
    s.close()


# --------------------------------------------------------------------------- tests
@pytest.mark.storage
def test_export_is_consented_scrubbed_readable_reproducible_and_erasable(srv):
    tag = uuid.uuid4().hex[:8]
    u = {k: f"user-{k}-{tag}" for k in ["a1", "a2", "a3", "never", "no"]}
    for k in ["a1", "a2", "a3"]:
        consent(srv, u[k], True)
    consent(srv, u["no"], False)
    mark = {k: f"marker-{k}-{tag}" for k in u}
    say(srv, u["a1"], [f"{mark['a1']} mail me at a1.{tag}@example.com", "card 4111 1111 1111 1111 ok"])
    say(srv, u["a2"], [f"{mark['a2']} key sk-proj-{'Ab3' * 14}", "ip 10.1.2.3"])
    keep3 = say(srv, u["a3"], [f"{mark['a3']} kept"], metadata={"topic": "kept"})
    gone3 = say(srv, u["a3"], [f"{mark['a3']}-deleted call +1 415 555 0100"])
    say(srv, u["never"], [f"{mark['never']} never answered"])
    say(srv, u["no"], [f"{mark['no']} said no"])

    ds = Dataset("e2e")
    job = start_job(srv, "/v1/admin/exports", {"to": ds.url})
    assert job["status"] == "succeeded", job
    assert job["rows"] == {"conversations": 4, "items": 6} and job["version"] == 1
    assert job["progress"]["phase"] == "done" and job["progress"]["items"] == 6
    objs = ds.objects()
    m = manifest(objs)
    assert set(m) >= {"version", "checkpoint", "source", "mnemo_version", "filters", "consent_policy",
                      "key_id", "files"}
    assert m["consent_policy"] == "opt-in" and m["checkpoint"]["id"] == job["checkpoint"]
    for f in m["files"]:
        assert hashlib.sha256(objs[f["path"]]).hexdigest() == f["sha256"]
    assert "_manifests/v1.json" in objs

    # pyarrow and DuckDB read it; counts are the consenting users' items.
    items = table(objs, "items")
    assert items.num_rows == 6
    local = ds.local_copy()
    files = [str(local / f["path"]) for f in m["files"] if f["table"] == "items"]
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0] == 6
    assert con.execute("SELECT count(DISTINCT \"user\") FROM read_parquet(?)", [files]).fetchone()[0] == 3
    texts = "\n".join(items.column("text").to_pylist())
    for absent in [mark["never"], mark["no"], f"a1.{tag}@example.com", "4111", "sk-proj-", "10.1.2.3", "555 0100"]:
        assert absent not in texts, absent
    for placeholder in ["[EMAIL]", "[CARD]", "[SECRET]", "[IP]", "[PHONE]"]:
        assert placeholder in texts, placeholder
    everything = decoded_strings(objs)
    for raw_id in [u["a1"], keep3, gone3, "msg_"]:
        assert raw_id.encode() not in everything, raw_id

    # The same checkpoint again, to another dataset: identical files.
    ds2 = Dataset("again")
    again = start_job(srv, "/v1/admin/exports", {"to": ds2.url, "checkpoint": job["checkpoint"]})
    assert again["status"] == "succeeded", again
    assert [(f["path"], f["sha256"]) for f in manifest(ds2.objects())["files"]] == \
        [(f["path"], f["sha256"]) for f in m["files"]]

    # Erase a1, withdraw a2, delete one of a3's conversations; refresh with no grace.
    def pseudonyms_of(marker):
        rows = [r for r in items.to_pylist() if r["text"].startswith(marker)]
        assert rows, marker
        return {rows[0]["user"], rows[0]["conversation"], rows[0]["item"]}
    a1_ids, a2_ids = pseudonyms_of(mark["a1"]), pseudonyms_of(mark["a2"])
    gone3_ids = pseudonyms_of(f"{mark['a3']}-deleted") - pseudonyms_of(f"{mark['a3']} kept")
    assert srv.http.delete(f"/v1/admin/users/{u['a1']}").status_code == 200
    consent(srv, u["a2"], False)
    assert srv.http.delete(f"/v1/conversations/{gone3}", headers={"X-Mnemo-User": u["a3"]}).status_code == 200
    job = start_job(srv, "/v1/admin/exports/refresh", {"to": ds.url, "grace_seconds": 0})
    assert job["status"] == "succeeded", job
    assert job["rows"] == {"conversations": 1, "items": 1} and job["version"] == 2
    objs = ds.objects()
    everything = decoded_strings(objs)
    for needle in [mark["a1"], mark["a2"], f"{mark['a3']}-deleted", *a1_ids, *a2_ids, *gone3_ids]:
        holders = [rel for rel, body in objs.items() if needle.encode() in decoded_strings({rel: body})]
        assert needle.encode() not in everything, (needle, holders)
    assert table(objs, "items").column("text").to_pylist() == [f"{mark['a3']} kept"]
    names = {f["path"] for f in manifest(objs)["files"]}
    assert {rel for rel in objs if rel.endswith(".parquet")} == names


@pytest.mark.storage
def test_incremental_export_adds_what_changed(srv):
    tag = uuid.uuid4().hex[:8]
    user = f"inc-{tag}"
    consent(srv, user, True)
    conv = say(srv, user, [f"one {tag}"])
    ds = Dataset("inc")
    assert start_job(srv, "/v1/admin/exports", {"to": ds.url})["status"] == "succeeded"
    r = srv.http.post(f"/v1/conversations/{conv}/items", headers={"X-Mnemo-User": user},
                      json={"items": [{"type": "message", "role": "assistant", "content": f"two {tag}"}]})
    assert r.status_code == 200
    job = start_job(srv, "/v1/admin/exports", {"to": ds.url, "incremental": True})
    assert job["status"] == "succeeded", job
    assert job["outcome"]["mode"] == "incremental" and job["version"] == 2
    items = table(ds.objects(), "items").to_pylist()
    mine = sorted(r["text"] for r in items if tag in r["text"])
    assert mine == [f"one {tag}", f"two {tag}"]
    assert [r["role"] for r in items if r["text"] == f"two {tag}"] == ["assistant"]


def test_bad_export_requests_are_clear_errors(srv):
    for body in [{}, {"to": 3}, {"to": "ftp://x/y"}, {"to": "/tmp/x", "extra": 1},
                 {"to": "/tmp/x", "since": 10, "until": 5}, {"to": "/tmp/x", "filter": {"user": "a"}}]:
        assert_json_error(srv.http.post("/v1/admin/exports", json=body), 400)
    assert_json_error(srv.http.post("/v1/admin/exports/refresh", json={"to": "/tmp/x", "grace_seconds": -1}), 400)
    assert_json_error(srv.http.get("/v1/admin/exports/export_nope"), 404)
    assert_json_error(srv.http.get("/v1/admin/exports/..%2f..%2fx"), 404)
    # A refresh needs a dataset: the job fails with the reason, and writes nothing.
    ds = Dataset("none")
    job = start_job(srv, "/v1/admin/exports/refresh", {"to": ds.url})
    assert job["status"] == "failed" and "full export first" in job["error"]
    assert ds.objects() == {}


def test_exports_are_per_tenant_and_need_admin():
    from idp import IdentityProvider

    idp = IdentityProvider().start()
    s = MnemoServer(name="mnemo-export-auth", extra_args=idp.server_args())
    s.start()
    try:
        auth = lambda tok: {"Authorization": f"Bearer {tok}"}  # noqa: E731
        tag = uuid.uuid4().hex[:8]
        x, y = idp.app(["Admin"], tenant="tenant-x"), idp.app(["Admin"], tenant="tenant-y")
        for tenant, admin in [("tenant-x", x), ("tenant-y", y)]:
            for user in ["alice", "bob"]:
                consent(s, user, True, headers=auth(admin))
                tok = idp.user(user, tenant=tenant, scp="Conversations.ReadWrite")
                r = s.http.post("/v1/conversations", headers=auth(tok), json={
                    "items": [{"type": "message", "role": "user", "content": f"{tenant} {user} {tag}"}]})
                assert r.status_code == 200, r.text
        ds = Dataset("tenant")
        job = start_job(s, "/v1/admin/exports", {"to": ds.url}, headers=auth(x))
        assert job["status"] == "succeeded", job
        items = table(ds.objects(), "items").to_pylist()
        assert sorted(r["text"] for r in items) == [f"tenant-x alice {tag}", f"tenant-x bob {tag}"]
        assert {r["tenant"] for r in items} == {"tenant-x"}
        # Another tenant's admin does not see the job; users and applications without Admin
        # can neither start nor read one.
        assert_json_error(s.http.get(f"/v1/admin/exports/{job['id']}", headers=auth(y)), 404)
        for tok in [idp.user("alice", tenant="tenant-x", scp="Conversations.ReadWrite"),
                    idp.app(["Conversations.ReadWrite"], tenant="tenant-x")]:
            assert_json_error(s.http.post("/v1/admin/exports", json={"to": ds.url}, headers=auth(tok)), 403)
            assert_json_error(s.http.get(f"/v1/admin/exports/{job['id']}", headers=auth(tok)), 403)
        audit = s.http.get("/v1/admin/audit", headers=auth(x)).json()["data"]
        assert [e["action"] for e in audit if e["action"].startswith("export.")] == ["export.start"]
        # The two tenants' pseudonyms differ for the same user id (one key per tenant).
        dy = Dataset("tenant-y")
        start_job(s, "/v1/admin/exports", {"to": dy.url}, headers=auth(y))
        users_x = {r["user"] for r in items}
        users_y = {r["user"] for r in table(dy.objects(), "items").to_pylist()}
        assert len(users_x) == 2 and not users_x & users_y
    finally:
        s.close()
        idp.stop()


def run_cli(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([mnemo_bin(), "export", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.storage
def test_cli_exports_beside_a_running_server(srv):
    tag = uuid.uuid4().hex[:8]
    user = f"cli-{tag}"
    consent(srv, user, True)
    say(srv, user, [f"cli {tag} {i}" for i in range(30)])
    store = ["--store", srv.store_url] if srv.store_url else ["--data-dir", str(srv.data_dir)]
    ds = Dataset("cli")
    out = run_cli([*store, "--to", ds.url, "--tenant", "default"])
    assert out.returncode == 0, out.stderr
    outcome = json.loads(out.stdout)
    assert outcome["version"] == 1 and outcome["mode"] == "full"
    items = table(ds.objects(), "items").to_pylist()
    assert sorted(r["text"] for r in items if tag in r["text"]) == sorted(f"cli {tag} {i}" for i in range(30))
    # The server keeps serving and writing: the command never fenced it.
    say(srv, user, [f"after {tag}"])
    out = run_cli([*store, "--to", ds.url, "--tenant", "default", "--incremental"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 2
    items = table(ds.objects(), "items").to_pylist()
    assert f"after {tag}" in [r["text"] for r in items]
    bad = run_cli([*store, "--to", "ftp://nowhere/x"])
    assert bad.returncode != 0 and "ftp" in bad.stderr


def seeded(name: str, conversations: int) -> MnemoServer:
    """A server on a local store holding `conversations` × 100 items of one consenting user."""
    s = MnemoServer(name=name, store_url=None)
    s.start()
    consent(s, "seed-user", True)
    for c in range(conversations):
        say(s, "seed-user", [f"message {c}-{i} " + "x" * 200 for i in range(100)])
    return s


def test_kill9_during_an_export_leaves_a_clean_dataset():
    s = seeded("mnemo-export-kill", 40)
    try:
        ds = Dataset("kill")
        args = ["--data-dir", str(s.data_dir), "--to", ds.url, "--rows-per-file", "200"]
        p = subprocess.Popen([mnemo_bin(), "export", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        written = lambda: [k for k in ds.objects() if k.startswith("items/") and k.endswith(".parquet")]  # noqa: E731
        while time.time() < deadline and len(written()) < 3:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        objs = ds.objects()
        assert "_manifest.json" not in objs, "killed before the end, yet committed"
        orphans = written()
        assert len(orphans) >= 3, "killed before three files were written"
        out = run_cli(args)
        assert out.returncode == 0, out.stderr
        outcome = json.loads(out.stdout)
        assert outcome["items"] == 4000 and outcome["files_deleted"] >= len(orphans)
        objs = ds.objects()
        named = {f["path"] for f in manifest(objs)["files"]}
        # Nothing but the version's files: no orphan, no temporary file of the killed writer.
        assert {k for k in objs if k.startswith(("items/", "conversations/"))} == named
        assert table(objs, "items").num_rows == 4000
    finally:
        s.close()


def test_a_job_interrupted_by_a_server_crash_runs_again_after_restart():
    s = seeded("mnemo-export-resume", 3)
    try:
        ds = Dataset("resume")
        assert start_job(s, "/v1/admin/exports", {"to": ds.url})["rows"]["items"] == 300
        victim = say(s, "seed-user", ["to be deleted"])
        job = start_job(s, "/v1/admin/exports", {"to": ds.url, "incremental": True})
        assert job["rows"]["items"] == 301
        assert s.http.delete(f"/v1/conversations/{victim}", headers={"X-Mnemo-User": "seed-user"}).status_code == 200
        r = s.http.post("/v1/admin/exports/refresh", json={"to": ds.url, "grace_seconds": 3})
        assert r.status_code == 202
        deadline = time.time() + 60
        while s.http.get(f"/v1/admin/exports/{r.json()['id']}").json()["progress"]["phase"] != "grace":
            assert time.time() < deadline
            time.sleep(0.05)
        # Killed while superseded files wait out the grace period: the job is still running.
        s.kill9()
        s.start()
        job = wait_job(s, r.json()["id"])
        assert job["status"] == "succeeded", job
        objs = ds.objects()
        assert table(objs, "items").num_rows == 300
        assert b"to be deleted" not in decoded_strings(objs)
        named = {f["path"] for f in manifest(objs)["files"]}
        assert {k for k in objs if k.endswith(".parquet")} == named
    finally:
        s.close()

"""`mnemo sync` and `mnemo check`, black box: the real command between a local directory, the S3
emulator (moto) and the Azure emulator (Azurite), with rclone as the independent judge of
whether two trees are identical.

The emulators are the ones scripts/test.sh starts (env `AWS_ENDPOINT_URL`, `MNEMO_TEST_S3_BUCKET`,
`AZURITE_BLOB_STORAGE_URL`, `MNEMO_TEST_AZ_CONTAINER`, pids in `MNEMO_TEST_S3_PID` and
`MNEMO_TEST_AZ_PID`); tests that need one skip without it, and tests that need rclone (Debian's
package, installed by scripts/test.sh) skip without it. Every test works under a prefix of its
own."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import mnemo_bin

MIB = 1 << 20
# Objects above 5 MiB go in 5 MiB parts (S3's smallest part): the 8 MiB object of the test
# tree takes the multipart path, the others one PUT each.
PART_ARGS = ["--multipart-threshold-mib", "5", "--part-size-mib", "5"]
# Short timeouts for the outage tests: a paused emulator fails a request within 2 s.
FAST_FAIL_ARGS = ["--timeout-ms", "2000", "--retries", "1"]

HAVE = {
    "local": True,
    "s3": bool(os.environ.get("AWS_ENDPOINT_URL") and os.environ.get("MNEMO_TEST_S3_BUCKET")),
    "az": bool(os.environ.get("AZURITE_BLOB_STORAGE_URL") and os.environ.get("MNEMO_TEST_AZ_CONTAINER")),
}
EMULATOR_PID = {"s3": "MNEMO_TEST_S3_PID", "az": "MNEMO_TEST_AZ_PID"}
RCLONE = shutil.which("rclone")
# object_store's LocalFileSystem writes `name#<n>` and renames it when complete: not an object.
STAGING = re.compile(r"#\d+$")


def need(*kinds: str) -> None:
    missing = sorted({k for k in kinds if not HAVE[k]})
    if missing:
        pytest.skip(f"needs the {', '.join(missing)} emulator (run under scripts/test.sh)")


# --------------------------------------------------------------------------- trees
class Place:
    """A tree on one backend: its URL for mnemo, its remote for rclone, and direct access
    (filesystem, boto3, Azure SDK) to read and change it independently of mnemo."""

    def __init__(self, kind: str, tag: str, tmp: Path):
        self.kind = kind
        prefix = f"sync-tests/{tag}-{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "local":
            self.dir = tmp / f"{tag}-{uuid.uuid4().hex[:8]}"
            self.url = str(self.dir)
            self.rclone = str(self.dir)
        elif kind == "s3":
            import boto3
            self.bucket, self.prefix = os.environ["MNEMO_TEST_S3_BUCKET"], prefix
            self.s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                   aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                                   aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
            self.url = f"s3://{self.bucket}/{self.prefix}"
            self.rclone = f"mnemos3:{self.bucket}/{self.prefix}"
        else:
            from azure.storage.blob import BlobServiceClient
            self.bucket, self.prefix = os.environ["MNEMO_TEST_AZ_CONTAINER"], prefix
            self.az = BlobServiceClient.from_connection_string(az_connection_string()).get_container_client(self.bucket)
            self.url = f"az://{self.bucket}/{self.prefix}"
            self.rclone = f"mnemoaz:{self.bucket}/{self.prefix}"

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "local":
            path = self.dir / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        elif self.kind == "s3":
            self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)
        else:
            self.az.upload_blob(f"{self.prefix}/{key}", data, overwrite=True)

    def delete(self, key: str) -> None:
        if self.kind == "local":
            (self.dir / key).unlink()
        elif self.kind == "s3":
            self.s3.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        else:
            self.az.delete_blob(f"{self.prefix}/{key}")

    def objects(self) -> dict:
        """Every object of the tree: key -> content."""
        out = {}
        if self.kind == "local":
            if self.dir.exists():
                for p in self.dir.rglob("*"):
                    if p.is_file() and not STAGING.search(p.name):
                        out[p.relative_to(self.dir).as_posix()] = p.read_bytes()
        elif self.kind == "s3":
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
                for o in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
                    out[o["Key"][len(self.prefix) + 1:]] = body
        else:
            for b in self.az.list_blobs(name_starts_with=self.prefix + "/"):
                out[b.name[len(self.prefix) + 1:]] = self.az.download_blob(b.name).readall()
        return out

    def fill(self, tree: dict) -> None:
        for key, data in tree.items():
            self.put(key, data)


def az_connection_string() -> str:
    account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
    key = os.environ["AZURE_STORAGE_ACCOUNT_KEY"]
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={os.environ['AZURITE_BLOB_STORAGE_URL']}/{account};")


def random_tree(seed: int) -> dict:
    """~40 objects, 0 B to 8 MiB (about 14 MiB in all: moto is slow): empty files, deep paths,
    names around `/` in byte order, spaces, `%`, non-ASCII letters and CJK."""
    rng = random.Random(seed)
    names = [
        "a-", "a.b", "a/b", "a0", "B", "%41", "with space/x y.txt", "empty", "empty2/0",
        "deep/1/2/3/4/5/6/7/8/leaf.bin", "deep/1/2/3/other", "ünïcödé/fïlé.txt", "Ελληνικά/αρχείο",
        "русский/файл.txt", "中文/文件.txt", "日本語/ファイル/データ.bin", "한국어/파일", "mixed/日本-ü-x.txt",
    ]
    names += [f"bulk/{i:02d}/{rng.choice(['x', 'ÿ', '文'])}-{i}.dat" for i in range(22)]
    tree = {}
    for name in names:
        if name.startswith("empty"):
            size = 0
        else:
            size = rng.choice([0, 1, 17, 1000, 4096, 30_000, 65_537])
        tree[name] = rng.randbytes(size)
    tree["big/over-threshold.bin"] = rng.randbytes(8 * MIB)
    tree["mib/one"] = rng.randbytes(1 * MIB + 3)
    tree["mib/two"] = rng.randbytes(2 * MIB)
    tree["mib/three"] = rng.randbytes(3 * MIB - 1)
    return tree


# --------------------------------------------------------------------------- commands
def mnemo(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([mnemo_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or dict(os.environ))


def sync(src: Place, dst: Place, *extra: str, expect_rc: int = 0) -> dict:
    r = mnemo("sync", src.url, dst.url, "--json", *PART_ARGS, *extra)
    assert r.returncode == expect_rc, f"mnemo sync exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr[-4000:]}"
    assert "panicked" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def mnemo_check(src: Place, dst: Place) -> tuple:
    r = mnemo("check", src.url, dst.url, "--json")
    assert "panicked" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


_SAS_URL = None


def rclone_env(tmp: Path) -> dict:
    """rclone configured through environment variables for both emulators (S3: provider Other,
    path-style; Azure: a container SAS URL, since rclone 1.60's `endpoint` is a DNS suffix)."""
    global _SAS_URL
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)  # rclone's AWS SDK cannot use it with its own transport
    config = tmp / "rclone.conf"
    config.touch()
    env["RCLONE_CONFIG"] = str(config)
    if HAVE["s3"]:
        env.update({
            "RCLONE_CONFIG_MNEMOS3_TYPE": "s3", "RCLONE_CONFIG_MNEMOS3_PROVIDER": "Other",
            "RCLONE_CONFIG_MNEMOS3_ENDPOINT": os.environ["AWS_ENDPOINT_URL"],
            "RCLONE_CONFIG_MNEMOS3_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "RCLONE_CONFIG_MNEMOS3_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "RCLONE_CONFIG_MNEMOS3_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "RCLONE_CONFIG_MNEMOS3_FORCE_PATH_STYLE": "true",
        })
    if HAVE["az"]:
        if _SAS_URL is None:
            import datetime
            from azure.storage.blob import ContainerSasPermissions, generate_container_sas
            account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
            container = os.environ["MNEMO_TEST_AZ_CONTAINER"]
            sas = generate_container_sas(
                account, container, account_key=os.environ["AZURE_STORAGE_ACCOUNT_KEY"],
                permission=ContainerSasPermissions(read=True, list=True),
                expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6))
            _SAS_URL = f"{os.environ['AZURITE_BLOB_STORAGE_URL']}/{account}/{container}?{sas}"
        env.update({"RCLONE_CONFIG_MNEMOAZ_TYPE": "azureblob", "RCLONE_CONFIG_MNEMOAZ_SAS_URL": _SAS_URL})
    return env


def rclone_check(src: Place, dst: Place, tmp: Path) -> None:
    """rclone agrees the trees are identical. `--download` compares contents byte for byte:
    hashes are not comparable across backends (multipart S3 ETags, Azure blobs without MD5)."""
    if not RCLONE:
        pytest.skip("rclone is not installed (scripts/test.sh installs Debian's package)")
    r = subprocess.run([RCLONE, "check", src.rclone, dst.rclone, "--download", "--one-way=false"],
                       capture_output=True, text=True, timeout=300, env=rclone_env(tmp))
    assert r.returncode == 0, f"rclone check {src.url} {dst.url} exited {r.returncode}:\n{r.stderr[-4000:]}"


def assert_identical(src: Place, dst: Place, tmp: Path) -> None:
    rclone_check(src, dst, tmp)
    rc, report, stderr = mnemo_check(src, dst)
    assert rc == 0, f"mnemo check exited {rc}: {report}\n{stderr[-2000:]}"
    assert report["differences"] == [] and report["errors"]["objects"] == 0, report


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="mnemo-sync-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


KINDS = ["local", "s3", "az"]


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("src_kind,dst_kind", [(s, d) for s in KINDS for d in KINDS])
def test_sync_every_pair_then_only_what_changed(src_kind, dst_kind, tmp):
    """A tree is copied whole, then a second pass copies only what changed (same size, other
    size, added) and deletes what went; rclone and mnemo check agree after each pass."""
    need(src_kind, dst_kind)
    src, dst = Place(src_kind, "src", tmp), Place(dst_kind, "dst", tmp)
    tree = random_tree(seed=KINDS.index(src_kind) * 3 + KINDS.index(dst_kind))
    src.fill(tree)
    total = sum(len(v) for v in tree.values())

    first = sync(src, dst)
    assert first["copied"] == {"objects": len(tree), "bytes": total}, first
    assert first["errors"]["objects"] == 0 and first["error_list"] == [] and first["complete"], first
    assert first["skipped"]["objects"] == 0
    if src_kind == dst_kind and src_kind != "local":
        # One bucket: the store copies, no byte through this node.
        assert first["server_side_copies"] == len(tree), first
    else:
        assert first["server_side_copies"] == 0, first
    assert dst.objects() == tree
    assert_identical(src, dst, tmp)

    # ~1 % of the objects change, at least one of each kind. The default rule compares
    # times in whole seconds: let the clock move past the first pass's copies.
    time.sleep(1.2)
    rng = random.Random(7)
    same_size = "mib/two"
    other_size = "中文/文件.txt"
    added = "new/日本語-新しい.bin"
    gone = "deep/1/2/3/other"
    new_tree = dict(tree)
    new_tree[same_size] = rng.randbytes(len(tree[same_size]))
    assert new_tree[same_size] != tree[same_size]
    new_tree[other_size] = tree[other_size] + b"-longer"
    new_tree[added] = rng.randbytes(12345)
    del new_tree[gone]
    for key in (same_size, other_size, added):
        src.put(key, new_tree[key])
    src.delete(gone)

    second = sync(src, dst, "--delete")
    assert second["copied"]["objects"] == 3, second
    assert second["copied"]["bytes"] == sum(len(new_tree[k]) for k in (same_size, other_size, added))
    assert second["deleted"] == {"objects": 1, "bytes": len(tree[gone])}, second
    assert second["skipped"]["objects"] == len(tree) - 3, second
    assert second["errors"]["objects"] == 0 and second["complete"], second
    assert dst.objects() == new_tree
    assert_identical(src, dst, tmp)

    # A third pass has nothing to do, by metadata and by content hash.
    third = sync(src, dst, "--delete", "--checksum")
    assert third["copied"]["objects"] == 0 and third["deleted"]["objects"] == 0, third
    assert third["skipped"]["objects"] == len(new_tree), third


@pytest.mark.parametrize("dst_kind,extra,complete", [
    ("s3", [], True),  # every object is tried and reported
    ("az", ["--max-errors", "3"], False),  # stops starting transfers after 3 errors
])
def test_emulator_paused_mid_sync(dst_kind, extra, complete, tmp):
    """The destination's emulator freezes mid-run (SIGSTOP): the sync ends non-zero with a
    clear error within a bounded time, no partial object is visible, and the next run
    completes and checks identical."""
    need(dst_kind)
    pid = int(os.environ.get(EMULATOR_PID[dst_kind]) or 0)
    if not pid:
        pytest.skip(f"needs {EMULATOR_PID[dst_kind]} (run under scripts/test.sh)")
    src, dst = Place("local", "src", tmp), Place(dst_kind, "dst", tmp)
    rng = random.Random(11)
    tree = {f"part/{i:02d}.bin": rng.randbytes(700_000 + i * 10_000) for i in range(40)}
    tree["big.bin"] = rng.randbytes(6 * MIB)  # multipart (5 MiB parts)
    src.fill(tree)

    env = dict(os.environ, RUST_LOG="info,mnemo_sync=debug")  # a line per copied object
    cmd = [mnemo_bin(), "sync", src.url, dst.url, "--json", *PART_ARGS, *FAST_FAIL_ARGS, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    paused_at = None
    try:
        head = []
        for line in proc.stderr:  # wait for the first object to be copied: mid-run
            head.append(line)
            if "copied" in line:
                break
        assert proc.poll() is None, "the sync ended before the pause:\n" + "".join(head)
        os.kill(pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - paused_at
    finally:
        if paused_at is not None:
            os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 1, f"rc {proc.returncode}\n{err[-3000:]}"
    assert "panicked" not in err
    # Bounded: 41 objects, 4 at a time, each failing within the 2 s request timeout.
    assert elapsed < 60, elapsed
    summary = json.loads(out)
    assert summary["errors"]["objects"] >= 1 and summary["complete"] is complete, summary
    assert summary["copied"]["objects"] >= 1, summary
    assert summary["error_list"] and all(e["path"] and e["error"] for e in summary["error_list"]), summary
    assert "timed out" in err or "timeout" in err.lower(), err[-3000:]
    assert re.search(r"^mnemo sync: failed: \d+ errors", err, re.M), err[-2000:]
    if complete:
        assert summary["copied"]["objects"] + summary["errors"]["objects"] == len(tree), summary

    # No partial object: whatever the destination holds is a whole source object.
    time.sleep(1)
    present = dst.objects()
    for key, data in present.items():
        assert data == tree[key], f"{key}: {len(data)} bytes at the destination, {len(tree[key])} in the source"

    # The next run completes what is missing and the trees check identical.
    again = sync(src, dst)
    assert again["errors"]["objects"] == 0 and again["complete"], again
    assert again["copied"]["objects"] + again["skipped"]["objects"] == len(tree), again
    assert dst.objects() == tree
    rc, report, stderr = mnemo_check(src, dst)
    assert rc == 0, report
    rclone_check(src, dst, tmp)


@pytest.mark.parametrize("dst_kind", KINDS)
def test_dry_run_changes_nothing(dst_kind, tmp):
    need(dst_kind)
    src, dst = Place("local", "src", tmp), Place(dst_kind, "dst", tmp)
    tree = {"a": b"1", "b/c": b"22", "d/é/f": b"333"}
    src.fill(tree)
    dst.put("extra", b"only at the destination")
    dst.put("a", b"XY")
    before = dst.objects()
    summary = sync(src, dst, "--dry-run", "--delete")
    assert summary["dry_run"] is True
    # Would copy the two missing objects and the one of another size, would delete one.
    assert summary["copied"]["objects"] == 3, summary
    assert summary["deleted"]["objects"] == 1, summary
    assert dst.objects() == before
    # A missing local destination is not even created.
    missing = Place("local", "never", tmp)
    sync(src, missing, "--dry-run")
    assert not missing.dir.exists()


@pytest.mark.parametrize("dst_kind", KINDS)
def test_check_reports_differences(dst_kind, tmp):
    """`mnemo check` finds each kind of difference, including the same size with other
    content (where size and time say nothing), and exits 1 on any difference."""
    need(dst_kind)
    src, dst = Place("local", "src", tmp), Place(dst_kind, "dst", tmp)
    tree = {"same": b"same content", "changed": b"0123456789", "resized": b"abc", "only-src": b"s",
            "深い/パス/同じ": b"x" * 5000}
    src.fill(tree)
    for key in ("same", "resized", "深い/パス/同じ"):
        dst.put(key, tree[key])
    dst.put("changed", b"9876543210")  # same size, other bytes
    dst.put("resized", b"abcd")
    dst.put("only-dst", b"d")
    rc, report, stderr = mnemo_check(src, dst)
    assert rc == 1, (rc, report, stderr)
    assert "differ" in stderr
    kinds = {d["path"]: d["kind"] for d in report["differences"]}
    assert kinds == {"changed": "content_differs", "resized": "size_differs",
                     "only-src": "missing_on_destination", "only-dst": "missing_on_source"}, report
    assert report["matched"]["objects"] == 2, report

    # The text output lists them too.
    r = mnemo("check", src.url, dst.url)
    assert r.returncode == 1
    assert "content_differs: changed" in r.stdout, r.stdout

    # Fixed by a sync (checksum needed: same size and the destination is newer), identical.
    sync(src, dst, "--checksum", "--delete")
    rc, report, stderr = mnemo_check(src, dst)
    assert rc == 0, report


@pytest.mark.parametrize("args,message", [
    (["sync", "gs://bucket/x", "{tmp}/d"], "unsupported scheme"),
    (["sync", "s3://", "{tmp}/d"], "names no bucket"),
    (["sync", "s3:///prefix", "{tmp}/d"], "names no bucket"),
    (["sync", "s3://b/a//b", "{tmp}/d"], "invalid tree URL"),
    (["sync", "{tmp}/missing", "{tmp}/d"], "does not exist"),
    (["sync", "{tmp}", "{tmp}/inside"], "overlap"),
    (["check", "{tmp}/missing", "{tmp}"], "does not exist"),
    (["check", "az://", "{tmp}"], "names no bucket"),
])
def test_bad_urls_fail_clearly(args, message, tmp):
    r = mnemo(*[a.replace("{tmp}", str(tmp)) for a in args], "--json", timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "panicked" not in r.stderr and r.stdout == ""


def test_bad_options_fail_clearly(tmp):
    src = tmp / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    for args in (["--transfers", "0"], ["--part-size-mib", "0"], ["--checkers", "1"], ["--bogus"]):
        r = mnemo("sync", str(src), str(tmp / "dst"), *args, timeout=60)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert args[0] in r.stderr and "panicked" not in r.stderr, r.stderr
    r = mnemo("check", str(src), str(src), "--checkers", "0", timeout=60)
    assert r.returncode == 2 and "--checkers" in r.stderr, r.stderr
    assert not (tmp / "dst").exists()

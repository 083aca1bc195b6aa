"""Shared fixtures for the mnemo black-box test suite.

The server binary is `target/release/mnemo` (override with env `MNEMO_BIN`). It is started as

    mnemo serve --data-dir DIR --listen 127.0.0.1:PORT [--store URL]

Store selection (env `MNEMO_TEST_STORE`):
  unset / `file` -> the default local store under the data dir (no `--store`)
  `s3`           -> `--store s3://$MNEMO_TEST_S3_BUCKET/<random prefix>`
  `az`           -> `--store az://$MNEMO_TEST_AZ_CONTAINER/<random prefix>`
Credentials and endpoints for the emulators are read by the server from the environment, which is
passed through unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

try:  # openai's HTTP client; published as `httpx2` in this environment, `httpx` elsewhere.
    import httpx2 as httpx  # type: ignore
except ImportError:  # pragma: no cover
    import httpx  # type: ignore

import openai

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "mnemo"
STARTUP_TIMEOUT = 60.0
STDERR_TAIL_LINES = 80


def mnemo_bin() -> str:
    return os.environ.get("MNEMO_BIN") or str(DEFAULT_BIN)


def store_kind() -> str:
    return (os.environ.get("MNEMO_TEST_STORE") or "file").strip().lower()


def make_store_url() -> Optional[str]:
    """A fresh store URL (random prefix) for the configured backend, or None for the default store."""
    kind = store_kind()
    prefix = f"mnemo-test-{uuid.uuid4().hex[:16]}"
    if kind in ("", "file", "local"):
        return None
    if kind == "s3":
        bucket = os.environ.get("MNEMO_TEST_S3_BUCKET")
        if not bucket:
            raise RuntimeError("MNEMO_TEST_STORE=s3 needs MNEMO_TEST_S3_BUCKET")
        return f"s3://{bucket}/{prefix}"
    if kind in ("az", "azure"):
        container = os.environ.get("MNEMO_TEST_AZ_CONTAINER")
        if not container:
            raise RuntimeError("MNEMO_TEST_STORE=az needs MNEMO_TEST_AZ_CONTAINER")
        return f"az://{container}/{prefix}"
    raise RuntimeError(f"unknown MNEMO_TEST_STORE={kind!r} (expected file, s3 or az)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every MnemoServer ever created in this session that has not been closed; used to attach the
# server's stderr tail to the report of a failing test.
_OPEN_SERVERS: "list[MnemoServer]" = []
_OPEN_LOCK = threading.Lock()


class ServerStartError(RuntimeError):
    pass


class MnemoServer:
    """One mnemo process (and its restarts) over one data dir and one store."""

    def __init__(self, data_dir: Optional[Path] = None, store_url: Optional[str] = "__auto__", name: str = "mnemo",
                 extra_args: Optional[list] = None):
        self.name = name
        self.extra_args = list(extra_args or [])
        self.tmp_root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.data_dir = Path(data_dir) if data_dir else self.tmp_root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_url = make_store_url() if store_url == "__auto__" else store_url
        self.log_path = self.tmp_root / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.starts = 0
        self._log_file = None
        self._http: Optional[httpx.Client] = None
        self._openai: Optional[openai.OpenAI] = None
        self.closed = False
        with _OPEN_LOCK:
            _OPEN_SERVERS.append(self)

    # ----------------------------------------------------------------- process control
    def command(self) -> list:
        cmd = [mnemo_bin(), "serve", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"]
        if self.store_url:
            cmd += ["--store", self.store_url]
        return cmd + self.extra_args

    def start(self, timeout: float = STARTUP_TIMEOUT) -> "MnemoServer":
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        binary = mnemo_bin()
        if not os.path.exists(binary):
            raise ServerStartError(f"mnemo binary not found at {binary} (build it or set MNEMO_BIN)")
        self._close_clients()
        self.port = free_port()
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=env,
            start_new_session=True,  # our signals go to the server only
        )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no attempt"
        with httpx.Client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerStartError(
                        f"mnemo exited with code {rc} during startup\n{self.stderr_tail()}")
                try:
                    r = c.get(f"{self.base_url}/healthz")
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:  # not listening yet
                    last = repr(e)
                time.sleep(0.05)
        self.kill9()
        raise ServerStartError(
            f"mnemo did not answer GET /healthz 200 within {timeout}s (last: {last})\n{self.stderr_tail()}")

    def kill9(self) -> None:
        """SIGKILL the server and reap it. Every acknowledged write must survive this."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self._after_exit("killed with SIGKILL")

    def terminate(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM (graceful shutdown); returns the exit code (SIGKILLs after `timeout`)."""
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                self._after_exit(f"did not exit within {timeout}s of SIGTERM; SIGKILLed")
                raise AssertionError(f"mnemo did not exit within {timeout}s of SIGTERM\n{self.stderr_tail()}")
        elif self.proc is not None:
            rc = self.proc.returncode
        self._after_exit(f"terminated with SIGTERM (rc={rc})")
        return rc

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> "MnemoServer":
        """Start again over the same data dir and store (kills a still-running process first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()
        return self.start(timeout)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _after_exit(self, what: str) -> None:
        self._close_clients()
        if self._log_file is not None:
            try:
                self._log_file.write(f"===== {what}\n".encode())
                self._log_file.close()
            except Exception:
                pass
            self._log_file = None

    def close(self, remove: bool = True) -> None:
        """Always called at fixture teardown: kill the process, remove the temp dir."""
        try:
            self.kill9()
        finally:
            self.closed = True
            with _OPEN_LOCK:
                if self in _OPEN_SERVERS:
                    _OPEN_SERVERS.remove(self)
            if remove and not os.environ.get("MNEMO_TEST_KEEP"):
                shutil.rmtree(self.tmp_root, ignore_errors=True)

    # ----------------------------------------------------------------- clients
    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def http(self) -> "httpx.Client":
        """An httpx client bound to the current process (recreated after restart)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=30.0)
        return self._http

    @property
    def openai(self) -> openai.OpenAI:
        """The official SDK pointed at this server; retries disabled so every call is observed once."""
        if self._openai is None:
            self._openai = self.make_openai()
        return self._openai

    def make_openai(self, **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="test", **kw)

    def new_http(self, **kw) -> "httpx.Client":
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, **kw)

    def _close_clients(self) -> None:
        for c in (self._http, self._openai):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self._http = None
        self._openai = None

    # ----------------------------------------------------------------- diagnostics
    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return f"(no server log at {self.log_path})"
        text = data.decode("utf-8", "replace").splitlines()
        tail = "\n".join(text[-lines:])
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n{tail}"

    def __repr__(self) -> str:
        return f"MnemoServer(port={self.port}, data_dir={self.data_dir}, store={self.store_url})"


@atexit.register
def _kill_leftover_servers() -> None:
    """Last resort (e.g. an interrupted run): never leave a mnemo process behind."""
    with _OPEN_LOCK:
        servers = list(_OPEN_SERVERS)
    for srv in servers:
        try:
            srv.kill9()
        except Exception:
            pass


# --------------------------------------------------------------------------- fixtures

def start_server(name: str, extra_args: Optional[list] = None) -> MnemoServer:
    """Starts a server with `extra_args`; on failure its log is kept and the error raised."""
    srv = MnemoServer(name=name, extra_args=extra_args)
    try:
        srv.start()
    except Exception:
        srv.close(remove=False)
        raise
    return srv


@pytest.fixture(scope="module")
def server():
    """One server per test module (fast tests that tolerate shared state)."""
    srv = start_server("mnemo-mod")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def fresh_server():
    """A server of its own for one test (crash / restart tests): kill9(), restart(), terminate()."""
    srv = start_server("mnemo-fn")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return server.openai


@pytest.fixture
def http(server):
    return server.http


@pytest.fixture
def uid() -> str:
    """A short unique token for namespacing keys/texts within the shared module server."""
    return uuid.uuid4().hex[:12]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        with _OPEN_LOCK:
            servers = list(_OPEN_SERVERS)
        for srv in servers:
            rep.sections.append((f"mnemo server log ({srv.name}, {srv!r})", srv.stderr_tail()))


# --------------------------------------------------------------------------- shared helpers

def assert_json_error(resp, status, err_type: Optional[str] = None, code: Optional[str] = None) -> dict:
    """Assert `resp` is an OpenAI-shaped JSON error with the given status (int or set of ints)."""
    statuses = {status} if isinstance(status, int) else set(status)
    desc = f"{resp.request.method} {resp.request.url} -> {resp.status_code} {resp.text[:500]!r}"
    assert resp.status_code in statuses, f"expected status {sorted(statuses)}: {desc}"
    ctype = resp.headers.get("content-type", "")
    assert "application/json" in ctype, f"error body is not JSON (content-type {ctype!r}): {desc}"
    try:
        body = resp.json()
    except json.JSONDecodeError as e:  # pragma: no cover
        raise AssertionError(f"error body is not valid JSON ({e}): {desc}")
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"no error object: {desc}"
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], f"error.message missing/empty: {desc}"
    assert isinstance(err.get("type"), str) and err["type"], f"error.type missing/empty: {desc}"
    if err_type is not None:
        assert err["type"] == err_type, f"error.type {err['type']!r} != {err_type!r}: {desc}"
    if code is not None:
        assert err.get("code") == code, f"error.code {err.get('code')!r} != {code!r}: {desc}"
    return err


EXPECTED_ERROR_TYPE = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    412: "precondition_failed",
    413: "invalid_request_error",
    503: "service_unavailable",
}


def assert_api_error(resp, statuses) -> dict:
    """Like assert_json_error but the type must match the status per docs/api.md."""
    err = assert_json_error(resp, statuses)
    expected = EXPECTED_ERROR_TYPE.get(resp.status_code)
    if expected:
        assert err["type"] == expected, (
            f"status {resp.status_code} must have error.type {expected!r}, got {err['type']!r}: "
            f"{resp.request.method} {resp.request.url} -> {resp.text[:300]!r}")
    return err

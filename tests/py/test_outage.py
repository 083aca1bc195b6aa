"""Object-store outage: writes fail with a clear 503 within the write timeout (never hang), reads
of durable data keep working, nothing is half-written, and the server recovers by itself.

Runs in the S3 and Azure passes of scripts/test.sh, which exports each emulator's pid
(MNEMO_TEST_S3_PID for moto, MNEMO_TEST_AZ_PID for Azurite); the outage is simulated by pausing
the emulator of the store under test (SIGSTOP: connections hang, data is kept)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import MnemoServer, store_kind

# The variable holding the pid of the emulator that serves each remote store.
EMULATOR_PID = {"s3": "MNEMO_TEST_S3_PID", "az": "MNEMO_TEST_AZ_PID", "azure": "MNEMO_TEST_AZ_PID"}
PID_VAR = EMULATOR_PID.get(store_kind())

pytestmark = [
    pytest.mark.storage,
    pytest.mark.skipif(
        not PID_VAR or not os.environ.get(PID_VAR),
        reason="needs an emulator run of scripts/test.sh: MNEMO_TEST_STORE=s3 with MNEMO_TEST_S3_PID, "
               "or MNEMO_TEST_STORE=az with MNEMO_TEST_AZ_PID",
    ),
]

WRITE_TIMEOUT_MS = 3000


def test_outage_gives_503_then_recovers():
    pid = int(os.environ[PID_VAR])
    srv = MnemoServer(name="mnemo-outage", extra_args=["--write-timeout-ms", str(WRITE_TIMEOUT_MS)]).start()
    try:
        http = srv.http
        r = http.put("/v1/kv/before", content=b"durable")
        assert r.status_code == 200, r.text
        batch_before = {"operations": [{"op": "put", "key": f"pair/{i}", "value": "old"} for i in range(2)]}
        assert http.post("/v1/kv/batch", json=batch_before).status_code == 200

        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = http.put("/v1/kv/during", content=b"x", timeout=60)
            elapsed = time.monotonic() - t0
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["type"] == "service_unavailable" and err["message"]
            # Bounded: the write timeout plus scheduling slack, not a hang.
            assert elapsed < WRITE_TIMEOUT_MS / 1000 + 10, elapsed
            r = http.post(
                "/v1/kv/batch",
                json={"operations": [{"op": "put", "key": f"pair/{i}", "value": "new"} for i in range(2)]},
                timeout=60,
            )
            assert r.status_code == 503, r.text
            # Durable data stays readable from memory during the outage.
            r = http.get("/v1/kv/before", timeout=60)
            assert r.status_code == 200 and r.content == b"durable"
        finally:
            os.kill(pid, signal.SIGCONT)

        # Recovery without a restart: writes succeed again within a bounded time.
        deadline = time.monotonic() + 60
        while True:
            r = http.put("/v1/kv/after", content=b"back", timeout=60)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, "server did not recover within 60 s"
            time.sleep(0.5)
        assert http.get("/v1/kv/after").content == b"back"
        # The batch that got 503 is all-or-nothing: both keys old or both new.
        vals = {http.get(f"/v1/kv/pair/{i}").content for i in range(2)}
        assert len(vals) == 1 and vals <= {b"old", b"new"}, vals

        # And after a kill -9 and restart, everything acknowledged is still there.
        srv.kill9()
        srv.restart()
        assert srv.http.get("/v1/kv/before").content == b"durable"
        assert srv.http.get("/v1/kv/after").content == b"back"
    finally:
        srv.close()

"""Faults in the trace store: a full disk while serving, and a store that cannot be created.

Full disk, for real and without root tricks: the server runs with a small file-size limit
(RLIMIT_FSIZE, inherited by all its processes). Once the SQLite write-ahead log would grow past
it, write() fails with EFBIG (Python ignores SIGXFSZ) and SQLite reports SQLITE_FULL, "database
or disk is full", exactly as on a full disk. The store is pre-filled with traces first. The
contract checked: the request that cannot be recorded gets a 503 JSON error naming StoreError,
the server keeps answering (health, reads of older traces, further requests fail cleanly rather
than hang), nothing stored before is lost, the file passes SQLite's integrity check, and once
space is back (the limit raised on the live processes) new runs are stored again.

Unusable path: `/proc/<missing>/traces.db` cannot be created even by root (a read-only chmod
would not stop root), so `srl serve` must refuse to start with one clear line, before loading a model.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from servers import SrlServer

from srl_sdk.core.steps import Step, Trace
from srl_sdk.serving.process import free_port
from srl_sdk.store import TraceStore

pytestmark = pytest.mark.slow

FSIZE_LIMIT = 48 * 1024  # bytes any one file of the server may reach: the store's WAL fills it fast
PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def limit_file_size() -> None:
    """Run in the server's first process, inherited by all: a soft limit only, so that the test can
    raise it again later ("free the disk")."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, resource.RLIM_INFINITY))


def free_the_disk(server: SrlServer) -> None:
    for pid in server.group_pids():
        try:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except ProcessLookupError:
            pass


def old_traces(n: int) -> list[Trace]:
    return [Trace(problem=f"stored before the disk filled, #{i}", model="smollm2", engine="llama.cpp",
                  finish_reason="final_answer", answer=str(i),
                  steps=[Step(index=1, thought="t", action=f"It is {i}. #### {i}", is_final=True, answer=str(i))])
            for i in range(n)]


def reason(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/reason", json={"problem": PROBLEM, "stream": False}, timeout=120)


def test_full_disk_gives_a_clear_503_keeps_serving_and_loses_nothing(srl_server, tmp_path):
    store_path = tmp_path / "traces.db"
    before = old_traces(3)
    store = TraceStore(store_path)
    for trace in before:
        store.save(trace)
    store.close()  # the last connection checkpoints the WAL into the main file
    # its log is limited too, but at log_level error it stays a few kB
    server = srl_server(preexec_fn=limit_file_size, store=str(store_path), log_level="error", limits=None,
                        reason={"max_steps": 1, "max_thought_tokens": 4, "max_action_tokens": 4})
    stored_by_server: list[str] = []
    try:
        failure = None
        for _ in range(12):  # the WAL passes the limit within a few runs
            response = reason(server.url)
            if response.status_code == 200:
                stored_by_server.append(response.json()["id"])
                continue
            failure = response
            break
        assert failure is not None, "the file-size limit never made the store fail; raise the run count"
        assert failure.status_code == 503, failure.text
        error = failure.json()["error"]
        # SQLite says "database or disk is full" when a write straddles the limit (a short write) and
        # "disk I/O error" when one starts at it (EFBIG): which happens depends on the WAL's layout
        assert error["type"] == "StoreError", error
        assert "full" in error["message"] or "disk I/O error" in error["message"], error
        assert "free disk space" in error["message"], error
        streamed = httpx.post(server.url + "/v1/reason", json={"problem": PROBLEM}, timeout=120)
        assert streamed.status_code == 200 and "event: error" in streamed.text and "StoreError" in streamed.text
        for body in (failure.text, streamed.text):  # the message says why, not where the store lives
            assert str(tmp_path) not in body and "traces.db" not in body, body[:400]
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        for trace in before:
            got = httpx.get(f"{server.url}/v1/traces/{trace.id}", timeout=30)
            assert got.status_code == 200 and Trace.model_validate(got.json()) == trace
        listed = httpx.get(server.url + "/v1/traces?limit=100", timeout=30).json()["data"]
        assert {t.id for t in before} <= {row["id"] for row in listed}

        free_the_disk(server)
        recovered = reason(server.url)
        assert recovered.status_code == 200, f"the server did not recover once space was back: {recovered.text}"
        stored_by_server.append(recovered.json()["id"])
    finally:
        server.stop_and_check()  # cleanly, after the store failures
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = TraceStore(store_path)
    for trace in before:
        assert store.get(trace.id) == trace
    for trace_id in stored_by_server:
        assert store.get(trace_id).finish_reason is not None


def test_serve_refuses_a_store_it_cannot_create_in_one_line(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "srl_sdk.cli", "serve", "--store", "/proc/srl-no-such-dir/traces.db",
         "--port", str(free_port()), "--n-threads", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1
    assert "cannot create the trace store at /proc/srl-no-such-dir/traces.db" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 60

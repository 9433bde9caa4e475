"""SQLite-only behaviour of the trace store (WAL, schema upgrades, file permissions, corruption).

What both backends must do alike (save/get, listing, owners, retention, closing unfinished runs)
is tested once, against SQLite and PostgreSQL, in tests/test_store_contract.py.
"""

import sqlite3
import threading

import pytest

from srl_sdk import Step, Trace, TraceStore
from srl_sdk.errors import StoreError
from srl_sdk.store.sqlite import SCHEMA_VERSION


def make_trace(problem="What is 2+3?", n=2) -> Trace:
    steps = [Step(index=i, thought=f"t{i}", action=f"a{i}") for i in range(1, n + 1)]
    return Trace(problem=problem, steps=steps, answer="5", finish_reason="final_answer", model="m", engine="e")








def test_wal_and_schema_version(tmp_path):
    path = tmp_path / "t.db"
    TraceStore(path).save(make_trace())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TraceStore(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="upgrade srl-sdk"):
        TraceStore(path)


def test_corrupt_file_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "t.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="cannot open the trace store"):
        TraceStore(path)
    assert path.read_bytes() == before


def test_bad_save_loses_nothing(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    kept = make_trace()
    store.save(kept)
    with pytest.raises(StoreError):
        store.save({"problem": "not a trace"})  # type: ignore[arg-type]
    assert store.get(kept.id) == kept
    assert store.count() == 1


def test_concurrent_writers_from_threads(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    errors: list[Exception] = []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                store.save(make_trace(problem=f"{k}-{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert store.count() == 40


def test_second_process_view_sees_saved_trace(tmp_path):
    path = tmp_path / "t.db"
    trace = make_trace()
    TraceStore(path).save(trace)
    assert TraceStore(path).get(trace.id).problem == trace.problem


def test_trace_json_roundtrip():
    trace = make_trace()
    assert Trace.from_json(trace.to_json()) == trace


# -- privacy and growth (issue 14) ------------------------------------------------------------------
def test_a_new_store_is_private_whatever_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)  # the usual umask, which gave 0644 before
    try:
        path = tmp_path / "home" / "t.db"
        TraceStore(path).save(make_trace())
        for file in (path, path.with_name("t.db-wal"), path.with_name("t.db-shm")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file, oct(file.stat().st_mode))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)






def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE traces (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, problem TEXT NOT NULL, answer TEXT,
            finish_reason TEXT, n_steps INTEGER NOT NULL, model TEXT NOT NULL, engine TEXT NOT NULL, body TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
    """)
    trace = make_trace("from version 1")
    conn.execute("INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (trace.id, trace.created_at.isoformat(), trace.problem, trace.answer, trace.finish_reason,
                  len(trace.steps), trace.model, trace.engine, trace.model_dump_json()))
    conn.commit()
    conn.close()
    store = TraceStore(path)
    assert store.get(trace.id) == trace
    store.save(make_trace("new"), owner="alice")
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)

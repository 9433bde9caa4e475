import sqlite3
import threading

import pytest

from srl_sdk import Step, Trace, TraceStore
from srl_sdk.errors import StoreError, TraceNotFoundError
from srl_sdk.store.sqlite import SCHEMA_VERSION


def make_trace(problem="What is 2+3?", n=2) -> Trace:
    steps = [Step(index=i, thought=f"t{i}", action=f"a{i}") for i in range(1, n + 1)]
    return Trace(problem=problem, steps=steps, answer="5", finish_reason="final_answer", model="m", engine="e")


def test_save_get_roundtrip(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    trace = make_trace()
    assert store.save(trace) == trace.id
    again = store.get(trace.id)
    assert again == trace
    assert again.steps[1].action == "a2"


def test_list_newest_first_and_paging(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    ids = [store.save(make_trace(problem=f"p{i}")) for i in range(5)]
    listed = store.list(limit=3)
    assert [row.id for row in listed] == list(reversed(ids))[:3]
    assert [row.id for row in store.list(limit=3, offset=3)] == list(reversed(ids))[3:]
    assert store.count() == 5
    with pytest.raises(StoreError):
        store.list(limit=0)


def test_unknown_id_is_a_clear_error(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    with pytest.raises(TraceNotFoundError, match="srl traces list"):
        store.get("nope")


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

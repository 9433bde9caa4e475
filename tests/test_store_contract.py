"""One contract, two backends: every test here runs against SQLite and against a real PostgreSQL.

The server, the CLI and the Reasoner only see the TraceStore API (save, get, list, count, prune,
close_unfinished, close), so both stores must behave the same on it: newest-first listing and
paging, owners, retention, closing unfinished runs, many writers at once.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from srl_sdk.core.steps import Step, Trace, utc_now
from srl_sdk.errors import StoreError, TraceNotFoundError
from srl_sdk.store import open_store


def make_trace(problem: str = "What is 2+3?", n: int = 2, finished: bool = True) -> Trace:
    steps = [Step(index=i, thought=f"t{i}", action=f"a{i}", latency_s=0.123456789) for i in range(1, n + 1)]
    return Trace(problem=problem, steps=steps, answer="5" if finished else None,
                 finish_reason="final_answer" if finished else None, model="m", engine="e",
                 usage={"completion_tokens": 7}, meta={"note": "ünïcode ✓"})


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    """Where a store lives: a file, or a fresh PostgreSQL database (same target for every open)."""
    if request.param == "sqlite":
        return str(tmp_path / "traces.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(target):
    opened = open_store(target)
    yield opened
    opened.close()


def test_save_get_roundtrip_and_unknown_id(store):
    trace = make_trace()
    assert store.save(trace) == trace.id
    assert store.get(trace.id) == trace  # every field, floats and unicode included
    with pytest.raises(TraceNotFoundError, match="srl traces list"):
        store.get("nope")
    with pytest.raises(StoreError):
        store.save({"problem": "not a trace"})  # type: ignore[arg-type]
    assert store.count() == 1


def test_list_newest_first_paging_and_summaries(store):
    traces = [make_trace(problem=f"p{i}") for i in range(5)]
    for i, trace in enumerate(traces):
        trace.created_at = utc_now() - timedelta(minutes=10 - i)
        store.save(trace)
    newest = list(reversed(traces))
    assert [row.id for row in store.list(limit=3)] == [t.id for t in newest[:3]]
    assert [row.id for row in store.list(limit=3, offset=3)] == [t.id for t in newest[3:]]
    row = store.list(limit=1)[0]
    assert (row.problem, row.answer, row.finish_reason, row.n_steps, row.model, row.engine) == \
        ("p4", "5", "final_answer", 2, "m", "e")
    assert row.created_at == traces[4].created_at
    assert store.count() == 5
    with pytest.raises(StoreError):
        store.list(limit=0)


def test_owner_filters_get_and_list_and_is_kept_by_later_saves(store):
    mine, theirs, legacy = make_trace("mine"), make_trace("theirs"), make_trace("legacy")
    store.save(mine, owner="alice")
    store.save(theirs, owner="bob")
    store.save(legacy)
    mine.steps.append(Step(index=3, thought="t3", action="a3"))
    store.save(mine)  # a later save that names no owner keeps the first one
    assert store.get(mine.id, owner="alice").steps[-1].action == "a3"
    for trace_id, owner in ((mine.id, "bob"), (legacy.id, "alice")):
        with pytest.raises(TraceNotFoundError):
            store.get(trace_id, owner=owner)
    assert [r.id for r in store.list(owner="alice")] == [mine.id]
    assert {r.id for r in store.list()} == {mine.id, theirs.id, legacy.id}


def test_retention_by_count_and_age_on_open_and_on_save(target):
    plain = open_store(target)
    old = make_trace("old")
    old.created_at = utc_now() - timedelta(days=40)
    plain.save(old)
    recent = []
    for i in range(4):
        trace = make_trace(f"recent {i}")
        trace.created_at = utc_now() - timedelta(seconds=10 - i)
        recent.append(plain.save(trace))
    plain.close()

    store = open_store(target, max_traces=3, max_age_days=30)  # opening applies both bounds
    try:
        assert {r.id for r in store.list()} == set(recent[1:])
        running = make_trace("running", finished=False)
        store.save(running)  # an unfinished save does not prune: the run is still being written
        assert store.count() == 4
        running.finish_reason = "final_answer"
        store.save(running)
        assert {r.id for r in store.list()} == {*recent[2:], running.id}
        assert store.prune() == 0
    finally:
        store.close()


def test_close_unfinished_marks_only_the_runs_named(store):
    done, left, other = make_trace("done"), make_trace("left", finished=False), make_trace("other", finished=False)
    for trace in (done, left, other):
        store.save(trace)
    assert store.close_unfinished("interrupted", "gone", ids=[]) == 0
    assert store.close_unfinished("interrupted", "worker died", ids=[left.id, done.id]) == 1
    closed = store.get(left.id)
    assert closed.finish_reason == "interrupted"
    assert closed.meta == {"note": "ünïcode ✓", "error": {"type": "interrupted", "message": "worker died"}}
    assert closed.steps == left.steps
    assert store.get(other.id).finish_reason is None and store.get(done.id) == done
    old = make_trace("old", finished=False)
    old.created_at = utc_now() - timedelta(hours=1)
    store.save(old)
    assert store.close_unfinished("interrupted", "stranded", before=utc_now() - timedelta(minutes=30)) == 1
    assert store.get(old.id).finish_reason == "interrupted" and store.get(other.id).finish_reason is None
    assert store.close_unfinished("interrupted", "server restarted") == 1  # all the rest
    assert {r.finish_reason for r in store.list()} == {"final_answer", "interrupted"}


def test_two_stores_on_one_target_write_at_once(target):
    """Two opened stores (as two servers hold), four threads each, every save kept."""
    stores = [open_store(target), open_store(target)]
    errors: list[BaseException] = []
    saved: list[Trace] = []

    def writer(store, k: int) -> None:
        try:
            for i in range(5):
                trace = make_trace(problem=f"{k}-{i}", finished=False)
                store.save(trace, owner=f"key{k}")
                trace.finish_reason = "final_answer"
                store.save(trace)
                saved.append(trace)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(stores[k % 2], k)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not errors, errors
        assert stores[0].count() == 40
        for trace in saved:
            assert stores[1].get(trace.id, owner="key" + trace.problem.split("-")[0]) == trace
    finally:
        for store in stores:
            store.close()

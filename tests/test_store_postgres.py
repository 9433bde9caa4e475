"""The PostgreSQL trace store against a real PostgreSQL server (tests/postgres.py starts it).

What only PostgreSQL has: migrations applied once when several stores open at once, an older
schema upgraded in place, and several `srl serve` replicas writing one store — every trace
streamed by either is stored, equal to what was streamed, and readable (and resumable) through
the other. Plus the errors: an unreachable or unknown store URL is one clear line, without the
password, and a missing driver names the extra to install.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse
from servers import post_reason, serving

from srl_sdk.core.steps import Trace
from srl_sdk.errors import ConfigError, MissingDependencyError, StoreError
from srl_sdk.serving.config import load_server_config
from srl_sdk.serving.process import free_port
from srl_sdk.store import SCHEMA_VERSION, open_store
from srl_sdk.store.postgres import MIGRATIONS, PostgresTraceStore

PROBLEMS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 4 pens. How many pens are in 3 boxes?",
    "Sara had 10 stickers and gave away 4. How many are left?",
    "A bus carries 12 people and 7 get off. How many remain?",
]


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def test_stores_opened_at_once_apply_the_migrations_once(postgres_url):
    barrier = threading.Barrier(4)
    opened: list[PostgresTraceStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            barrier.wait(timeout=30)
            opened.append(PostgresTraceStore(postgres_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert applied_versions(postgres_url) == sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
    assert {store.schema_version() for store in opened} == {SCHEMA_VERSION}
    for store in opened:
        store.close()


def test_a_version_1_database_is_upgraded_in_place_and_a_newer_one_refused(postgres_url):
    trace = Trace(problem="from version 1", answer="5", finish_reason="final_answer", model="m", engine="e")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL "
                     "DEFAULT now())")
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO traces VALUES (%s, %s, %s, %s, %s, 0, 'm', 'e', %s)",
                     (trace.id, trace.created_at, trace.problem, trace.answer, trace.finish_reason,
                      trace.model_dump_json()))
    store = open_store(postgres_url)
    assert store.get(trace.id) == trace
    store.save(Trace(problem="new"), owner="alice")
    assert [row.problem for row in store.list(owner="alice")] == ["new"]
    store.close()
    assert applied_versions(postgres_url) == list(range(1, SCHEMA_VERSION + 1))

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="upgrade srl-sdk"):
        open_store(postgres_url)


def test_bad_store_urls_are_clear_errors_without_the_password(postgres_server):
    unreachable = f"postgresql://srl:s3cret-pw@127.0.0.1:{free_port()}/traces"
    with pytest.raises(StoreError, match="cannot open the trace store postgresql://srl:\\*\\*\\*@127.0.0.1") as caught:
        open_store(unreachable)
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(StoreError, match="does not exist"):
        open_store(postgres_server.url("no_such_database"))
    with pytest.raises(StoreError, match="unknown trace store URL mysql://u:\\*\\*\\*@db/x"):
        open_store("mysql://u:pw@db/x")
    with pytest.raises(ConfigError, match="store: .*postgresql://user@host"):
        load_server_config(store="mysql://db/x")
    assert load_server_config(store=postgres_server.url()).store == postgres_server.url()  # a URL stays a URL


def test_serve_refuses_an_unreachable_store_in_one_line_before_loading_a_model(tmp_path):
    url = f"postgresql://srl:s3cret-pw@127.0.0.1:{free_port()}/traces"
    result = subprocess.run(
        [sys.executable, "-m", "srl_sdk.cli", "serve", "--store", url, "--port", str(free_port()), "--n-threads", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1
    assert "cannot open the trace store postgresql://srl:***@127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_driver_names_the_extra(monkeypatch, postgres_server):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'srl-sdk\[postgres\]'"):
        open_store(postgres_server.url())


@pytest.mark.slow
def test_two_servers_write_one_store_at_once_and_every_trace_is_there(tmp_path, postgres_url):
    # what a killed replica left: a run past any run's time bound (stranded), and a young one that
    # may be another replica's live run, which a starting server must leave alone
    seed = open_store(postgres_url)
    stranded, young = Trace(problem="stranded"), Trace(problem="young")
    stranded.created_at -= timedelta(hours=2)
    seed.save(stranded)
    seed.save(young)
    seed.close()
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=2) as starting:  # both start at once
        first, second = starting.map(lambda name: stack.enter_context(serving(tmp_path / name, store=postgres_url)),
                                     ("a", "b"))
        store = open_store(postgres_url)
        assert store.get(stranded.id).finish_reason == "interrupted" and store.get(young.id).finish_reason is None
        store.close_unfinished("interrupted", "test seed", [young.id])
        store.close()
        servers = [first, second, first, second]
        with ThreadPoolExecutor(max_workers=4) as pool:  # two concurrent streams on each server
            streams = list(pool.map(lambda i: post_reason(servers[i].url, {"problem": PROBLEMS[i]}), range(4)))
        streamed = [Trace.model_validate_json(events[-1].data) for events in streams]
        assert [events[-1].event for events in streams] == ["done"] * 4
        assert {trace.problem for trace in streamed} == set(PROBLEMS)

        store = open_store(postgres_url)
        try:
            assert store.count() == 4 + 2
            for trace, events in zip(streamed, streams):
                assert store.get(trace.id) == trace  # equal to what was streamed, field by field
                assert [e.data for e in events if e.event == "step"] == [s.model_dump_json() for s in trace.steps]
        finally:
            store.close()
        # any replica serves any trace: read, list and resume through the server that did not make it
        for i, trace in enumerate(streamed):
            other = servers[(i + 1) % 2]
            assert Trace.model_validate(httpx.get(f"{other.url}/v1/traces/{trace.id}", timeout=30).json()) == trace
            with httpx.Client(timeout=60) as client:
                with connect_sse(client, "GET", f"{other.url}/v1/traces/{trace.id}/events",
                                 headers={"Last-Event-ID": f"{trace.id}:0"}) as source:
                    replay = list(source.iter_sse())
            assert Trace.model_validate_json(replay[-1].data) == trace
        listed = httpx.get(f"{second.url}/v1/traces", params={"limit": 10}, timeout=30).json()["data"]
        assert {row["id"] for row in listed} == {trace.id for trace in streamed} | {stranded.id, young.id}

        # a live run made on one replica, resumed through the other: followed through the store
        trace_id = first.leave_after_first_token({"problem": PROBLEMS[0]})
        with httpx.Client(timeout=120) as client:
            with connect_sse(client, "GET", f"{second.url}/v1/traces/{trace_id}/events",
                             headers={"Last-Event-ID": f"{trace_id}:0"}) as source:
                followed = list(source.iter_sse())
        finished = first.wait_finished(trace_id)
        assert followed[-1].event == "done" and Trace.model_validate_json(followed[-1].data) == finished
        assert [e.data for e in followed if e.event == "step"] == [s.model_dump_json() for s in finished.steps]

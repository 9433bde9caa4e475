"""The server's lifecycle for real: `srl serve` with SmolLM2 on llama.cpp on 127.0.0.1, its
processes killed with SIGKILL, its capacity exceeded, its connections cut.

- a worker killed mid-stream: the client gets an `error` event (type `interrupted`) within
  seconds, /health and new requests answer 503, the server exits with status 1 and leaves no
  process and no unfinished trace behind;
- the main process killed: every child is gone within 10 s; the next server closes the trace the
  killed one left as `interrupted`, and resuming it ends at once;
- admission: beyond streams_per_worker running and max_queued waiting, 429 with Retry-After;
  queue_timeout_s gives 504; timeout_s includes the wait in the queue;
- a cut connection resumed with Last-Event-ID within resume_grace_s gets every later step
  exactly once and `done`; a client that never comes back has its run cancelled after the grace;
  POST /v1/traces/{id}/cancel cancels at once; a NUL byte in a given step is refused (422).

Each test starts its own server (start-up is a few seconds) with its own store through the
`srl_server` fixture (tests/servers.py); every process a test starts is in the server's own process
group and is checked gone at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent, connect_sse
from servers import SrlServer

from srl_sdk.core.steps import Step, Trace
from srl_sdk.serving.process import port_is_free
from srl_sdk.store import TraceStore

pytestmark = pytest.mark.slow

PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
LONG = {"max_steps": 12, "max_thought_tokens": 128, "max_action_tokens": 128}
# sampled this hot the model neither repeats a step nor writes a final answer: a run of LONG lasts
# minutes on one thread (measured: 12 full steps), so it holds its slot until the test ends it
HOT = {"temperature": 1.5, "seed": 7}


@pytest.fixture
def start(srl_server):
    """`start(resume_grace_s=2)`: a server of this module (a 2048-token context) with those limits."""
    return lambda **limits: srl_server(engine_options={"n_ctx": 2048}, limits=limits)


def group_gone_within(server: SrlServer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not server.group_alive():
            return True
        time.sleep(0.1)
    return not server.group_alive()


def unfinished(store: Path) -> list[str]:
    rows = TraceStore(store).list(limit=1000)
    return [row.id for row in rows if row.finish_reason is None]


def reason_stream(url: str, body: dict, client: httpx.Client):
    return connect_sse(client, "POST", url + "/v1/reason", json=body)


@contextlib.contextmanager
def long_run(server: SrlServer, client: httpx.Client, limits: dict | None = None,
             ) -> Iterator[tuple[EventSource, Iterator[ServerSentEvent], str]]:
    """A LONG (or `limits`), HOT run that holds its slot, read up to its first token: (the stream,
    its other events, its trace id). Leaving the `with` closes the connection."""
    body = {"problem": PROBLEM, "tokens": True, "limits": limits or LONG, "sampling": HOT}
    with reason_stream(server.url, body, client) as source:
        events = source.iter_sse()
        first = next(events)
        assert first.event == "token", first
        yield source, events, first.id.rpartition(":")[0]


def test_a_worker_killed_mid_stream_fails_the_stream_at_once_and_the_server_exits_non_zero(start):
    server = start()
    with httpx.Client(timeout=60) as client:
        with long_run(server, client) as (_, events, trace_id):
            os.kill(server.worker_pid(), signal.SIGKILL)
            killed = time.monotonic()
            rest = [event for event in events]
            waited = time.monotonic() - killed
    assert rest and rest[-1].event == "error", [e.event for e in rest[-3:]]
    error = rest[-1].json()
    assert error["type"] == "interrupted" and error["status"] == 503, error
    assert rest[-1].id == f"{trace_id}:end"
    assert waited < 10, f"the error event came {waited:.1f} s after the worker died"
    print(f"error event {waited:.2f} s after SIGKILL of the worker")

    # until it exits, the server says it is unhealthy and takes no new run
    health = httpx.get(server.url + "/health", timeout=5)
    assert health.status_code == 503, health.text
    refused = httpx.post(server.url + "/v1/reason", json={"problem": PROBLEM, "stream": False}, timeout=10)
    assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text

    code = server.process.wait(60)
    assert code == 1, f"srl serve exited with {code}, not 1"
    assert group_gone_within(server, 10), "a process of the server outlived it"
    assert port_is_free(server.port)
    trace = TraceStore(server.store).get(trace_id)
    assert trace.finish_reason == "interrupted" and trace.meta["error"]["type"] == "interrupted"
    assert unfinished(server.store) == []
    assert "exited with signal 9" in server.log.read_text()


def test_main_process_killed_takes_its_children_and_the_next_server_closes_its_trace(start, srl_server):
    server = start()
    pids = server.children()
    assert len(pids) >= 3, pids  # managers, the API process, the worker
    with httpx.Client(timeout=60) as client:
        short_steps = {"max_steps": 12, "max_thought_tokens": 16, "max_action_tokens": 16}
        with reason_stream(server.url, {"problem": PROBLEM, "limits": short_steps, "sampling": HOT},
                           client) as source:
            events = source.iter_sse()
            step = next(events)
            assert step.event == "step"
            trace_id = step.id.rpartition(":")[0]
            os.kill(server.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(httpx.HTTPError):
                list(events)
    assert group_gone_within(server, 10), f"children left: {[p for p in pids if Path(f'/proc/{p}').exists()]}"
    print(f"all children gone {time.monotonic() - killed:.2f} s after SIGKILL of the main process")
    server.process.wait(10)
    assert port_is_free(server.port)
    # the worker dies with its parent; if it outlives it by a moment it records the run as
    # interrupted itself (its cancel-flag manager is gone), else the next start-up closes it so
    left = TraceStore(server.store).get(trace_id)
    assert left.finish_reason in (None, "interrupted"), f"the killed server's run was recorded {left.finish_reason}"

    again = srl_server(engine_options={"n_ctx": 2048}, store=str(server.store))  # same store
    assert unfinished(server.store) == [], "start-up did not close the trace a killed server left"
    started = time.monotonic()
    with httpx.Client(timeout=15) as client:
        with connect_sse(client, "GET", f"{again.url}/v1/traces/{trace_id}/events",
                         headers={"Last-Event-ID": f"{trace_id}:0"}) as source:
            replay = list(source.iter_sse())
    assert time.monotonic() - started < 5, "resuming an interrupted trace must end at once"
    assert [e.event for e in replay] == ["step"] * (len(replay) - 1) + ["error"]
    assert len(replay) >= 2 and replay[0].data == step.data
    assert replay[-1].json()["type"] == "interrupted" and replay[-1].id == f"{trace_id}:end"
    trace = TraceStore(server.store).get(trace_id)
    assert trace.finish_reason == "interrupted"


def test_admission_is_bounded_and_timeout_s_includes_the_queue_wait(start):
    server = start(streams_per_worker=1, max_queued=1, queue_timeout_s=12, resume_grace_s=1)
    results: dict[str, tuple[httpx.Response, float]] = {}

    def post(name: str, body: dict) -> None:
        started = time.monotonic()
        response = httpx.post(server.url + "/v1/reason", json={"problem": PROBLEM, "stream": False, **body}, timeout=60)
        results[name] = (response, time.monotonic() - started)

    with httpx.Client(timeout=60) as client:
        with long_run(server, client) as (_, _, running_id):  # the one slot is taken

            waiting = threading.Thread(target=post, args=("queued", {}))
            waiting.start()
            time.sleep(0.5)
            started = time.monotonic()
            over = httpx.post(server.url + "/v1/reason", json={"problem": PROBLEM, "stream": False}, timeout=10)
            assert over.status_code == 429, over.text
            assert time.monotonic() - started < 2, "a full queue must refuse at once"
            assert int(over.headers["retry-after"]) >= 1
            assert over.json()["error"]["type"] == "server_busy"
            waiting.join(30)
            queued, waited = results["queued"]
            assert queued.status_code == 504 and queued.json()["error"]["type"] == "queue_timeout", queued.text
            assert 11.5 < waited < 17, f"queue_timeout_s is 12 s; the answer came after {waited:.1f} s"

            post("short", {"limits": {"timeout_s": 1.5}})  # its own cap is shorter than the queue's
            short, waited = results["short"]
            assert short.status_code == 504 and short.json()["error"]["type"] == "timeout", short.text
            assert 1.2 < waited < 2.8, f"timeout_s 1.5 s includes the queue wait; the answer took {waited:.1f} s"

            late = threading.Thread(target=post, args=("late", {"limits": {**LONG, "timeout_s": 14},
                                                                        "sampling": HOT}))
            late.start()
            time.sleep(4.0)
        # the stream holding the slot is gone: after resume_grace_s (1 s) its run is cancelled
        # (a client that stopped reading is noticed gone a few seconds after it closes)
        late.join(60)
    response, total = results["late"]
    assert response.status_code == 200, response.text
    trace = Trace.model_validate(response.json())
    assert trace.finish_reason == "timeout"
    print(f"timeout_s 14 after {total - trace.duration_s:.1f} s in the queue: answered in {total:.2f} s, "
          f"the run took {trace.duration_s:.2f} s")
    # the cap is checked between tokens, so a run overshoots by up to a prompt evaluation (~1-2 s here)
    assert total < 14 + 3, f"timeout_s 14 includes the queue wait, yet the answer took {total:.1f} s"
    assert trace.duration_s < 14 - 2.5, f"the run had its whole timeout_s after the wait ({trace.duration_s:.1f} s)"
    cancelled = TraceStore(server.store).get(running_id)
    assert cancelled.finish_reason == "cancelled", cancelled.finish_reason
    metrics = httpx.get(server.url + "/metrics").text
    assert 'srl_rejected_requests_total{status="429"} 1.0' in metrics


def test_a_cut_connection_resumed_within_the_grace_period_gets_every_step_once(start):
    server = start(resume_grace_s=30)
    body = {"problem": PROBLEM, "limits": {"max_steps": 3, "max_thought_tokens": 32, "max_action_tokens": 24},
            "sampling": HOT}  # three full steps: the run is still going when the client comes back
    with httpx.Client(timeout=60) as client:
        with reason_stream(server.url, body, client) as source:
            first = next(source.iter_sse())
        # the connection is closed after one step, mid-run
        assert first.event == "step"
        trace_id = first.id.rpartition(":")[0]
        with connect_sse(client, "GET", f"{server.url}/v1/traces/{trace_id}/events",
                         headers={"Last-Event-ID": first.id}) as source:
            rest = list(source.iter_sse())
    assert rest[-1].event == "done", [e.event for e in rest]
    trace = Trace.model_validate_json(rest[-1].data)
    assert trace.finish_reason != "cancelled", "the run was cancelled when its client left"
    got = [Step.model_validate_json(first.data)] + [Step.model_validate_json(e.data) for e in rest[:-1]]
    assert [s.index for s in got] == list(range(1, len(got) + 1)), "a step came twice or not at all"
    assert got == [s for s in trace.steps if s.source == "model"]
    assert TraceStore(server.store).get(trace_id) == trace
    nul = httpx.post(server.url + "/v1/reason", json={"problem": PROBLEM, "steps": ["48 / 2 =\x00 24"]}, timeout=30)
    assert nul.status_code == 422 and "NUL" in nul.json()["error"]["message"], nul.text  # as in problems


def test_a_run_whose_client_never_returns_is_cancelled_after_the_grace_period(start):
    server = start(resume_grace_s=2)
    trace_id = server.leave_after_first_token({"problem": PROBLEM, "limits": LONG, "sampling": HOT})
    left = time.monotonic()
    trace = server.wait_finished(trace_id)
    ended = time.monotonic() - left
    assert trace.finish_reason == "cancelled", trace.finish_reason
    assert 1.5 < ended < 15, f"cancelled {ended:.1f} s after the client left; the grace period is 2 s"
    # a stream closed on purpose is cancelled at once
    with httpx.Client(timeout=60) as client:
        with long_run(server, client) as (source, events, trace_id):
            assert source.response.headers["x-srl-trace-id"] == trace_id
            asked = time.monotonic()
            cancel = client.post(f"{server.url}/v1/traces/{trace_id}/cancel")
            assert cancel.status_code == 202, cancel.text
            rest = list(events)
    assert time.monotonic() - asked < 10, "POST .../cancel should stop the run at once"
    assert rest[-1].event == "done" and Trace.model_validate_json(rest[-1].data).finish_reason == "cancelled"
    gone = httpx.post(f"{server.url}/v1/traces/{trace_id}/cancel")
    assert gone.status_code == 404


def test_health_answers_from_memory_without_opening_the_store(tmp_path):
    """/health is open to anyone: it must not run a query over the store (COUNT(*) took 14-60 ms at
    300k traces, on the event loop); it answers from what the API process already knows."""
    from srl_sdk.serving.config import ServerConfig
    from srl_sdk.serving.worker import StepAPI

    api = StepAPI(ServerConfig(store=tmp_path / "traces.db"), cancel_flags={})
    assert api.health() is True
    assert api.spec._store is None, "/health opened the trace store"
    assert not (tmp_path / "traces.db").exists()


def test_a_locked_store_does_not_stall_the_other_streams_of_a_worker(start):
    """Store writes run on threads: while one run waits for a locked store (SQLite's busy timeout is
    30 s), the worker's event loop keeps relaying another run's tokens."""
    import sqlite3

    # A 512-token thought: its first store write (at the end of step 1) comes well after the 3.5 s
    # window even on a fast quiet machine; with LONG's 128 it could fall inside the window, and the
    # long run then waited on the locked store itself, so the loop below read nothing for 60 s.
    server = start(streams_per_worker=2, resume_grace_s=0, max_step_tokens=512)  # leaving cancels at once
    results: dict[str, httpx.Response] = {}
    with httpx.Client(timeout=60) as client:
        with long_run(server, client, {**LONG, "max_thought_tokens": 512}) as (_, events, _):
            lock = sqlite3.connect(server.store, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # the write lock: every save now waits
            try:
                other = threading.Thread(target=lambda: results.setdefault("other", httpx.post(
                    server.url + "/v1/reason", json={"problem": PROBLEM, "stream": False}, timeout=120)))
                other.start()
                time.sleep(0.5)  # its run has started and waits on its first save
                window_end = time.monotonic() + 3
                during = 0
                for event in events:
                    if time.monotonic() > window_end:
                        break
                    during += event.event == "token"
                assert "other" not in results, "the other run could not have been saved yet"
            finally:
                lock.execute("ROLLBACK")
                lock.close()
    assert during >= 3, f"only {during} token events in 3 s while another run waited on the store"
    print(f"{during} token events in 3 s while another run waited for the locked store")
    other.join(120)  # the long run was cancelled when its client left: this one finishes
    assert results["other"].status_code == 200, results["other"].text

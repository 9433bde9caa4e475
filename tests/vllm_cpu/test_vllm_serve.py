"""`srl serve --engine vllm`: the same step server, with vLLM's async engine inside the worker.

One server for the module, started through the real CLI (`python -m srl_sdk.cli serve --config`,
by tests/servers.py) and stopped with SIGTERM; after it stops, no process of it (vLLM's engine
core and worker included) may be left. Batching and aborts are read from the server's /metrics, where the worker
exports what vLLM's scheduler reported (running requests, the most run at once, aborts): figures
from the scheduler itself, not from log lines that depend on how logging is configured.
"""

from __future__ import annotations

import time

import httpx
import pytest
from httpx_sse import connect_sse
from servers import Exactly, serving

from srl_sdk.core.steps import Step, Trace

PROBLEMS = [
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Sara had 20 dollars and spent 8. How much money is left?",
]

def vllm_processes() -> list[int]:
    """Every VLLM::* process on the machine that is not a zombie (ours are the only ones here)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if (proc.info["name"] or "").startswith("VLLM") and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


@pytest.fixture(scope="module")
def server(smollm2_hf_dir, tmp_path_factory):
    before = set(vllm_processes())
    with serving(tmp_path_factory.mktemp("vllm_serve"), env={"VLLM_LOG_STATS_INTERVAL": "1"},
                 start_timeout_s=480, stop_timeout_s=60, model=str(smollm2_hf_dir), served_model_name="smollm2",
                 engine="vllm", engine_options=Exactly(max_model_len=2048, kv_cache_gib=0.5, enforce_eager=True,
                                                       log_stats=True),
                 limits=Exactly(resume_grace_s=1)) as started:  # a client that left is cancelled after 1 s
        assert set(vllm_processes()) - before, "the server started no vLLM engine process"
        yield started
    deadline = time.monotonic() + 30
    while set(vllm_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not set(vllm_processes()) - before, f"vLLM processes outlived the server: {vllm_processes()}"


def engine_gauges(server) -> dict[str, float]:
    """The `srl_engine_*` gauges of the (single) worker, from a real scrape of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=30).text
    return {sample.name.removeprefix("srl_engine_"): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("srl_engine_")}


def wait_for_gauges(server, ready, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll /metrics (bounded) until `ready(gauges)`; the worker publishes twice a second."""
    deadline = time.monotonic() + timeout_s
    gauges = engine_gauges(server)
    while not ready(gauges) and time.monotonic() < deadline:
        time.sleep(0.25)
        gauges = engine_gauges(server)
    return gauges


def test_steps_stream_through_srl_serve(server):
    with httpx.Client(timeout=300) as client:
        with connect_sse(client, "POST", server.url + "/v1/reason", json={"problem": PROBLEMS[0]}) as source:
            assert source.response.status_code == 200
            events = list(source.iter_sse())
    assert events[-1].event == "done", events[-1]
    trace = Trace.model_validate_json(events[-1].data)
    steps = [Step.model_validate_json(e.data) for e in events if e.event == "step"]
    assert steps == trace.steps and 1 <= len(steps) <= 2
    assert trace.engine == "vllm"
    assert all(step.confidence is not None for step in steps)


def test_openai_chunks_through_srl_serve(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=300, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROBLEMS[1]}], stream=True,
        extra_body={"max_steps": 1},
    ))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    thoughts = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    assert text.strip() or thoughts.strip()


def test_four_concurrent_streams_are_batched(server):
    results = server.reason_concurrently(PROBLEMS)
    for problem, events in zip(PROBLEMS, results):
        assert events[-1].event == "done", events[-1]
        assert Trace.model_validate_json(events[-1].data).problem == problem
    # published twice a second: wait for the figures taken after the last stream ended
    gauges = wait_for_gauges(server, lambda g: g.get("requests_running_peak", 0) >= 2
                             and g.get("requests_unfinished") == 0)
    assert gauges.get("requests_running_peak", 0) >= 2, f"vLLM's scheduler never ran several requests at once: {gauges}"
    assert gauges["requests_running"] == 0 and gauges["requests_unfinished"] == 0, gauges


def test_disconnect_aborts_the_vllm_request(server):
    body = {"problem": PROBLEMS[2], "tokens": True,
            "limits": {"max_steps": 12, "max_thought_tokens": 256, "max_action_tokens": 256}}
    aborted_before = wait_for_gauges(server, lambda g: "requests_aborted" in g).get("requests_aborted")
    assert aborted_before is not None, "the server exports no srl_engine_requests_aborted gauge"
    trace_id = server.leave_after_first_token(body)
    trace = server.wait_finished(trace_id)
    assert trace.finish_reason == "cancelled", trace
    gauges = wait_for_gauges(
        server, lambda g: g["requests_aborted"] > aborted_before and g["requests_unfinished"] == 0)
    assert gauges["requests_aborted"] > aborted_before, f"the request was never aborted inside vLLM: {gauges}"
    assert gauges["requests_unfinished"] == 0, f"vLLM still holds the request: {gauges}"
    # the next request is served
    response = httpx.post(server.url + "/v1/reason", timeout=300,
                          json={"problem": PROBLEMS[3], "stream": False, "limits": {"max_steps": 1}})
    assert response.status_code == 200


def test_engine_death_mid_stream_ends_in_a_typed_error_and_is_recorded(server):
    """vLLM's engine process is SIGKILLed while a stream is running (an engine error mid-stream).

    The client gets a typed `error` event (no hang): `EngineError` if the run noticed first,
    `interrupted` if the worker did (it exits once `Engine.alive()` turns False). The partial trace
    is closed as `error` or `interrupted`, /health turns 503 and the server exits with status 1 for
    its supervisor to restart it (srl_sdk/serving/lifecycle.py), leaving no vLLM process (the
    fixture's teardown checks that). It runs last in this module because it ends the server.
    """
    import json

    import psutil

    from srl_sdk.store import TraceStore

    body = {"problem": PROBLEMS[0], "tokens": True,
            "limits": {"max_steps": 12, "max_thought_tokens": 256, "max_action_tokens": 256}}
    with httpx.Client(timeout=120) as client:
        with connect_sse(client, "POST", server.url + "/v1/reason", json=body) as source:
            events = source.iter_sse()
            first = next(events)
            assert first.event == "token"
            trace_id = first.id.rpartition(":")[0]
            cores = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("VLLM::EngineCore")]
            assert cores, "no vLLM engine process found"
            for core in cores:
                core.kill()
            rest = list(events)  # ends: the server closes the stream (bounded by the client timeout)
    assert rest and rest[-1].event == "error", [e.event for e in rest][-5:]
    error = json.loads(rest[-1].data)
    assert error["type"] in ("EngineError", "interrupted"), error
    # the worker finds its engine dead and exits: the server fails, then exits with status 1
    assert server.process.wait(120) == 1
    trace = TraceStore(server.store).get(trace_id)
    assert trace.finish_reason in ("error", "interrupted"), trace.finish_reason
    assert not [row for row in TraceStore(server.store).list(limit=1000) if row.finish_reason is None]

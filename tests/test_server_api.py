"""The streaming step server, for real: `srl serve` on 127.0.0.1 with SmolLM2 on llama.cpp.

One server process for the whole module (tests/servers.py: started once, stopped with SIGTERM at the
end, and then checked to have left nothing behind). Small step and token caps keep each request to seconds.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from servers import post_reason, serving

from srl_sdk.core.steps import Step, Trace
from srl_sdk.store import TraceStore

pytestmark = pytest.mark.slow

PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
PROBLEMS = [
    PROBLEM,
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Sara had 20 dollars and spent 8. How much money is left?",
]

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a client that left is cancelled after 1 s (tests/test_server_lifecycle.py resumes)
    with serving(tmp_path_factory.mktemp("server"), limits={"resume_grace_s": 1}) as started:
        yield started


def check_ids(events: list, trace_id: str) -> None:
    """Every event has `<trace_id>:<n>`, n never decreasing, and the last one is `:end`."""
    last = -1
    for event in events[:-1]:
        tid, _, n = event.id.rpartition(":")
        assert tid == trace_id
        assert int(n) >= last
        last = int(n)
    assert events[-1].id == f"{trace_id}:end"


def test_health_models_metrics(server):
    assert httpx.get(server.url + "/health").status_code == 200
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200
    assert "srl_requests_total" in metrics.text
    # the llama.cpp engine's batch: its sequences, who waits for one, and the prompt work so far
    for gauge in ("sequences_busy", "sequences_total", "sessions_waiting", "prompt_tokens_evaluated", "tokens_decoded"):
        assert f'srl_engine_{gauge}{{worker="0"}}' in metrics.text


def test_engine_gauges_render_per_worker_and_survive_a_gone_manager():
    from prometheus_client.parser import text_string_to_metric_families

    from srl_sdk.serving import metrics

    # what two workers publish, keyed by LitServe's worker index (worker.StepAPI._figures)
    published = {"1": {"device": "cpu", "slots": 8, "running": 1, "runs": 5, "steps": 9, "tokens": 301,
                       "engine": {"requests_running": 1}},
                 "0": {"device": "cpu", "slots": 8, "running": 2, "runs": 7, "steps": 11, "tokens": 101,
                       "engine": {"requests_running": 3, "requests_running_peak": 4}}}
    body, content_type = metrics.render(published)
    assert content_type.startswith("text/plain")
    samples = {(s.name, s.labels.get("worker")): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert samples[("srl_engine_requests_running", "0")] == 3
    assert samples[("srl_engine_requests_running", "1")] == 1
    assert samples[("srl_engine_requests_running_peak", "0")] == 4
    assert samples[("srl_worker_streams_running", "0")] == 2 and samples[("srl_worker_streams_running", "1")] == 1
    assert samples[("srl_worker_runs_total", "1")] == 5 and samples[("srl_worker_tokens_total", "1")] == 301
    assert samples[("srl_worker_info", "0")] == 1

    class GoneManager:
        def items(self):
            raise ConnectionError("manager stopped")

        def keys(self):
            raise ConnectionError("manager stopped")

    body, _ = metrics.render(GoneManager())  # a scrape while the server stops still answers
    assert b"srl_engine_" not in body and b"srl_worker_" not in body and b"srl_requests_total" in body


def test_reason_streams_tokens_steps_and_done(server):
    events = post_reason(server.url, {"problem": PROBLEM, "tokens": True})
    kinds = [e.event for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert "token" in kinds and "step" in kinds
    assert kinds.index("token") < kinds.index("step")
    trace = Trace.model_validate_json(events[-1].data)
    check_ids(events, trace.id)
    steps = [Step.model_validate_json(e.data) for e in events if e.event == "step"]
    assert steps == trace.steps
    assert 1 <= len(steps) <= 2
    assert all(s.source == "model" and s.action for s in steps)
    token = json.loads(next(e.data for e in events if e.event == "token"))
    assert set(token) == {"step_index", "phase", "text", "logprob"} and token["phase"] == "thought"
    thought_text = "".join(json.loads(e.data)["text"] for e in events
                           if e.event == "token" and json.loads(e.data)["phase"] == "thought"
                           and json.loads(e.data)["step_index"] == 1)
    assert thought_text.strip() == steps[0].thought
    # audit: the same trace, stored with request, model and engine, fetched back by id
    fetched = httpx.get(f"{server.url}/v1/traces/{trace.id}").json()
    assert Trace.model_validate(fetched) == trace
    assert trace.engine == "llama.cpp" and trace.model
    assert trace.request["endpoint"] == "/v1/reason" and trace.request["body"]["problem"] == PROBLEM
    assert TraceStore(server.store).get(trace.id) == trace


def test_reason_without_stream_and_with_given_steps(server):
    given = "In May Natalia sold 48 / 2 = 24 clips."
    response = httpx.post(server.url + "/v1/reason", timeout=180,
                          json={"problem": PROBLEM, "steps": [given], "stream": False, "limits": {"max_steps": 1}})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    trace = Trace.model_validate(response.json())
    assert trace.steps[0].source == "given" and trace.steps[0].action == given
    assert len([s for s in trace.steps if s.source == "model"]) <= 1
    assert trace.finish_reason in ("max_steps", "final_answer", "repeated_step", "stop", "length")
    listed = httpx.get(server.url + "/v1/traces", params={"limit": 50}).json()["data"]
    assert trace.id in [row["id"] for row in listed]


def test_resume_with_last_event_id_replays_from_the_store(server):
    events = post_reason(server.url, {"problem": PROBLEMS[1]})
    trace = Trace.model_validate_json(events[-1].data)
    steps = [e for e in events if e.event == "step"]
    with httpx.Client(timeout=60) as client:
        with connect_sse(client, "GET", f"{server.url}/v1/traces/{trace.id}/events",
                         headers={"Last-Event-ID": f"{trace.id}:0"}) as source:
            replay = list(source.iter_sse())
        assert [(e.event, e.id, e.data) for e in replay[:-1]] == [(e.event, e.id, e.data) for e in steps]
        assert replay[-1].event == "done" and Trace.model_validate_json(replay[-1].data) == trace
        with connect_sse(client, "GET", f"{server.url}/v1/traces/{trace.id}/events",
                         headers={"Last-Event-ID": steps[0].id}) as source:
            after_first = list(source.iter_sse())
        assert [e.id for e in after_first] == [e.id for e in steps[1:]] + [f"{trace.id}:end"]
        # the same header on POST /v1/reason resumes instead of starting a new run
        with connect_sse(client, "POST", f"{server.url}/v1/reason", json={"problem": "ignored"},
                         headers={"Last-Event-ID": f"{trace.id}:end"}) as source:
            assert list(source.iter_sse()) == []


def test_official_openai_client_non_streaming(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=180, max_retries=0)
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": PROBLEM}],
                                           extra_body={"max_steps": 1})
    choice = reply.choices[0]
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    extra = choice.message.model_extra
    trace_id = reply.model_extra["srl"]["trace_id"]
    trace = server.trace(trace_id)
    assert choice.message.content == trace.steps[0].action
    assert extra["reasoning_content"] == extra["reasoning"] == trace.steps[0].thought
    expected = "length" if trace.finish_reason in ("max_steps", "length", "timeout") else "stop"
    assert choice.finish_reason == expected
    assert reply.usage.completion_tokens == trace.usage["completion_tokens"] > 0
    assert reply.usage.prompt_tokens == trace.usage["prompt_tokens"] > 0
    assert trace.request["endpoint"] == "/v1/chat/completions"


def test_official_openai_client_streaming_with_reasoning_and_logprobs(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=180, max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROBLEM}],
        stream=True, logprobs=True, stream_options={"include_usage": True}, extra_body={"max_steps": 2},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1, "one stable id for the whole stream"
    reasoning = [c for c in chunks if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content")]
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert reasoning and content
    for chunk in reasoning:
        delta = chunk.choices[0].delta.model_extra
        assert delta["reasoning"] == delta["reasoning_content"]
        assert chunk.choices[0].logprobs.content[0].logprob <= 0.0  # logprobs on reasoning chunks too
    last = chunks[-1]
    srl = last.model_extra["srl"]
    trace = server.trace(srl["trace_id"])
    assert last.choices[0].finish_reason == ("length" if trace.finish_reason in ("max_steps", "length") else "stop")
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert last.usage.completion_tokens == trace.usage["completion_tokens"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert [line.strip() for line in text.strip().split("\n")] == [s.action for s in trace.steps]
    thoughts = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks)
    assert thoughts.split() == "\n".join(s.thought for s in trace.steps).split()


def test_four_concurrent_streams_all_complete_correctly(server):
    started = time.monotonic()
    results = server.reason_concurrently(PROBLEMS, timeout_s=240)
    elapsed = time.monotonic() - started
    ids = set()
    produced = 0
    for problem, events in zip(PROBLEMS, results):
        assert events[-1].event == "done", events[-1]
        trace = Trace.model_validate_json(events[-1].data)
        check_ids(events, trace.id)
        assert trace.problem == problem
        streamed = [Step.model_validate_json(e.data) for e in events if e.event == "step"]
        assert streamed == trace.steps and len(streamed) <= 1
        assert [s.index for s in streamed] == list(range(1, len(streamed) + 1))
        assert TraceStore(server.store).get(trace.id) == trace
        ids.add(trace.id)
        produced += len(streamed)
    assert len(ids) == 4 and produced >= 3
    print(f"4 concurrent one-step streams: {elapsed:.1f} s")


def test_client_disconnect_cancels_the_run(server):
    before = server.metric("srl_streams_cancelled_total")
    # sampled, so that the run cannot end on its own (a repeated step, greedy) before the server
    # hears that the client left: the driver runs at the engine's pace, not the client's
    trace_id = server.leave_after_first_token(
        {"problem": PROBLEMS[2], "limits": {"max_steps": 12, "max_thought_tokens": 128, "max_action_tokens": 128},
         "sampling": {"temperature": 1.0, "seed": 3}})
    trace = server.wait_finished(trace_id)
    assert trace.finish_reason == "cancelled", trace
    assert len(trace.steps) < 12
    assert server.metric("srl_streams_cancelled_total") == before + 1
    # the engine is free again: the next request is served promptly
    started = time.monotonic()
    response = httpx.post(server.url + "/v1/reason", timeout=120,
                          json={"problem": PROBLEM, "stream": False, "limits": {"max_steps": 1}})
    assert response.status_code == 200
    assert time.monotonic() - started < 60


def test_client_leaving_a_non_streamed_request_cancels_it_too(server):
    before = TraceStore(server.store).count()
    body = {"problem": PROBLEMS[3], "stream": False,
            "limits": {"max_steps": 12, "max_thought_tokens": 128, "max_action_tokens": 128}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/reason", json=body, timeout=httpx.Timeout(1.5, connect=5))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = TraceStore(server.store).list(limit=1)
        if TraceStore(server.store).count() > before and rows[0].finish_reason is not None:
            break
        time.sleep(0.2)
    assert rows[0].problem == PROBLEMS[3] and rows[0].finish_reason == "cancelled"


BAD_REASON_BODIES = [
    ("malformed JSON", b'{"problem": "2+2?"', 400),
    ("not an object", b"[1, 2]", 422),
    ("wrong type", json.dumps({"problem": 5}).encode(), 422),
    ("unknown field", json.dumps({"problem": "2+2?", "temperature": 0.5}).encode(), 422),
    ("empty problem", json.dumps({"problem": ""}).encode(), 422),
    ("blank problem", json.dumps({"problem": "   \n"}).encode(), 422),
    ("negative limit", json.dumps({"problem": "2+2?", "limits": {"max_steps": -1}}).encode(), 422),
    ("huge limit", json.dumps({"problem": "2+2?", "limits": {"max_steps": 100000}}).encode(), 422),
    ("over server cap", json.dumps({"problem": "2+2?", "limits": {"max_total_tokens": 60000}}).encode(), 422),
    ("bad sampling", json.dumps({"problem": "2+2?", "sampling": {"temperature": -1}}).encode(), 422),
    ("unknown model", json.dumps({"problem": "2+2?", "model": "gpt-9"}).encode(), 404),
    ("oversized body", json.dumps({"problem": "x" * 70_000}).encode(), 413),
]


@pytest.mark.parametrize("name,body,status", BAD_REASON_BODIES, ids=[b[0] for b in BAD_REASON_BODIES])
def test_bad_reason_bodies_get_a_4xx_json_error(server, name, body, status):
    before = TraceStore(server.store).count()
    response = httpx.post(server.url + "/v1/reason", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert TraceStore(server.store).count() == before, "a refused request must not create a trace"


BAD_OTHER = [
    ("unknown trace", "GET", "/v1/traces/does-not-exist", None, {}, 404),
    ("bad list limit", "GET", "/v1/traces?limit=0", None, {}, 422),
    ("non-numeric limit", "GET", "/v1/traces?limit=many", None, {}, 422),
    ("bad Last-Event-ID", "GET", "/v1/traces/abc/events", None, {"Last-Event-ID": "nonsense"}, 400),
    ("resume unknown trace", "GET", "/v1/traces/abc/events", None, {"Last-Event-ID": "abc:1"}, 404),
    ("chat unknown model", "POST", "/v1/chat/completions",
     {"model": "gpt-9", "messages": [{"role": "user", "content": "2+2?"}]}, {}, 404),
    ("chat without user message", "POST", "/v1/chat/completions",
     {"model": "smollm2", "messages": [{"role": "system", "content": "hi"}]}, {}, 422),
    ("chat unknown field", "POST", "/v1/chat/completions",
     {"model": "smollm2", "messages": [{"role": "user", "content": "2+2?"}], "tools": []}, {}, 422),
    ("chat n=2", "POST", "/v1/chat/completions",
     {"model": "smollm2", "messages": [{"role": "user", "content": "2+2?"}], "n": 2}, {}, 422),
    ("unknown route", "GET", "/v1/nothing-here", None, {}, 404),
]


@pytest.mark.parametrize("name,method,path,body,headers,status", BAD_OTHER, ids=[b[0] for b in BAD_OTHER])
def test_bad_requests_elsewhere_get_a_4xx_json_error(server, name, method, path, body, headers, status):
    response = httpx.request(method, server.url + path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_server_keeps_serving_after_bad_input(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert server.metric('srl_rejected_requests_total{status="422"}') >= 1


def test_engine_failure_ends_the_stream_with_an_error_event_and_is_recorded(server):
    """A problem longer than the context (n_ctx 1024) makes the engine refuse the prompt."""
    long_problem = "Count the apples. " + "There is one more apple in the basket. " * 450
    events = post_reason(server.url, {"problem": long_problem})
    assert [e.event for e in events] == ["error"]
    error = json.loads(events[0].data)
    assert error["type"] == "ContextOverflowError" and "context" in error["message"] and error["status"] == 400
    trace_id = events[0].id.removesuffix(":end")
    trace = TraceStore(server.store).get(trace_id)
    assert trace.finish_reason == "error" and trace.meta["error"]["type"] == "ContextOverflowError"
    response = httpx.post(server.url + "/v1/reason", json={"problem": long_problem, "stream": False})
    assert response.status_code == 400 and "context" in response.json()["error"]["message"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=60, max_retries=0)
    with pytest.raises(openai.APIError, match="context"):
        list(client.chat.completions.create(model="smollm2", stream=True,
                                            messages=[{"role": "user", "content": long_problem}]))


def test_wall_clock_cap_stops_a_run(server):
    response = httpx.post(server.url + "/v1/reason", timeout=60, json={
        "problem": PROBLEM, "stream": False,
        "limits": {"timeout_s": 0.5, "max_steps": 12, "max_thought_tokens": 128}})
    trace = Trace.model_validate(response.json())
    assert trace.finish_reason == "timeout" and trace.duration_s < 10

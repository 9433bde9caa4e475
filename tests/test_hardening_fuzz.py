"""Schema fuzzing of the HTTP API from its own OpenAPI document (schemathesis): no 5xx, no hang.

One real `srl serve` on 127.0.0.1 (SmolLM2 on llama.cpp) with server limits so tight that any
valid request generates at most a handful of tokens, so a few hundred requests fit in minutes.
For every operation in /openapi.json schemathesis generates requests that fit the schema
(positive) and requests that break it (negative); each is sent with a timeout. A 5xx, a timeout
(a hang) or a server that stops answering /health fails the test, naming the request to replay.
"""

from __future__ import annotations

import time

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from servers import serving

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 30
REQUEST_TIMEOUT_S = 60.0
TOTAL_BUDGET_S = 240.0

# every cap as small as the server allows: a valid request is answered within seconds
TINY = {"limits": {"max_steps": 1, "max_given_steps": 4, "max_step_tokens": 3, "max_total_tokens": 6,
                   "default_timeout_s": 20, "max_timeout_s": 30, "max_body_bytes": 8192},
        "reason": {"max_steps": 1, "max_thought_tokens": 3, "max_action_tokens": 3, "max_total_tokens": 6}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuzz"), **TINY) as started:
        yield started


def test_openapi_document_declares_the_request_bodies(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    reason = doc["paths"]["/v1/reason"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "problem" in reason["properties"] and reason["additionalProperties"] is False
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(chat["properties"])


def test_no_5xx_and_no_hang_on_generated_requests(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/reason", "POST /v1/chat/completions", "GET /v1/traces/{trace_id}"} <= labels, labels
    session = requests.Session()
    started = time.monotonic()
    failures: list[str] = []
    counts: dict[str, int] = {}
    unbreakable: list[str] = []

    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def send(case) -> None:
                if time.monotonic() - started > TOTAL_BUDGET_S:
                    return
                label = f"{case.operation.method.upper()} {case.operation.path}"
                counts[label] = counts.get(label, 0) + 1
                try:
                    response = case.call(base_url=server.url, session=session, timeout=REQUEST_TIMEOUT_S)
                except requests.Timeout:
                    failures.append(f"{label} hung (> {REQUEST_TIMEOUT_S:.0f} s): {case.as_curl_command()}")
                    return
                if response.status_code >= 500:
                    failures.append(f"{label} -> {response.status_code} {response.text[:300]!r}: "
                                    f"{case.as_curl_command()}")

            try:
                send()
            except Unsatisfiable:
                # an operation with no parameters and no body cannot be sent an invalid request
                assert mode == schemathesis.GenerationMode.NEGATIVE, f"{label}: no valid request could be generated"
                unbreakable.append(label)
    elapsed = time.monotonic() - started
    print(f"fuzzed {sum(counts.values())} requests over {len(operations)} operations in {elapsed:.0f} s: {counts}; "
          f"no invalid form exists for {unbreakable}")
    assert elapsed < TOTAL_BUDGET_S + 2 * REQUEST_TIMEOUT_S, "the fuzz run overran its budget"
    assert counts.get("POST /v1/reason", 0) >= 20, f"too few requests reached /v1/reason: {counts}"
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200, "the server stopped answering"

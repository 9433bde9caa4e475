"""Reasoner / AsyncReasoner against a real `srl serve` (with an API key) on 127.0.0.1.

The connection-loss test puts a real TCP relay between client and server that cuts the first
connection right after the first step event, the way a flaky network does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from servers import Exactly, serving

from srl_sdk.client import AsyncReasoner, Reasoner
from srl_sdk.core.steps import Step, Trace
from srl_sdk.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InputError,
    NotFoundError,
    RequestValidationError,
)
from srl_sdk.serving.process import free_port

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the engine and the sampling are the server's defaults (no engine, no temperature given)
    with serving(tmp_path_factory.mktemp("remote"), env={"SRL_API_KEYS": ""}, api_keys=[KEY], engine=None,
                 limits=Exactly(max_total_tokens=4096), reason={"temperature": None}) as started:
        yield started


def test_remote_reasoner_streams_the_same_step_objects(server):
    with Reasoner(server.url, api_key=KEY) as reasoner:
        assert reasoner.is_remote
        stream = reasoner.stream(PROBLEM, max_steps=2)
        steps = list(stream)
        trace = stream.trace
        assert trace is not None and steps and all(isinstance(s, Step) for s in steps)
        assert steps == trace.steps
        assert reasoner.get_trace(trace.id) == trace
        # continue from a (person-edited) given step
        given = "Tom has 3 + 5 = 8 apples."
        cont = reasoner.continue_from(PROBLEM, [given], max_steps=1)
        assert cont.steps[0].source == "given" and cont.steps[0].action == given
        assert len(cont.steps) <= 2


def test_async_remote_reasoner(server):
    async def run():
        async with AsyncReasoner(server.url, api_key=KEY) as reasoner:
            stream = reasoner.stream(PROBLEM, max_steps=1)
            steps = [s async for s in stream]
            assert steps and steps == stream.trace.steps
            fetched = await reasoner.get_trace(stream.trace.id)
            assert fetched == stream.trace
            return await reasoner.solve("A box holds 6 eggs. How many eggs are in 2 boxes?", max_steps=1)

    trace = asyncio.run(run())
    assert isinstance(trace, Trace) and trace.steps


def test_api_keys_are_enforced(server):
    with Reasoner(server.url) as anonymous:
        with pytest.raises(AuthenticationError, match="missing API key") as caught:
            anonymous.solve(PROBLEM)
        assert caught.value.status_code == 401
    with Reasoner(server.url, api_key="wrong-key-123456") as wrong:
        with pytest.raises(AuthenticationError, match="invalid API key"):
            wrong.get_trace("anything")
    for path in ("/v1/models", "/v1/traces", "/metrics"):
        response = httpx.get(server.url + path)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(server.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    chat = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": "Bearer nope-nope-nope"},
                      json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key


def test_typed_errors(server):
    with Reasoner(server.url, api_key=KEY) as reasoner:
        with pytest.raises(NotFoundError):
            reasoner.get_trace("no-such-trace")
        with pytest.raises(RequestValidationError, match="limit"):
            reasoner.solve(PROBLEM, max_total_tokens=60000)  # valid setting, above this server's cap
        with pytest.raises(RequestValidationError, match="empty"):
            reasoner.solve("   ")
        with pytest.raises(InputError, match="unknown reasoning settings"):
            reasoner.solve(PROBLEM, max_stepz=2)
    with Reasoner(server.url, api_key=KEY, timeout=0.3) as impatient:
        with pytest.raises(APITimeoutError):
            impatient.solve(PROBLEM)
    with Reasoner(f"http://127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(APIConnectionError, match="cannot reach"):
            nowhere.solve(PROBLEM)


class CuttingRelay:
    """TCP relay to the server that drops its first connection right after the first step event."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.cut_done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut = self.connections == 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, cut), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, cut: bool) -> None:
        seen = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
                seen = (seen + data)[-4096:]
                if cut and b"event: step" in seen:
                    self.cut_done.set()
                    break
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_connection_lost_after_a_step_resumes_with_last_event_id(server):
    relay = CuttingRelay(server.port)
    try:
        with Reasoner(f"http://127.0.0.1:{relay.port}", api_key=KEY) as reasoner:
            stream = reasoner.stream(PROBLEM, max_steps=3)
            steps = list(stream)
            trace = stream.trace
        assert relay.cut_done.is_set() and relay.connections == 2, "the relay should have cut once, then resumed"
        assert trace is not None
        assert trace.finish_reason != "cancelled", "the cut connection cancelled the run instead of resuming it"
        assert [s.index for s in steps] == sorted({s.index for s in steps}), "no step twice, none out of order"
        assert steps == [s for s in trace.steps if s.source == "model"]
        with Reasoner(server.url, api_key=KEY) as direct:
            assert direct.get_trace(trace.id) == trace
    finally:
        relay.close()


def test_cli_reason_against_the_server(server):
    result = subprocess.run(
        [sys.executable, "-m", "srl_sdk.cli", "reason", PROBLEM, "--model", server.url, "--max-steps", "1"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "SRL_API_KEY": KEY},
    )
    assert result.returncode == 0, result.stderr
    assert "Step 1" in result.stdout and "trace" in result.stdout

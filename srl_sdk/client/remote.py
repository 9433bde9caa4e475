"""The remote backend of Reasoner: `srl serve` over HTTP, steps read from Server-Sent Events.

SSE is parsed by httpx-sse. The policies that make a remote call as dependable as a local one:
- the default read timeout is 300 s, because a CPU server can take many seconds per step
  (httpx's default of 5 s would abort healthy runs);
- a connection that fails before the server answered is retried (bounded, with backoff) by
  sending the request again: no run was started for it;
- a connection lost once the server answered (its `X-SRL-Trace-Id` header names the run) is
  resumed with `Last-Event-ID` on GET /v1/traces/{id}/events: the server keeps the run going for
  its resume_grace_s (30 s by default) and sends every step that did not arrive, exactly once,
  then `done`. At most `max_retries` reconnections in a row without a new event, with backoff;
- a stream closed on purpose (StepStream.close, a `cancel` event) cancels the run on the server
  at once with POST /v1/traces/{id}/cancel, rather than leaving it running for the grace period;
- every failure is a typed srl_sdk.errors.APIError: status errors (401 AuthenticationError,
  404 NotFoundError, 400/413/422 RequestValidationError, others APIStatusError), an `error`
  event (the status it carries), APIConnectionError and APITimeoutError.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from srl_sdk.core.steps import Step, Trace
from srl_sdk.errors import APIConnectionError, APIError, APITimeoutError, InputError, status_error
from srl_sdk.reasoning.driver import ReasonConfig
from srl_sdk.store.sqlite import TraceStore

DEFAULT_READ_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
MAX_RETRIES = 2
BACKOFF_S = 0.5
CANCEL_TIMEOUT_S = 5.0
TRACE_ID_HEADER = "x-srl-trace-id"  # the server names the run before its first event
_JSON = {"Accept": "application/json"}

_LIMIT_FIELDS = ("max_steps", "max_thought_tokens", "max_action_tokens", "max_total_tokens", "timeout_s")
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")
_TOP_FIELDS = ("mode", "checks")


def default_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    read = DEFAULT_READ_TIMEOUT_S if timeout is None else float(timeout)
    return httpx.Timeout(read, connect=min(DEFAULT_CONNECT_TIMEOUT_S, read))


def reason_body(config: ReasonConfig | None, problem: str, steps: Sequence[str | Step],
                overrides: dict[str, Any]) -> dict[str, Any]:
    """Reasoner settings -> the /v1/reason body. Settings are checked here, as the local backend does."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(ReasonConfig.model_fields))
    if unknown:
        raise InputError(f"unknown reasoning settings {unknown}; valid ones: {sorted(ReasonConfig.model_fields)}")
    try:
        merged = ReasonConfig.model_validate({**(config or ReasonConfig()).model_dump(), **given})
    except ValueError as exc:
        raise InputError(f"invalid reasoning settings: {exc}") from exc
    chosen = merged.model_dump() if config is not None else {k: getattr(merged, k) for k in given}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if not isinstance(problem, str):
        raise InputError(f"the problem must be text, not {type(problem).__name__}")
    body: dict[str, Any] = {
        "problem": problem,
        "steps": [s.action if isinstance(s, Step) else s for s in steps],
        "stream": True,
        "limits": {k: chosen[k] for k in _LIMIT_FIELDS if k in chosen},
        "sampling": {k: chosen[k] for k in _SAMPLING_FIELDS if k in chosen},
    }
    body.update({k: chosen[k] for k in _TOP_FIELDS if k in chosen})
    return body


def _error_from_response(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") or body.get("detail") or response.text
    except (ValueError, AttributeError):
        body, message = response.text, response.text or response.reason_phrase
    return status_error(response.status_code, str(message), body)


def _trace_from(response: httpx.Response) -> Trace:
    if response.status_code >= 400:
        raise _error_from_response(response)
    return Trace.model_validate_json(response.content)


def _decode(event: ServerSentEvent) -> Step | Trace | None:
    """step -> Step, done -> Trace, error -> raised, token / unknown -> None."""
    if event.event == "step":
        return Step.model_validate_json(event.data)
    if event.event == "done":
        return Trace.model_validate_json(event.data)
    if event.event == "error":
        try:
            data = json.loads(event.data)
        except ValueError:
            data = {"message": event.data}
        kind = data.get("type", "error")
        raise status_error(int(data.get("status", 500)), f"the run failed: {kind}: {data.get('message')}", data)
    return None


def _resume_point(response: httpx.Response, last_id: str | None) -> str | None:
    """Before any event: the server's trace id header makes the run resumable from its start."""
    if last_id is None and response.headers.get(TRACE_ID_HEADER):
        return f"{response.headers[TRACE_ID_HEADER]}:0"
    return last_id


def _trace_id(event_id: str | None) -> str | None:
    if not event_id or ":" not in event_id:
        return None
    return event_id.rpartition(":")[0]


class _StreamState:
    """One reasoning stream's progress, kept apart from its I/O so that `run` and `arun` hold only
    their I/O lines: where to (re)connect, the resume point, the retry budget (per outage) and
    whether the run has ended (then there is nothing to cancel on the server)."""

    def __init__(self, backend: "RemoteBackend", body: dict[str, Any]) -> None:
        self.backend = backend
        self.body = body
        self.last_id: str | None = None
        self.attempts = 0
        self.finished = False

    def request(self) -> tuple[str, str, dict[str, Any]]:
        return self.backend._request_for(self.body, self.last_id)

    def refused(self, response: httpx.Response) -> APIError:
        self.finished = True  # refused: no run to cancel
        return _error_from_response(response)

    def opened(self, response: httpx.Response) -> None:
        self.last_id = _resume_point(response, self.last_id)

    def feed(self, event: ServerSentEvent) -> Step | Trace | None:
        self.attempts = 0  # the retry budget is per outage
        if event.id:
            self.last_id = event.id
        try:
            item = _decode(event)
        except APIError:
            self.finished = True  # the run ended with an error event
            raise
        if isinstance(item, Trace):
            self.finished = True
        return item

    def ended_early(self) -> None:
        raise httpx.RemoteProtocolError("the stream ended before its done event")

    def retry_delay(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before reconnecting; raises the typed error when the budget is spent."""
        self.attempts += 1
        error = self.backend._give_up(exc, self.attempts)
        if error is not None:
            raise error from exc
        return BACKOFF_S * 2 ** (self.attempts - 1)

    def run_to_cancel(self) -> str | None:
        return None if self.finished else _trace_id(self.last_id)


class RemoteBackend:
    """Talks to `srl serve`. Used by Reasoner / AsyncReasoner when the model is an http(s) URL.

    It implements client/backend.py's Backend protocol; traces live in the server's store."""

    store: TraceStore | None = None  # this process keeps none

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        config: ReasonConfig | None = None,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.url = url.rstrip("/")
        self.config = config
        self.max_retries = max(0, int(max_retries))
        self.timeout = default_timeout(timeout)
        self.headers = {"Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        return self._client

    @property
    def aclient(self) -> httpx.AsyncClient:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
        return self._aclient

    def _request_for(self, body: dict[str, Any], last_id: str | None) -> tuple[str, str, dict[str, Any]]:
        if last_id is None:
            return "POST", f"{self.url}/v1/reason", {"json": body}
        trace_id = _trace_id(last_id)
        return "GET", f"{self.url}/v1/traces/{trace_id}/events", {"headers": {"Last-Event-ID": last_id}}

    def _give_up(self, exc: httpx.TransportError, attempts: int) -> APIError | None:
        """None to retry; else the typed error to raise."""
        if attempts <= self.max_retries and not isinstance(exc, httpx.ReadTimeout):
            return None
        return self._transport_error(exc)

    def _transport_error(self, exc: httpx.TransportError) -> APIError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(
                f"{self.url} did not answer in time ({exc!r}); raise the client timeout (timeout=...) "
                "or lower max_steps / token limits"
            )
        return APIConnectionError(f"cannot reach the srl server at {self.url} ({exc!r}); is `srl serve` running there?")

    # -- sync ---------------------------------------------------------------------------------
    def run(
        self,
        problem: str,
        steps: Sequence[str | Step],
        overrides: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> Iterator[Step | Trace]:
        state = _StreamState(self, reason_body(self.config, problem, steps, overrides))
        try:
            while True:
                method, url, kwargs = state.request()
                try:
                    with self.client.stream(method, url, **kwargs) as response:
                        if response.status_code >= 400:
                            response.read()
                            raise state.refused(response)
                        state.opened(response)
                        for event in EventSource(response).iter_sse():
                            item = state.feed(event)
                            if item is not None:
                                yield item
                                if state.finished:
                                    return
                            if cancel is not None and cancel.is_set():
                                return  # the finally cancels the run on the server
                        state.ended_early()
                except httpx.TransportError as exc:
                    time.sleep(state.retry_delay(exc))
        finally:
            if (trace_id := state.run_to_cancel()) is not None:
                self._cancel_run(trace_id)

    def _cancel_run(self, trace_id: str) -> None:
        """Best effort: the server would otherwise keep the run for its resume grace period."""
        try:
            self.client.post(f"{self.url}/v1/traces/{trace_id}/cancel", timeout=CANCEL_TIMEOUT_S, headers=_JSON)
        except httpx.HTTPError:
            pass

    @contextmanager
    def _api_errors(self) -> Iterator[None]:
        """The one place a single request's failures become typed errors: transport failures
        -> APIConnectionError / APITimeoutError. (Streams retry instead: see _StreamState.)"""
        try:
            yield
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc

    def get_trace(self, trace_id: str) -> Trace:
        with self._api_errors():
            response = self.client.get(f"{self.url}/v1/traces/{trace_id}", headers=_JSON)
        return _trace_from(response)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- async --------------------------------------------------------------------------------
    async def arun(
        self,
        problem: str,
        steps: Sequence[str | Step],
        overrides: dict[str, Any],
    ) -> AsyncIterator[Step | Trace]:
        state = _StreamState(self, reason_body(self.config, problem, steps, overrides))
        try:
            while True:
                method, url, kwargs = state.request()
                try:
                    async with self.aclient.stream(method, url, **kwargs) as response:
                        if response.status_code >= 400:
                            await response.aread()
                            raise state.refused(response)
                        state.opened(response)
                        async for event in EventSource(response).aiter_sse():
                            item = state.feed(event)
                            if item is not None:
                                yield item
                                if state.finished:
                                    return
                        state.ended_early()
                except httpx.TransportError as exc:
                    await asyncio.sleep(state.retry_delay(exc))
        finally:
            if (trace_id := state.run_to_cancel()) is not None:
                await self._acancel_run(trace_id)

    async def _acancel_run(self, trace_id: str) -> None:
        try:
            await self.aclient.post(f"{self.url}/v1/traces/{trace_id}/cancel", timeout=CANCEL_TIMEOUT_S, headers=_JSON)
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: the event loop is closing
            pass

    async def aget_trace(self, trace_id: str) -> Trace:
        with self._api_errors():
            response = await self.aclient.get(f"{self.url}/v1/traces/{trace_id}", headers=_JSON)
        return _trace_from(response)

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        self.close()

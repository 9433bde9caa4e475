"""The HTTP side: a LitSpec that registers every route and relays worker events to clients.

LitServe's own streaming sends untyped NDJSON and its OpenAISpec drops reasoning deltas,
logprobs and `finish_reason="length"`, so this spec registers its own endpoints. Requests are
validated here (a bad body never reaches a worker), then enqueued to the inference workers the
way LitServe's specs do (`request_queue`, `response_buffer`, `data_streamer`, `response_queue_id`:
semi-internal attributes of litserve 0.2.19, which is why the version is pinned and tested).

Disconnects: Starlette cancels a StreamingResponse when the client goes away; the relay's
`finally` then marks the trace cancelled in the shared dict, and the worker stops the engine.
Every route gets `LitAPI.authorize` as a dependency from LitServe itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from pydantic import BaseModel, ValidationError

from srl_sdk.core.steps import new_trace_id
from srl_sdk.serving import metrics, openai_compat, sse
from srl_sdk.serving.config import ServerConfig
from srl_sdk.serving.schemas import ApiError, ChatCompletionRequest, ReasonRequest, chat_job, reason_job

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RESUME_POLL_S = 0.25
DISCONNECT_POLL_S = 0.5


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


class StepSpec(LitSpec):
    def __init__(self, config: ServerConfig, cancel_flags: Any, engine_gauges: Any = None) -> None:
        super().__init__()
        self.api_path = "/v1/reason"
        self.config = config
        self.cancel_flags = cancel_flags
        self.engine_gauges = engine_gauges
        self._store = None
        self.add_endpoint("/v1/reason", self.reason, ["POST"])
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/traces", self.list_traces, ["GET"])
        self.add_endpoint("/v1/traces/{trace_id}", self.get_trace, ["GET"])
        self.add_endpoint("/v1/traces/{trace_id}/events", self.trace_events, ["GET"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/metrics", self.metrics, ["GET"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_store"] = None  # SQLite connections never cross a process boundary
        return state

    @property
    def stream(self) -> bool:
        return True

    def decode_request(self, request, context_kwargs=None):  # the worker's LitAPI decodes
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # -- helpers ------------------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from srl_sdk.store import TraceStore

            self._store = TraceStore(self.config.store)
        return self._store

    def store_ok(self) -> bool:
        try:
            self.store.count()
            return True
        except Exception:
            return False

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        """Read at most max_body_bytes, parse JSON, validate: 413 / 400 / 422 with a JSON error."""
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"the body is {declared} bytes; this server accepts {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes; send a shorter problem")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc}); send a JSON object") from exc
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_request", "the body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise ApiError(422, "invalid_request", details) from exc

    def _submit(self, job: dict) -> tuple[str, deque, asyncio.Event]:
        uid = str(uuid.uuid4())
        queue: deque = deque()
        ready = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=ready, response_queue=queue)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        return uid, queue, ready

    async def _events(self, job: dict) -> AsyncIterator[dict]:
        """The worker's events for one job; LitServe-level failures become an `error` event."""
        uid, queue, ready = self._submit(job)
        try:
            async for data, status in self.data_streamer(queue, ready, send_status=True):
                if status == LitAPIStatus.ERROR:
                    yield _litserve_error(job["trace_id"], data)
                    return
                yield json.loads(data)
        finally:
            self.response_buffer.pop(uid, None)

    def _cancel(self, trace_id: str) -> None:
        metrics.STREAMS_CANCELLED.inc()
        try:
            self.cancel_flags[trace_id] = True
        except (OSError, EOFError, ConnectionError):
            pass

    async def _relay(self, job: dict, render) -> AsyncIterator[str]:
        """Run `job`, render each event; if the client leaves first, cancel the run."""
        finished = False
        metrics.ACTIVE_STREAMS.inc()
        try:
            async for event in self._events(job):
                metrics.observe(event)
                for text in render(event):
                    yield text
                if event["type"] in ("done", "error"):
                    finished = True
        finally:
            metrics.ACTIVE_STREAMS.dec()
            if not finished:
                self._cancel(job["trace_id"])

    async def _collect(self, job: dict, request: Request) -> tuple[dict, list[dict]]:
        """Wait for the whole run (stream=false); a client that hangs up meanwhile cancels it."""
        task = asyncio.ensure_future(self._collect_events(job))
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                self._cancel(job["trace_id"])
                raise ApiError(499, "client_closed_request", "the client closed the connection; the run was cancelled")

    async def _collect_events(self, job: dict) -> tuple[dict, list[dict]]:
        tokens: list[dict] = []
        async for event in self._events(job):
            metrics.observe(event)
            if event["type"] == "token":
                tokens.append(event)
            elif event["type"] == "done":
                return event["trace"], tokens
            elif event["type"] == "error":
                err = event["error"]
                raise ApiError(int(err.get("status", 500)), err["type"],
                               f"{err['message']} (trace {job['trace_id']} records what was produced)")
        raise ApiError(500, "internal_error", "the worker ended without a result; see the server log")

    # -- POST /v1/reason ----------------------------------------------------------------------
    async def reason(self, request: Request) -> Response:
        last_id = request.headers.get("last-event-id")
        if last_id:
            return await self._resume(last_id)
        try:
            body = await self._body(request, ReasonRequest)
            job = reason_job(self.config, body, "/v1/reason", new_trace_id())
        except ApiError as exc:
            metrics.REJECTED.labels(str(exc.status)).inc()
            return error_response(exc)
        metrics.REQUESTS.labels("/v1/reason").inc()
        trace_id = job["trace_id"]
        if not body.stream:
            try:
                trace, _ = await self._collect(job, request)
            except ApiError as exc:
                return error_response(exc)
            return JSONResponse(trace)

        def render(event: dict) -> list[str]:
            kind = event["type"]
            data = {"step": event.get("step"), "done": event.get("trace"), "error": event.get("error")}.get(kind)
            if kind == "token":
                data = {k: event[k] for k in ("step_index", "phase", "text", "logprob")}
            return [sse.frame(kind, data, sse.event_id(trace_id, event))]

        return StreamingResponse(self._relay(job, render), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- resume -------------------------------------------------------------------------------
    async def trace_events(self, trace_id: str, request: Request) -> Response:
        last_id = request.headers.get("last-event-id") or f"{trace_id}:0"
        return await self._resume(last_id, expected=trace_id)

    async def _resume(self, last_id: str, expected: str | None = None) -> Response:
        """Replay stored steps after `last_id`, following a run still in progress, then `done`."""
        from srl_sdk.errors import TraceNotFoundError

        try:
            trace_id, after = sse.parse_event_id(last_id)
        except ValueError as exc:
            return error_response(ApiError(400, "invalid_last_event_id", str(exc)))
        if expected is not None and trace_id != expected:
            return error_response(ApiError(400, "invalid_last_event_id",
                                           f"Last-Event-ID names trace {trace_id}, not {expected}"))
        try:
            await asyncio.to_thread(self.store.get, trace_id)
        except TraceNotFoundError as exc:
            return error_response(ApiError(404, "trace_not_found", str(exc)))
        deadline = time.monotonic() + self.config.limits.max_timeout_s

        async def replay() -> AsyncIterator[str]:
            if after is None:  # the client already has `done`
                return
            sent = after
            while True:
                trace = await asyncio.to_thread(self.store.get, trace_id)
                for step in trace.steps:
                    if step.index > sent and step.source == "model":
                        sent = step.index
                        yield sse.frame("step", step.model_dump(mode="json"), f"{trace_id}:{step.index}")
                if trace.finish_reason is not None:
                    if trace.finish_reason == "error":
                        err = dict(trace.meta.get("error") or {"type": "EngineError", "message": "the run failed"})
                        err.setdefault("status", 500)
                        yield sse.frame("error", err, f"{trace_id}:{sse.END}")
                    else:
                        yield sse.frame("done", trace.model_dump(mode="json"), f"{trace_id}:{sse.END}")
                    return
                if time.monotonic() > deadline:
                    yield sse.frame("error", {"type": "timeout", "message": "the run did not finish in time",
                                              "status": 504}, f"{trace_id}:{sse.END}")
                    return
                await asyncio.sleep(RESUME_POLL_S)

        return StreamingResponse(replay(), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- POST /v1/chat/completions ------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        try:
            body = await self._body(request, ChatCompletionRequest)
            job = chat_job(self.config, body, "/v1/chat/completions", new_trace_id())
        except ApiError as exc:
            metrics.REJECTED.labels(str(exc.status)).inc()
            return error_response(exc)
        metrics.REQUESTS.labels("/v1/chat/completions").inc()
        model = self.config.model_name
        if not body.stream:
            job["tokens"] = body.logprobs
            try:
                trace, tokens = await self._collect(job, request)
            except ApiError as exc:
                return error_response(exc)
            return JSONResponse(openai_compat.completion(trace, model, tokens, body.logprobs))

        writer = openai_compat.ChunkWriter(job["trace_id"], model, job["config"]["mode"], body.logprobs)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        started = [False]

        def data(obj: Any) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

        def render(event: dict) -> list[str]:
            out = []
            if not started[0]:
                started[0] = True
                out.append(data(writer.first()))
            kind = event["type"]
            if kind in ("token", "step"):
                chunk = writer.token(event) if kind == "token" else writer.step(event)
                if chunk is not None:
                    out.append(data(chunk))
            elif kind == "done":
                out.append(data(writer.last(event["trace"], include_usage)))
                out.append("data: [DONE]\n\n")
            elif kind == "error":
                err = event["error"]
                out.append("event: error\n" + data(openai_compat.error_chunk(err["type"], err["message"],
                                                                             int(err.get("status", 500)))))
                out.append("data: [DONE]\n\n")
            return out

        return StreamingResponse(self._relay(job, render), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- GET routes ---------------------------------------------------------------------------
    async def get_trace(self, trace_id: str) -> Response:
        from srl_sdk.errors import TraceNotFoundError

        try:
            trace = await asyncio.to_thread(self.store.get, trace_id)
        except TraceNotFoundError as exc:
            return error_response(ApiError(404, "trace_not_found", str(exc)))
        return JSONResponse(trace.model_dump(mode="json"))

    async def list_traces(self, limit: int = 50, offset: int = 0) -> Response:
        if not 1 <= limit <= 1000 or offset < 0:
            return error_response(ApiError(422, "invalid_request", "limit must be 1..1000 and offset >= 0"))
        rows = await asyncio.to_thread(self.store.list, limit, offset)
        return JSONResponse({"object": "list", "data": [r.model_dump(mode="json") for r in rows],
                             "limit": limit, "offset": offset})

    async def models(self) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": self.config.model_name, "object": "model", "created": 0, "owned_by": "srl-sdk",
            "engine": self.config.engine, "source": self.config.model,
        }]})

    async def metrics(self) -> Response:
        body, content_type = metrics.render(self.engine_gauges)
        return Response(body, media_type=content_type)


def _litserve_error(trace_id: str, data: Any) -> dict:
    """LitServe's ERROR status carries an HTTPException (queue timeout) or a pickled exception.

    The pickled one is not unpickled: this SDK loads no pickles (tests/test_security.py). The worker
    turns every failure inside a run into an `error` event itself, so a pickled exception only
    comes from LitServe's own machinery, and its log has the details."""
    if isinstance(data, bytes):
        data = None
    status = int(getattr(data, "status_code", 500) or 500)
    message = str(getattr(data, "detail", None) or data or "the inference worker failed; see the server log")
    kind = "queue_timeout" if status == 504 else type(data).__name__ if data is not None else "worker_error"
    return {"type": "error", "trace_id": trace_id, "error": {"type": kind, "message": message, "status": status}}

"""The HTTP side: a LitSpec that registers every route and relays worker events to clients.

LitServe's own streaming sends untyped NDJSON and its OpenAISpec drops reasoning deltas,
logprobs and `finish_reason="length"`, so this spec registers its own endpoints. Requests are
validated here (a bad body never reaches a worker), then enqueued to the inference workers the
way LitServe's specs do (`request_queue`, `response_buffer`, `data_streamer`, `response_queue_id`:
semi-internal attributes of litserve 0.2.19, which is why the version is pinned and tested).

Runs, admission and resume (runs.py): a request is admitted into a bounded queue (429 when it is
full, 504 after queue_timeout_s) and becomes a `Run` whose pump reads the worker's events to the
end whoever listens. A client that goes away (Starlette cancels its StreamingResponse) leaves
the run; an /v1/reason stream is then kept going for resume_grace_s so the client can come back
with `Last-Event-ID` and receive every later step once; after that, or at once for streams that
cannot be resumed, the run is cancelled through the shared dict and the worker stops the engine.

A dead worker (lifecycle.py): a thread here watches the workers' pids; once one has died, /health
answers 503, new runs 503, and every run in flight ends with an `error` event of type
`interrupted`, its trace closed with that finish_reason. The main process then stops the server.
Every route gets `LitAPI.authorize` as a dependency from LitServe itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
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
from srl_sdk.errors import StoreError
from srl_sdk.serving import metrics, openai_compat, sse
from srl_sdk.serving.auth import trace_owner, trace_reader
from srl_sdk.serving.boundary import is_json_content_type, parse_json, public_error, server_paths
from srl_sdk.serving.config import ServerConfig
from srl_sdk.serving.lifecycle import INTERRUPTED_FLAG, WATCH_PERIOD_S, process_alive
from srl_sdk.serving.replicas import follow_stored, run_bound, stranded_before
from srl_sdk.serving.runs import RETRY_AFTER_S, Admission, Run
from srl_sdk.serving.schemas import ErrorReply, ChatCompletionRequest, ReasonRequest, chat_job, reason_job

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TRACE_ID_HEADER = "X-SRL-Trace-Id"  # sent before the first event: a client cut off even then can resume
DISCONNECT_POLL_S = 0.5
INTERRUPTED = ("an inference worker of the server stopped during this run; the server is restarting. The "
               "steps produced before are kept in the trace; run the request again")
logger = logging.getLogger("srl_sdk.serving")
MAX_TRACE_OFFSET = 10**9  # beyond SQLite's integers 1e23 was a 500; no store is this large anyway
STORAGE_OFF = ErrorReply(404, "storage_disabled", "this server keeps no traces (store: false in its config)")


def error_response(exc: ErrorReply) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def rejected(exc: ErrorReply) -> JSONResponse:
    """A request refused before it reached a worker: counted, then answered."""
    metrics.REJECTED.labels(str(exc.status)).inc()
    return error_response(exc)


class StepSpec(LitSpec):
    def __init__(self, config: ServerConfig, cancel_flags: Any, engine_gauges: Any = None) -> None:
        super().__init__()
        self.api_path = "/v1/reason"
        self.config = config
        self.cancel_flags = cancel_flags
        self.engine_gauges = engine_gauges
        self._store = None
        self._runs: dict[str, Run] = {}  # API process: the runs in flight, by trace id
        self._admission: Admission | None = None
        self._failure: str | None = None  # set once an inference worker has died
        self._watching = False
        self.add_endpoint("/v1/reason", self.reason, ["POST"])
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/traces", self.list_traces, ["GET"])
        self.add_endpoint("/v1/traces/{trace_id}", self.get_trace, ["GET"])
        self.add_endpoint("/v1/traces/{trace_id}/events", self.trace_events, ["GET"])
        self.add_endpoint("/v1/traces/{trace_id}/cancel", self.cancel_run, ["POST"])
        self.add_endpoint("/v1/traces/{trace_id}/compare", self.compare, ["POST"])  # serving/ui.py
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/metrics", self.metrics, ["GET"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_store"] = None  # SQLite connections never cross a process boundary
        state["_runs"], state["_admission"], state["_watching"] = {}, None, False  # API-process state
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
            self._store = self.config.trace_store()
        return self._store

    def _owner(self, request: Request) -> str | None:
        """Who the traces of this request belong to (a hash of its key; None without keys)."""
        return trace_owner(self.config.keys, request.headers.get("authorization"))

    def _reader(self, request: Request) -> str | None:
        """Whose traces this request may read (None: every trace, for admin keys or no keys)."""
        return trace_reader(self.config.keys, self.config.admin_keys, request.headers.get("authorization"))

    def _store_failed(self, exc: StoreError) -> JSONResponse:
        _, message = public_error(exc, server_paths(self.config))
        return error_response(ErrorReply(503, "StoreError", message))

    # -- health, from memory ------------------------------------------------------------------
    def healthy(self) -> bool:
        """/health's answer, with no store or engine call on the event loop: False once an
        inference worker has died (the server is failing its runs and is about to exit)."""
        self._watch_workers()
        return self._failure is None

    def _watch_workers(self) -> None:
        """In the API process, once: a thread that watches the inference workers' pids."""
        if self._watching:
            return
        self._watching = True
        server = getattr(self, "_server", None)  # LitServe sets it; the forked API process has the workers
        pids = [p.pid for p in (getattr(server, "inference_workers", None) or []) if p.pid]
        if pids:
            threading.Thread(target=self._watch, args=(pids,), name="srl-worker-watch", daemon=True).start()

    def _watch(self, pids: list[int]) -> None:
        while self._failure is None:
            for pid in pids:
                if not process_alive(pid):
                    logger.error("inference worker %d exited; failing the runs in flight", pid)
                    self._failure = f"inference worker {pid} exited"
                    return
            time.sleep(WATCH_PERIOD_S)

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        """Check the media type, read at most max_body_bytes, parse JSON, validate: 415 / 413 / 400 /
        422 with a JSON error. JSON only: a text/plain or form POST is what a web page can make a
        browser send to 127.0.0.1 without a CORS preflight (see boundary.py)."""
        content_type = request.headers.get("content-type")
        if not is_json_content_type(content_type):
            raise ErrorReply(415, "unsupported_media_type", "the body must be JSON sent with 'Content-Type: "
                           f"application/json', not {(content_type or 'no Content-Type')[:100]!r}")
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ErrorReply(413, "payload_too_large", f"the body is {declared} bytes; this server accepts {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ErrorReply(413, "payload_too_large", f"the body is over {limit} bytes; send a shorter problem")
            chunks.append(chunk)
        data = parse_json(b"".join(chunks))
        if not isinstance(data, dict):
            raise ErrorReply(422, "invalid_request", "the body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise ErrorReply(422, "invalid_request", details) from exc

    # -- runs ---------------------------------------------------------------------------------
    @property
    def admission(self) -> Admission:
        if self._admission is None:
            server = getattr(self, "_server", None)
            workers = len(getattr(server, "inference_workers", None) or []) or 1
            limits = self.config.limits
            self._admission = Admission(workers * limits.streams_per_worker, limits.max_queued, limits.queue_timeout_s)
        return self._admission

    async def _start(self, job: dict, resumable: bool, received: float) -> Run:
        """Admit `job` (ErrorReply 503 / 429 / 504 if not) and start reading its events.

        `received` is when the request arrived: the run's timeout_s counts from then."""
        self._watch_workers()
        if self._failure is not None:
            raise ErrorReply(503, "server_unavailable", "an inference worker stopped and the server is restarting; "
                           "retry in a few seconds", headers={"Retry-After": str(RETRY_AFTER_S)})
        timeout_s = float(job["config"].get("timeout_s") or self.config.limits.max_timeout_s)
        await self.admission.enter(timeout_s - (time.monotonic() - received))
        job["received"] = received
        trace_id = job["trace_id"]
        run = Run(job, resumable, self.config.limits.resume_grace_s, lambda: self._cancel(trace_id))
        self._runs[trace_id] = run
        run.task = asyncio.get_running_loop().create_task(self._pump(run), name=f"srl-run-{trace_id}")
        return run

    async def _pump(self, run: Run) -> None:
        """Send the job to the workers and read its events to the last one, whoever listens; then
        free its admission slot. LitServe-level failures and a dead worker become `error` events."""
        uid = str(uuid.uuid4())
        inbox: deque = deque()
        ready = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=ready, response_queue=inbox)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), run.job))
            while run.final is None:
                while inbox and run.final is None:
                    data, status = inbox.popleft()
                    if status == LitAPIStatus.ERROR:
                        event = _litserve_error(run.trace_id, data)
                    elif status == LitAPIStatus.FINISH_STREAMING:
                        event = _error_event(run.trace_id, "worker_error", 500,
                                             "the worker ended the run without a result; see the server log")
                    else:
                        event = json.loads(data)
                    metrics.observe(event)
                    run.deliver(event)
                if run.final is not None:
                    break
                ready.clear()
                if self._failure is not None:
                    await self._interrupt(run)
                    break
                try:
                    await asyncio.wait_for(ready.wait(), WATCH_PERIOD_S)
                except asyncio.TimeoutError:
                    pass
        except Exception:  # a bug here must still end the run for its listeners and free the slot
            logger.exception("relaying run %s failed", run.trace_id)
            if run.final is None:
                run.deliver(_error_event(run.trace_id, "internal_error", 500, "the server failed relaying this run"))
        finally:
            self.response_buffer.pop(uid, None)
            if self._runs.get(run.trace_id) is run:
                del self._runs[run.trace_id]
            self.admission.leave()

    async def _interrupt(self, run: Run) -> None:
        """A worker died: close the trace as `interrupted`, then tell the listeners. A live worker
        running it (several workers) is told to stop and record the same (worker.py)."""
        try:
            self.cancel_flags[run.trace_id] = INTERRUPTED_FLAG
        except (OSError, EOFError, ConnectionError):
            pass
        try:
            await asyncio.to_thread(self.store.close_unfinished, "interrupted", INTERRUPTED, [run.trace_id])
        except StoreError:
            logger.exception("could not close trace %s as interrupted", run.trace_id)
        event = _error_event(run.trace_id, "interrupted", 503, INTERRUPTED)
        metrics.observe(event)
        run.deliver(event)

    def _cancel(self, trace_id: str) -> None:
        metrics.STREAMS_CANCELLED.inc()
        try:
            self.cancel_flags[trace_id] = True
        except (OSError, EOFError, ConnectionError):
            pass

    def _follow(self, run: Run, inbox: asyncio.Queue, render, headers: dict[str, str]) -> StreamingResponse:
        """An SSE response of one listener's events to the end. A client that leaves first leaves
        the run (Run.leave cancels it, at once or after the grace period)."""

        async def frames() -> AsyncIterator[str]:
            while True:
                event = await inbox.get()
                for text in render(event):
                    yield text
                if event["type"] in ("done", "error"):
                    return

        def closed() -> None:
            metrics.ACTIVE_STREAMS.dec()
            run.leave(inbox)

        metrics.ACTIVE_STREAMS.inc()
        return _ListenerResponse(frames(), closed, media_type="text/event-stream", headers=headers)

    async def _collect(self, run: Run, request: Request) -> tuple[dict, list[dict]]:
        """Wait for the whole run (stream=false); a client that hangs up meanwhile cancels it."""
        inbox = run.listen(tokens=True)
        tokens: list[dict] = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(inbox.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise ErrorReply(499, "client_closed_request",
                                       "the client closed the connection; the run was cancelled") from None
                    continue
                if event["type"] == "token":
                    tokens.append(event)
                elif event["type"] == "done":
                    return event["trace"], tokens
                elif event["type"] == "error":
                    err = event["error"]
                    raise ErrorReply(int(err.get("status", 500)), err["type"],
                                   f"{err['message']} (trace {run.trace_id} records what was produced)")
        finally:
            run.leave(inbox)

    # -- POST /v1/reason ----------------------------------------------------------------------
    async def reason(self, request: Request) -> Response:
        received = time.monotonic()
        last_id = request.headers.get("last-event-id")
        if last_id:
            return await self._resume(last_id, reader=self._reader(request))
        try:
            body = await self._body(request, ReasonRequest)
            job = reason_job(self.config, body, "/v1/reason", new_trace_id())
        except ErrorReply as exc:
            return rejected(exc)
        job["owner"] = self._owner(request)
        try:
            run = await self._start(job, resumable=body.stream, received=received)
        except ErrorReply as exc:
            return rejected(exc)
        metrics.REQUESTS.labels("/v1/reason").inc()
        if not body.stream:
            try:
                trace, _ = await self._collect(run, request)
            except ErrorReply as exc:
                return error_response(exc)
            return JSONResponse(trace)
        inbox = run.listen(tokens=bool(job["tokens"]))
        return self._follow(run, inbox, reason_frames(run.trace_id), {**SSE_HEADERS, TRACE_ID_HEADER: run.trace_id})

    # -- resume -------------------------------------------------------------------------------
    async def trace_events(self, trace_id: str, request: Request) -> Response:
        last_id = request.headers.get("last-event-id") or f"{trace_id}:0"
        return await self._resume(last_id, expected=trace_id, reader=self._reader(request))

    async def _resume(self, last_id: str, expected: str | None = None, reader: str | None = None) -> Response:
        """Every step after `last_id`, then the end event: a run still in progress is joined live
        (first the steps the client missed, then each new one, exactly once); a finished run is
        replayed from the store. Only the key that made the trace (or an admin key) may resume it."""
        from srl_sdk.errors import TraceNotFoundError

        try:
            trace_id, after = sse.parse_event_id(last_id)
        except ValueError as exc:
            return error_response(ErrorReply(400, "invalid_last_event_id", str(exc)))
        if expected is not None and trace_id != expected:
            return error_response(ErrorReply(400, "invalid_last_event_id",
                                           f"Last-Event-ID names trace {trace_id}, not {expected}"))
        headers = {**SSE_HEADERS, TRACE_ID_HEADER: trace_id}
        run = self._runs.get(trace_id)
        if run is not None and run.final is None and (reader is None or run.job.get("owner") == reader):
            if after is None:  # the client already has the end event
                return StreamingResponse(_no_frames(), media_type="text/event-stream", headers=headers)
            inbox = run.listen(tokens=False, after=after)
            return self._follow(run, inbox, reason_frames(trace_id), headers)
        if self.config.store is False:
            return error_response(STORAGE_OFF)
        try:
            trace = await asyncio.to_thread(self.store.get, trace_id, reader)
            if trace.finish_reason is None and after is not None and self._another_replica_may_run(trace):
                return StreamingResponse(follow_stored(self.store, trace, reader, after, run_bound(self.config),
                                                      _end_frame, INTERRUPTED),
                                         media_type="text/event-stream", headers=headers)
            if trace.finish_reason is None:  # no run here will finish it: a server stopped during it
                await asyncio.to_thread(self.store.close_unfinished, "interrupted", INTERRUPTED, [trace_id])
                trace = await asyncio.to_thread(self.store.get, trace_id, reader)
        except TraceNotFoundError as exc:
            return error_response(ErrorReply(404, "trace_not_found", str(exc)))
        except StoreError as exc:
            return self._store_failed(exc)
        frames: list[str] = []
        if after is not None:
            for step in trace.steps:
                if step.index > after and step.source == "model":
                    frames.append(sse.frame("step", step.model_dump(mode="json"), f"{trace_id}:{step.index}"))
            frames.append(_end_frame(trace))
        return StreamingResponse(_frames(frames), media_type="text/event-stream", headers=headers)

    def _another_replica_may_run(self, trace: Any) -> bool:
        """With a store shared by replicas, a young unfinished trace may be another server's live run."""
        before = stranded_before(self.config, self.store)
        return before is not None and trace.created_at >= before

    async def cancel_run(self, trace_id: str, request: Request) -> Response:
        """Cancel a run in progress now: what a client that stops reading on purpose sends (a lost
        connection instead keeps the run going for resume_grace_s). 404 if no such run is going."""
        run = self._runs.get(trace_id)
        reader = self._reader(request)
        if run is None or run.final is not None or (reader is not None and run.job.get("owner") != reader):
            return error_response(ErrorReply(404, "run_not_found", f"no run in progress has trace id {trace_id!r}"))
        run.cancel_now()
        return JSONResponse({"id": trace_id, "object": "trace.cancellation", "cancelled": True}, status_code=202)

    # -- POST /v1/chat/completions ------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        received = time.monotonic()
        try:
            body = await self._body(request, ChatCompletionRequest)
            job = chat_job(self.config, body, "/v1/chat/completions", new_trace_id())
        except ErrorReply as exc:
            return rejected(exc)
        job["owner"] = self._owner(request)
        if not body.stream:
            job["tokens"] = body.logprobs
        try:  # an OpenAI stream has no event ids, so it cannot be resumed: leaving cancels it at once
            run = await self._start(job, resumable=False, received=received)
        except ErrorReply as exc:
            return rejected(exc)
        metrics.REQUESTS.labels("/v1/chat/completions").inc()
        model = self.config.model_name
        if not body.stream:
            try:
                trace, tokens = await self._collect(run, request)
            except ErrorReply as exc:
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

        inbox = run.listen(tokens=True)
        return self._follow(run, inbox, render, SSE_HEADERS)

    # -- GET routes ---------------------------------------------------------------------------
    async def _stored_trace(self, trace_id: str, request: Request) -> Any:
        """The stored trace if the request's key made it (or is an admin key), else the error
        Response to send: 404 as if absent, storage off, or the store failing."""
        from srl_sdk.errors import TraceNotFoundError

        if self.config.store is False:
            return error_response(STORAGE_OFF)
        try:
            return await asyncio.to_thread(self.store.get, trace_id, self._reader(request))
        except TraceNotFoundError as exc:
            return error_response(ErrorReply(404, "trace_not_found", str(exc)))
        except StoreError as exc:
            return self._store_failed(exc)

    async def get_trace(self, trace_id: str, request: Request) -> Response:
        """One trace, if the request's key made it (or is an admin key); else 404 as if absent."""
        found = await self._stored_trace(trace_id, request)
        return found if isinstance(found, Response) else JSONResponse(found.model_dump(mode="json"))

    async def list_traces(self, request: Request, limit: int = 50, offset: int = 0) -> Response:
        """The request's own traces, newest first (every trace for an admin key)."""
        if self.config.store is False:
            return error_response(STORAGE_OFF)
        if not 1 <= limit <= 1000 or not 0 <= offset <= MAX_TRACE_OFFSET:
            return rejected(ErrorReply(422, "invalid_request", f"limit must be 1..1000 and offset 0..{MAX_TRACE_OFFSET}"))
        try:
            rows = await asyncio.to_thread(self.store.list, limit, offset, self._reader(request))
        except StoreError as exc:
            return self._store_failed(exc)
        return JSONResponse({"object": "list", "data": [r.model_dump(mode="json") for r in rows],
                             "limit": limit, "offset": offset})

    async def compare(self, trace_id: str, request: Request) -> Response:
        """The trace against expert steps, by the SRL step similarity (serving/ui.py)."""
        from srl_sdk.errors import InputError, MissingDependencyError
        from srl_sdk.serving.ui import CompareRequest, compare_stored

        try:
            body = await self._body(request, CompareRequest)
        except ErrorReply as exc:
            return rejected(exc)
        found = await self._stored_trace(trace_id, request)
        if isinstance(found, Response):
            return found
        try:
            result = compare_stored(found, body)
        except (InputError, MissingDependencyError) as exc:  # bad steps; verifier "math" without math-verify
            return rejected(ErrorReply(422, "invalid_request", str(exc)))
        return JSONResponse(result.model_dump(mode="json"))

    async def models(self) -> Response:
        """The served model by name only: where its file lives is the server's business."""
        return JSONResponse({"object": "list", "data": [{
            "id": self.config.model_name, "object": "model", "created": 0, "owned_by": "srl-sdk",
            "engine": self.config.engine,
        }]})

    async def metrics(self) -> Response:
        body, content_type = metrics.render(self.engine_gauges)
        return Response(body, media_type=content_type)


class _ListenerResponse(StreamingResponse):
    """A StreamingResponse that reports its end however it ends (finished, failed, client gone).

    When the client disconnects Starlette cancels the task that sends the body; if that happens
    while the body generator is suspended at a `yield` (a send under way, a slow reader), the
    generator's own `finally` would run only whenever it is garbage-collected, and the run would
    not learn in time that its listener left. The response's own call always ends here."""

    def __init__(self, content: AsyncIterator[str], on_close, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def reason_frames(trace_id: str):
    """How /v1/reason renders a worker event: one SSE message whose id makes the stream resumable."""

    def render(event: dict) -> list[str]:
        kind = event["type"]
        data = {"step": event.get("step"), "done": event.get("trace"), "error": event.get("error")}.get(kind)
        if kind == "token":
            data = {k: event[k] for k in ("step_index", "phase", "text", "logprob")}
        return [sse.frame(kind, data, sse.event_id(trace_id, event))]

    return render


def _end_frame(trace: Any) -> str:
    """The stored trace's end event: `done`, or `error` for a run that failed or was interrupted."""
    end = f"{trace.id}:{sse.END}"
    if trace.finish_reason in ("error", "interrupted"):
        err = dict(trace.meta.get("error") or {})
        err.setdefault("type", "interrupted" if trace.finish_reason == "interrupted" else "EngineError")
        err.setdefault("message", INTERRUPTED if trace.finish_reason == "interrupted" else "the run failed")
        err.setdefault("status", 503 if trace.finish_reason == "interrupted" else 500)
        return sse.frame("error", err, end)
    return sse.frame("done", trace.model_dump(mode="json"), end)


async def _frames(frames: list[str]) -> AsyncIterator[str]:
    for text in frames:
        yield text


async def _no_frames() -> AsyncIterator[str]:
    return
    yield  # an async generator that sends nothing


def _error_event(trace_id: str, kind: str, status: int, message: str) -> dict:
    return {"type": "error", "trace_id": trace_id, "error": {"type": kind, "message": message, "status": status}}


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

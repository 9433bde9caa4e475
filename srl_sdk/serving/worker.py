"""The inference side of the server: a LitAPI whose worker process owns one engine and the store.

Each job (a validated request, see schemas.py) is driven by `Driver.events` and turned into plain
dict events (`token`, `step`, `done`, `error`) that LitServe pickles back to the API process,
where spec.py frames them as SSE or OpenAI chunks.

Why the worker, not the API process, writes the trace store: when a client disconnects the API
process stops listening, but the run still has to end and be recorded (as `cancelled`). The
store holds the partial trace after every step, so `Last-Event-ID` resume can replay it.

Concurrency: `enable_async=True` lets one worker interleave several streams. Driver calls run on
a private thread pool; an engine that serves one sequence at a time (llama.cpp) makes them take
turns phase by phase. The number of streams a worker runs at once is bounded by a semaphore
smaller than the pool, so a stream holding the engine always has a thread to continue on.

Engine load: a batching engine's gauges (vLLM's running/waiting requests) are copied every
GAUGE_PERIOD_S into a second Manager dict, keyed by worker pid, which /metrics in the API process
reads; engines that serve one sequence at a time publish nothing.

Cancellation: the API process marks a trace id in a Manager dict when its client leaves; a
watcher here polls it and sets the run's `threading.Event`, which the engine checks per token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

import litserve as ls
from fastapi import Header, Request

from srl_sdk.core.steps import Step, Trace
from srl_sdk.errors import StoreError
from srl_sdk.reasoning.driver import Driver, Finished, ReasonConfig, TokenDelta, given_steps_to_steps
from srl_sdk.serving.auth import check_bearer
from srl_sdk.serving.config import ServerConfig
from srl_sdk.serving.spec import StepSpec

_END = object()
CANCEL_POLL_S = 0.1
GAUGE_PERIOD_S = 0.5


def error_status(exc: BaseException) -> int:
    """The HTTP status an error inside a run stands for (for non-streamed answers and clients)."""
    from srl_sdk.errors import InputError

    if isinstance(exc, StoreError):
        return 503  # the server cannot record runs right now (read-only or full disk); retry later
    return 400 if isinstance(exc, InputError) else 500


class StepAPI(ls.LitAPI):
    def __init__(self, config: ServerConfig, cancel_flags: Any, engine_gauges: Any = None) -> None:
        super().__init__(api_path="/v1/reason", spec=StepSpec(config, cancel_flags, engine_gauges),
                         enable_async=True)
        self.config = config
        self.cancel_flags = cancel_flags
        self.engine_gauges = engine_gauges
        self.engine = None
        self.store = None

    # -- worker lifecycle ---------------------------------------------------------------------
    def setup(self, device: str) -> None:
        from srl_sdk.engines import load_engine
        from srl_sdk.store import TraceStore

        self.engine = load_engine(self.config.model, self.config.engine, **self.config.engine_options)
        _close_engine_on_sigterm(self.engine)
        self.store = TraceStore(self.config.store)
        size = self.config.limits.streams_per_worker
        self._pool = ThreadPoolExecutor(max_workers=size + 2, thread_name_prefix="srl-driver")
        self._slots = asyncio.Semaphore(size)
        if self.engine_gauges is not None and self.engine.gauges():
            threading.Thread(target=self._publish_gauges, name="srl-gauges", daemon=True).start()

    def _publish_gauges(self) -> None:
        """Copy the engine's gauges to the API process until the manager goes away (server stopping)."""
        key = str(_pid())
        while True:
            try:
                self.engine_gauges[key] = self.engine.gauges()
            except Exception:  # the manager is gone (server stopping) or the engine is closing
                return
            time.sleep(GAUGE_PERIOD_S)

    def authorize(self, request: Request, authorization: str | None = Header(default=None)) -> None:
        """`Authorization: Bearer <key>` on every route but /health (LitServe uses this as a dependency)."""
        check_bearer(self.config.api_keys, request.url.path, authorization)

    async def decode_request(self, request: dict, **kwargs: Any) -> dict:
        return request

    async def encode_response(self, output: AsyncIterator[dict], **kwargs: Any) -> AsyncIterator[dict]:
        async for event in output:
            yield event

    async def predict(self, job: dict) -> AsyncIterator[dict]:
        async with self._slots:
            async for event in self._run(job):
                yield event

    # -- one run ------------------------------------------------------------------------------
    async def _run(self, job: dict) -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        trace_id: str = job["trace_id"]
        config = ReasonConfig.model_validate(job["config"])
        cancel = threading.Event()
        if self._is_cancelled(trace_id):
            cancel.set()
        given = given_steps_to_steps(job["steps"], config.checks)
        partial = Trace(
            id=trace_id,
            problem=job["problem"],
            mode=config.mode,
            model=self.engine.model_id,
            engine=self.engine.name,
            request={"config": config.model_dump(), "given_steps": len(given), **job["request"]},
            steps=given,
        )
        partial.meta["server"] = {"model": self.config.model_name, "worker_pid": _pid()}
        events = Driver(self.engine, config).events(job["problem"], job["steps"], cancel=cancel, trace_id=trace_id)
        watcher = asyncio.create_task(self._watch(trace_id, cancel))
        try:
            self.store.save(partial)  # inside the try: a store that cannot be written ends in an error event
            while True:
                event = await loop.run_in_executor(self._pool, next, events, _END)
                if event is _END:
                    break
                if isinstance(event, TokenDelta):
                    if job["tokens"]:
                        yield {"type": "token", "step_index": event.step_index, "phase": event.phase,
                               "text": event.text, "logprob": event.logprob}
                elif isinstance(event, Step):
                    partial.steps.append(event)
                    self.store.save(partial)
                    yield {"type": "step", "step": event.model_dump(mode="json")}
                elif isinstance(event, Finished):
                    trace = event.trace
                    trace.request.update(job["request"])
                    trace.meta.update(partial.meta)
                    self.store.save(trace)
                    yield {"type": "done", "trace": trace.model_dump(mode="json")}
        except Exception as exc:  # an engine or store failure ends the stream with an error event, recorded
            partial.finish_reason = "error"
            partial.meta["error"] = {"type": type(exc).__name__, "message": str(exc)}
            try:
                self.store.save(partial)
            except StoreError:  # the store is what failed (read-only, disk full): the client still hears why
                pass
            yield {"type": "error", "trace_id": trace_id,
                   "error": {"type": type(exc).__name__, "message": str(exc), "status": error_status(exc)}}
        finally:
            cancel.set()
            watcher.cancel()
            await loop.run_in_executor(self._pool, events.close)
            self._forget(trace_id)

    async def _watch(self, trace_id: str, cancel: threading.Event) -> None:
        while not cancel.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
            if self._is_cancelled(trace_id):
                cancel.set()

    def _is_cancelled(self, trace_id: str) -> bool:
        try:
            return bool(self.cancel_flags.get(trace_id, False))
        except (OSError, EOFError, ConnectionError):  # the manager is gone: the server is stopping
            return True

    def _forget(self, trace_id: str) -> None:
        try:
            self.cancel_flags.pop(trace_id, None)
        except (OSError, EOFError, ConnectionError):
            pass

    def health(self) -> bool:
        """Called in the API process; LitServe already requires every worker to have loaded its model."""
        return self.spec.store_ok()


def _close_engine_on_sigterm(engine: Any) -> None:
    """LitServe stops workers with SIGTERM; an engine with its own processes (vLLM) would outlive
    the worker, so close it first. Done on a thread: closing may wait for a decoding phase to end."""
    import os
    import signal

    def close_and_exit() -> None:
        try:
            engine.close()
        finally:
            os._exit(0)

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=close_and_exit, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)


def _pid() -> int:
    import os

    return os.getpid()

"""The inference side of the server: a LitAPI whose worker process owns one engine and the store.

Each job (a validated request, see schemas.py) is driven by `Driver.events` and turned into plain
dict events (`token`, `step`, `done`, `error`) that LitServe pickles back to the API process,
where spec.py frames them as SSE or OpenAI chunks.

Why the worker, not the API process, writes the trace store: when a client disconnects the API
process stops listening, but the run still has to end and be recorded (as `cancelled`). The
store holds the partial trace after every step, so `Last-Event-ID` resume can replay it.

Concurrency: `enable_async=True` lets one worker interleave several streams. Each run's driver
runs in a thread of its own (engines.base.iterate_in_thread), at the engine's pace: it does not
wait for the event loop between tokens, and token events cross to the loop only when the client
asked for them. The llama.cpp engine decodes the runs' streams together in one batch (up to its
`n_parallel` sequences; the others wait for one, in order). A worker takes a job from the shared
queue only while it has one of its `streams_per_worker` slots free (lifecycle.GatedQueue).
Store writes (SQLite, with a 30 s busy timeout) run on threads, never on the worker's event loop.

Time: a run's `timeout_s` counts from when the API process received the request (`received`,
a CLOCK_MONOTONIC reading, the same clock in every process), so the queue wait is included.

Lifecycle (see lifecycle.py): the worker dies with the main process (PR_SET_PDEATHSIG, SIGTERM so
the engine closes), and exits by itself, status EXIT_ENGINE_DEAD, when its engine reports itself
dead (`Engine.alive()`, a crashed vLLM engine core): the server then fails its runs and stops.

Several workers (`workers: N`, LitServe's workers_per_device): each is a process with its own
engine, placed on the device LitServe hands to setup() with its own CPU threads (placement.py);
they take jobs from one shared queue, write to the one store, and are told apart by LitServe's
worker index (LITSERVE_WORKER_ID), recorded in each trace's meta.server.worker.

Per-worker figures: each worker copies its own (streams running, runs, steps, tokens, and a
batching engine's gauges such as vLLM's running/waiting requests) into a second Manager dict,
keyed by worker index, when a run starts or ends and every GAUGE_PERIOD_S; /metrics in the API
process renders them with a `worker` label (metrics.WorkerMetrics).

Cancellation: the API process marks a trace id in a Manager dict when its client leaves; a
watcher here polls it and sets the run's `threading.Event`, which the engine checks per token.
Only the worker running that trace watches its id, so a cancel reaches that worker alone. When
another worker dies, the API process fails every run in flight and marks each with
lifecycle.INTERRUPTED_FLAG: a live worker then stops the run and records it `interrupted`, as
the client was told, instead of finishing it unseen or storing it `cancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import litserve as ls
from fastapi import Header, Request

from srl_sdk.core.steps import Step, Trace
from srl_sdk.errors import SRLError, StoreError
from srl_sdk.engines.base import iterate_in_thread
from srl_sdk.reasoning.driver import Driver, DriverEvent, Finished, ReasonConfig, TokenDelta, given_steps_to_steps
from srl_sdk.serving.auth import check_bearer
from srl_sdk.serving.boundary import public_error, server_paths
from srl_sdk.serving.config import ServerConfig
from srl_sdk.serving.spec import INTERRUPTED, StepSpec

logger = logging.getLogger("srl_sdk.serving")
CANCEL_POLL_S = 0.1
GAUGE_PERIOD_S = 0.5
ENGINE_WATCH_S = 1.0
CLOSE_TIMEOUT_S = 8.0  # SIGTERM: how long the engine may take to close before the worker exits anyway
ORPHAN_CLOSE_TIMEOUT_S = 2.0  # the same when the main process is gone: nobody waits, the port must free


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
        self.engine: Any = None  # an Engine, loaded in setup() (in the worker process)
        self.store: Any = None  # a trace store, opened in setup()
        self.worker = 0  # LitServe's index of this worker, set in setup()
        self.device = "cpu"
        self._main_pid = _pid()  # built in the main process; the worker checks it is still there

    # -- worker lifecycle ---------------------------------------------------------------------
    def setup(self, device: str) -> None:
        """Load this worker's engine on the device LitServe gave it (see placement.py)."""
        import os
        import signal

        from srl_sdk.engines import load_engine
        from srl_sdk.serving.lifecycle import die_with_parent
        from srl_sdk.serving.placement import engine_name, place

        die_with_parent(self._main_pid, signal.SIGTERM)  # SIGTERM: the engine closes before the exit
        self.worker = int(os.environ.get("LITSERVE_WORKER_ID", "0"))  # LitServe sets it before setup
        placement = place(engine_name(self.config.engine, self.config.model), device,
                          self.config.engine_options, self.config.workers)
        placement.apply_env()  # before the engine imports its CUDA library
        self.device = placement.device
        self.engine = load_engine(self.config.model, self.config.engine, **placement.options)
        _close_engine_on_sigterm(self.engine, self._main_pid)
        self.store = self.config.trace_store()  # a DisabledStore with `store: false`
        self._running = 0
        self._counts = {"runs": 0, "steps": 0, "tokens": 0}
        self._changed = threading.Event()
        if self.engine_gauges is not None:
            self._publish_now()  # before the first request: /metrics lists every worker from the start
            threading.Thread(target=self._publish, name="srl-worker-metrics", daemon=True).start()
        threading.Thread(target=self._watch_engine, name="srl-engine-watch", daemon=True).start()

    def _watch_engine(self) -> None:
        """Exit this worker when its engine is dead, so the server fails its runs and stops (a
        supervisor restarts it) rather than answering every request with an engine error."""
        import os

        from srl_sdk.serving.lifecycle import EXIT_ENGINE_DEAD

        while self.engine.alive():
            time.sleep(ENGINE_WATCH_S)
        logger.error("the %s engine of worker %d is dead; the worker exits", self.engine.name, _pid())
        closing = threading.Thread(target=self.engine.close, daemon=True)
        closing.start()
        closing.join(10)
        os._exit(EXIT_ENGINE_DEAD)

    def _figures(self) -> dict[str, Any]:
        """What /metrics shows for this worker (metrics.WorkerMetrics renders it)."""
        return {"device": self.device, "slots": self.config.limits.streams_per_worker,
                "running": self._running, **self._counts, "engine": self.engine.gauges()}

    def _publish_now(self) -> None:
        self.engine_gauges[str(self.worker)] = self._figures()

    def _publish(self) -> None:
        """Copy this worker's figures to the API process when a run starts or ends, and every
        GAUGE_PERIOD_S (token counts, engine gauges), until the manager goes away (server stopping)."""
        while True:
            self._changed.wait(GAUGE_PERIOD_S)
            self._changed.clear()
            try:
                self._publish_now()
            except Exception:  # the manager is gone (server stopping) or the engine is closing
                return

    def authorize(self, request: Request, authorization: str | None = Header(default=None)) -> None:
        """`Authorization: Bearer <key>` on every route but /health (LitServe uses this as a dependency)."""
        check_bearer(self.config.keys, request.url.path, authorization)

    async def decode_request(self, request: dict, **kwargs: Any) -> dict:
        return request

    async def encode_response(self, output: AsyncIterator[dict], **kwargs: Any) -> AsyncIterator[dict]:
        async for event in output:
            yield event

    async def predict(self, job: dict) -> AsyncIterator[dict]:
        from srl_sdk.serving.lifecycle import release_slot

        self._running += 1
        self._counts["runs"] += 1
        self._changed.set()
        try:
            async for event in self._run(job):
                yield event
        finally:
            self._running -= 1
            self._changed.set()
            release_slot()  # taken when this worker took the job from the queue

    async def _save(self, trace: Trace, owner: str | None) -> None:
        await asyncio.to_thread(self.store.save, trace, owner=owner)

    # -- one run ------------------------------------------------------------------------------
    async def _run(self, job: dict) -> AsyncIterator[dict]:
        trace_id: str = job["trace_id"]
        config = ReasonConfig.model_validate(job["config"])
        run_config = config
        if config.timeout_s and job.get("received") is not None:  # the queue wait counts
            left = config.timeout_s - (time.monotonic() - float(job["received"]))
            run_config = config.model_copy(update={"timeout_s": max(left, 0.001)})
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
        # which worker ran it (LitServe's index, as in /metrics); no pid or path: traces are served to clients
        partial.meta["server"] = {"model": self.config.model_name, "worker": self.worker}
        events = self._events(Driver(self.engine, run_config), job, cancel)
        watcher = asyncio.create_task(self._watch(trace_id, cancel))
        try:
            await self._save(partial, job.get("owner"))  # in the try: a store that cannot be written ends in an error event
            async for event in events:
                if isinstance(event, TokenDelta):
                    yield {"type": "token", "step_index": event.step_index, "phase": event.phase,
                           "text": event.text, "logprob": event.logprob}
                elif isinstance(event, Step):
                    self._counts["steps"] += 1
                    partial.steps.append(event)
                    await self._save(partial, job.get("owner"))
                    yield {"type": "step", "step": event.model_dump(mode="json")}
                elif isinstance(event, Finished):
                    trace = event.trace
                    if trace.finish_reason == "cancelled" and self._interrupted(trace_id):
                        _record_interrupted(trace)
                    trace.request["config"] = config.model_dump()  # as asked, not the time left after the queue
                    trace.request.update(job["request"])
                    trace.meta.update(partial.meta)
                    await self._save(trace, job.get("owner"))
                    yield {"type": "done", "trace": trace.model_dump(mode="json")}
        except Exception as exc:  # an engine or store failure ends the stream with an error event, recorded
            kind, message = public_error(exc, server_paths(self.config))  # the log keeps the full text
            logger.error("run %s failed: %s: %s", trace_id, type(exc).__name__, exc, exc_info=not isinstance(exc, SRLError))
            partial.finish_reason = "error"
            partial.meta["error"] = {"type": kind, "message": message}
            if self._interrupted(trace_id):  # the server is failing this run anyway (another worker died)
                _record_interrupted(partial)
            try:
                await self._save(partial, job.get("owner"))
            except StoreError:  # the store is what failed (read-only, disk full): the client still hears why
                pass
            yield {"type": "error", "trace_id": trace_id,
                   "error": {"type": kind, "message": message, "status": error_status(exc)}}
        finally:
            cancel.set()
            watcher.cancel()
            await events.aclose()  # waits until the driver's thread has stopped the engine
            self._forget(trace_id)

    def _events(self, driver: Driver, job: dict, cancel: threading.Event) -> AsyncGenerator[DriverEvent, None]:
        """The driver's events, run in a thread of their own; token events cross to the event loop
        only when the client asked for them (otherwise they are counted where they happen)."""
        wanted = bool(job["tokens"])

        def run() -> Iterator[DriverEvent]:
            for event in driver.events(job["problem"], job["steps"], cancel=cancel, trace_id=job["trace_id"]):
                if isinstance(event, TokenDelta):
                    self._counts["tokens"] += 1
                    if not wanted:
                        continue
                yield event

        return iterate_in_thread(run(), cancel)

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

    def _interrupted(self, trace_id: str) -> bool:
        """The API process failed this run because another worker died (lifecycle.INTERRUPTED_FLAG),
        or the manager is gone because the server is dying: either way the run is `interrupted`, as
        the API process and the next start-up record it, never `cancelled` (no client asked)."""
        from srl_sdk.serving.lifecycle import INTERRUPTED_FLAG

        try:
            return self.cancel_flags.get(trace_id) == INTERRUPTED_FLAG
        except (OSError, EOFError, ConnectionError):
            return True

    def _forget(self, trace_id: str) -> None:
        try:
            self.cancel_flags.pop(trace_id, None)
        except (OSError, EOFError, ConnectionError):
            pass

    def health(self) -> bool:
        """Called in the API process, from memory: LitServe already requires every worker to have
        loaded its model; this adds that none has died since (503 until the server restarts)."""
        return self.spec.healthy()


def _record_interrupted(trace: Trace) -> None:
    """What the API process told the client and wrote to the store (spec._interrupt), so this
    worker's last save agrees with it instead of overwriting it with `cancelled`."""
    trace.finish_reason = "interrupted"
    trace.meta["error"] = {"type": "interrupted", "message": INTERRUPTED}


def _close_engine_on_sigterm(engine: Any, main_pid: int) -> None:
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
        orphaned = os.getppid() != main_pid  # PR_SET_PDEATHSIG: the main process died
        threading.Thread(target=close_and_exit, daemon=True).start()
        limit = ORPHAN_CLOSE_TIMEOUT_S if orphaned else CLOSE_TIMEOUT_S
        timer = threading.Timer(limit, os._exit, (0,))  # a close that hangs (a phase holding the engine) must not keep us
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)


def _pid() -> int:
    import os

    return os.getpid()

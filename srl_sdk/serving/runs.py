"""The API process's side of every run: admission (a bounded queue) and a run that outlives its
client's connection, so that a client can resume it.

Admission, the way TGI bounds concurrent requests: at most `capacity` runs are with the workers
(workers x streams_per_worker; a worker takes a job only while it has a free stream slot, see
lifecycle.GatedQueue), at most `max_queued` more wait here in arrival order, and a request
beyond that is refused at once with 429 and `Retry-After`. A request that waits longer than
`queue_timeout_s` gets 504. The wall-clock cap of a run (`timeout_s`) counts from the moment
the request arrived, so it INCLUDES the wait here: a waiting request whose timeout_s runs out
gets 504, and a run that starts late has only what is left of it.

Runs: each admitted job gets a `Run` whose pump (spec.py) reads the worker's events to the last
one whether or not a client listens. That keeps the admission count true (a slot is free only
when its worker is done) and lets a client that lost its connection come back: the run keeps
going for `resume_grace_s`, and a client that reconnects with `Last-Event-ID` in that time
receives every later step exactly once, then `done`. When the grace period ends with nobody
listening, the run is cancelled. Streams that cannot be resumed (OpenAI chat streams, which
carry no event ids, and non-streamed requests) are cancelled as soon as their client leaves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from srl_sdk.serving.schemas import ErrorReply

RETRY_AFTER_S = 2  # what a refused client is told to wait; a hint, clients should back off further


class Admission:
    """At most `capacity` runs at once, at most `max_queued` waiting (FIFO). One event loop only."""

    def __init__(self, capacity: int, max_queued: int, queue_timeout_s: float) -> None:
        self.capacity = capacity
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.running = 0
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def enter(self, time_left_s: float) -> None:
        """Take a slot now, or wait for one: at most queue_timeout_s, and at most the request's
        own time left (its timeout_s includes the wait). 429 when the queue is full, 504 on timeout."""
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return
        if len(self._waiting) >= self.max_queued:
            raise ErrorReply(
                429, "server_busy",
                f"the server is at capacity ({self.running} runs in progress, {len(self._waiting)} waiting); "
                f"retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        limit = min(self.queue_timeout_s, max(time_left_s, 0.0))
        try:
            await asyncio.wait_for(turn, limit)
        except asyncio.TimeoutError:
            if limit < self.queue_timeout_s:
                raise ErrorReply(504, "timeout", f"the request's timeout_s ran out after {limit:.1f} s in the queue, "
                                               "before a worker was free; raise timeout_s or retry later") from None
            raise ErrorReply(504, "queue_timeout", f"no worker was free within queue_timeout_s ({limit:g} s); "
                                                 "retry later") from None
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # a slot was handed over just as this request went away: pass it on
            raise
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)

    def leave(self) -> None:
        """A run ended: its slot goes to the longest-waiting request, else back to the pool."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running = max(0, self.running - 1)


class Run:
    """One admitted job in the API process: the events so far and who listens to them.

    Each listener has its own asyncio.Queue; a listener that joins late (a resume) first gets the
    step events it has not seen, then follows live, so every step reaches it exactly once."""

    def __init__(self, job: dict[str, Any], resumable: bool, grace_s: float, cancel: Callable[[], None]) -> None:
        self.job = job
        self.trace_id: str = job["trace_id"]
        self.resumable = resumable
        self.grace_s = grace_s
        self._cancel = cancel
        self.steps: list[dict] = []  # the step events so far (what a resume replays)
        self.final: dict | None = None  # the done / error event once it came
        self.cancelled = False
        self.task: asyncio.Task | None = None
        self._listeners: list[tuple[asyncio.Queue, bool]] = []
        self._grace: asyncio.TimerHandle | None = None

    def listen(self, tokens: bool, after: int | None = None) -> asyncio.Queue:
        """A new listener; with `after`, first the step events with a higher index."""
        inbox: asyncio.Queue = asyncio.Queue()
        if after is not None:
            for event in self.steps:
                if int(event["step"]["index"]) > after:
                    inbox.put_nowait(event)
        if self.final is not None:
            inbox.put_nowait(self.final)
        else:
            self._listeners.append((inbox, tokens))
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        return inbox

    def leave(self, inbox: asyncio.Queue) -> None:
        """A listener went away. The last one leaving an unfinished run cancels it: at once, or
        after the grace period if the run can be resumed."""
        self._listeners = [(q, t) for q, t in self._listeners if q is not inbox]
        if self._listeners or self.final is not None or self.cancelled:
            return
        if self.resumable and self.grace_s > 0:
            if self._grace is None:
                self._grace = asyncio.get_running_loop().call_later(self.grace_s, self._give_up)
        else:
            self._give_up()

    def cancel_now(self) -> None:
        """Cancel whoever listens (POST /v1/traces/{id}/cancel); the run then ends as `cancelled`."""
        if self.final is None and not self.cancelled:
            self.cancelled = True
            self._cancel()

    def _give_up(self) -> None:
        self._grace = None
        if self._listeners or self.final is not None or self.cancelled:
            return
        self.cancelled = True
        self._cancel()

    def deliver(self, event: dict) -> None:
        kind = event["type"]
        if kind == "step":
            self.steps.append(event)
        elif kind in ("done", "error"):
            self.final = event
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        for inbox, tokens in self._listeners:
            if kind != "token" or tokens:
                inbox.put_nowait(event)
        if self.final is not None:
            self._listeners = []

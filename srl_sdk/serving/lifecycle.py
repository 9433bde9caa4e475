"""The processes of `srl serve`: who watches whom, and what happens when one of them dies.

    main process       LitServer.run: starts the others, watches them (`SRLServer`)
    ├── 2 managers     Manager processes (LitServe's queues, our cancel flags and gauges)
    ├── API process    uvicorn: HTTP, admission, runs, resume (spec.py, runs.py)
    └── workers        one engine each (worker.py); vLLM adds its own processes below them

A dead inference worker (killed, out of memory, a crashed engine, or an engine found dead by the
worker itself, which then exits) is NOT restarted: the server fails what was in flight and exits
with a non-zero status, for its supervisor (systemd, Docker, Kubernetes) to start it again. This
is what vLLM's and TGI's servers do when their engine dies. Why not restart in place: in LitServe
0.2.19 the restart path fails in-flight requests through the main process's response buffer,
which is not the API process's (a forked copy), so its clients would hang; a job the dead worker
was taking from the manager's queue is lost without trace; and a worker that died holding GPU
memory or engine subprocesses can leave the new one unable to start. A fresh server has none of
these problems, and a supervisor restarts it with backoff and visibility. So, when a worker dies:

1. the API process sees it within WATCH_PERIOD_S (it watches the workers' pids), answers /health
   with 503 and new requests with 503 + Retry-After, ends every stream in flight with an `error`
   event of type `interrupted` and closes their traces with finish_reason `interrupted`; with
   several workers that includes the runs of the live ones, which it tells to stop (a cancel flag
   set to INTERRUPTED_FLAG) so that they record the same finish and free their engines;
2. the main process sees it too, waits FAIL_GRACE_S for step 1 to reach the clients, shuts the
   server down, closes any trace still unfinished, and `srl serve` exits with status 1;
3. at the next start, traces still unfinished (a kill -9 of the whole server) are closed as
   `interrupted` before any request is served: resuming one replays its steps and ends at once.

The API process dying has the same outcome (exit 1). Children never outlive the main process:
each asks the kernel for a signal when its parent dies (prctl PR_SET_PDEATHSIG; forked children
through an at-fork hook, spawned workers in their setup), so a kill -9 of the main process takes
the whole server down within moments and frees its port.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("srl_sdk.serving")

WATCH_PERIOD_S = 0.25  # how often the API process and the main process look at the workers
FAIL_GRACE_S = 2.0  # after a worker died: time for the API process to tell the clients, then exit
EXIT_ENGINE_DEAD = 3  # a worker's own exit status when it finds its engine dead
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

STRANDED = ("the server stopped during this run (it was killed, or a worker died); the steps produced "
            "before are kept in the trace; run the request again")
INTERRUPTED_FLAG = "interrupted"  # a cancel flag's value for a run failed because a worker died (spec._interrupt)
STOPPING = threading.Event()  # main process: a stop was asked for (SIGINT/SIGTERM), deaths are expected


# -- children die with their parent ----------------------------------------------------------------
def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; a no-op elsewhere).

    If the parent is already gone (it died before this call), act as if the signal came now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def forked_children_die_with_this_process() -> None:
    """Every child this process forks from now on (LitServe's uvicorn process, the Manager
    processes) gets SIGKILL when the process that forked it dies. Spawned workers are fresh
    interpreters that run no at-fork hook: they call `die_with_parent` in their setup."""
    if not sys.platform.startswith("linux"):
        return
    forker = [os.getpid()]

    def before() -> None:
        forker[0] = os.getpid()

    def in_child() -> None:
        die_with_parent(forker[0], signal.SIGKILL)

    os.register_at_fork(before=before, after_in_child=in_child)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as dead).
    Works from any process, not only the parent (the API process watches its siblings)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if not Path("/proc/self").exists():  # no procfs: ask the kernel instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- the request queue as a worker sees it -------------------------------------------------------
_slots: threading.BoundedSemaphore | None = None


class GatedQueue:
    """LitServe's request queue, wrapped so that a worker takes a job only while it has a free
    stream slot (`streams_per_worker`).

    LitServe's async loop pulls every job it can and our runs would then wait inside the worker,
    where no queue timeout applies and where one worker can hoard jobs while another idles. With
    the gate, a job stays in the shared queue until some worker can start it at once; the API
    process (runs.Admission) bounds how many are admitted, so the queue never holds more than
    the workers can start."""

    def __init__(self, inner: Any, slots: int) -> None:
        self.inner = inner
        self.slots = slots

    def put(self, item: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner.put(item, *args, **kwargs)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if isinstance(block, (int, float)) and not isinstance(block, bool):  # LitServe calls get(1.0)
            block, timeout = True, float(block)
        gate = _worker_slots(self.slots)
        if not gate.acquire(blocking=block, timeout=timeout if block else None):
            raise queue.Empty
        try:
            return self.inner.get(block, timeout)
        except BaseException:
            gate.release()
            raise


def _worker_slots(size: int) -> threading.BoundedSemaphore:
    global _slots
    if _slots is None:
        _slots = threading.BoundedSemaphore(size)
    return _slots


def release_slot() -> None:
    """A run of this worker ended: its stream slot is free for the next job."""
    if _slots is not None:
        try:
            _slots.release()
        except ValueError:  # released more often than taken (cannot happen; never fatal)
            pass


# -- the main process's watch --------------------------------------------------------------------
def server_class(streams_per_worker: int):
    """LitServer with our worker watch and the gated request queue (litserve imported here)."""
    import litserve

    class SRLServer(litserve.LitServer):
        failure: str | None = None

        def _get_request_queue(self, api_path: str):
            return GatedQueue(super()._get_request_queue(api_path), streams_per_worker)

        def _start_worker_monitoring(self, manager, uvicorn_workers) -> None:
            """Replaces LitServe's monitor, which shuts down without telling the clients."""
            processes = [*self.inference_workers, *uvicorn_workers.values()]
            threading.Thread(target=self._watch, args=(processes,), name="srl-watch", daemon=True).start()

        def _watch(self, processes: list) -> None:
            while not STOPPING.is_set():
                dead = next((p for p in processes if not p.is_alive()), None)  # is_alive() also reaps
                if dead is not None:
                    time.sleep(0.3)  # a Ctrl-C reaches the children too: let the stop be noticed first
                    if STOPPING.is_set():
                        return
                    code = getattr(dead, "exitcode", None)
                    how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"status {code}"
                    self.failure = f"the {dead.name} process (pid {dead.pid}) exited with {how}"
                    logger.error("%s; failing the runs in flight, then stopping the server", self.failure)
                    time.sleep(FAIL_GRACE_S)
                    try:
                        self._shutdown_event.set()  # LitServer.run returns and shuts everything down
                    except (OSError, EOFError, ConnectionError):
                        pass
                    return
                time.sleep(WATCH_PERIOD_S)

        def _perform_graceful_shutdown(self, *args, **kwargs):
            STOPPING.set()  # from here on, children exiting is the plan, not a failure
            return super()._perform_graceful_shutdown(*args, **kwargs)

    return SRLServer

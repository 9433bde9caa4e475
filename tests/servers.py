"""One way to run a real `srl serve` in a test: a small config, deep-merged overrides, a clean stop.

Every server test starts its servers through `serving(folder, **overrides)` (a context manager, for
module-scoped fixtures) or the `srl_server(**overrides)` fixture factory in conftest.py (function
scope). The server is a real subprocess on 127.0.0.1 running SmolLM2 on llama.cpp; on exit it is
stopped with SIGTERM and checked to have left no process and no bound port behind.

Overrides are laid over BASE_CONFIG key by key (`limits={"max_steps": 1}` keeps the other limits);
None removes a key, and `Exactly({...})` replaces a whole section instead of merging into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from httpx_sse import aconnect_sse, connect_sse

from srl_sdk.core.steps import Trace
from srl_sdk.serving.process import ServerProcess, port_is_free

#: A config that keeps each request to seconds: tiny step and token caps, one llama.cpp thread.
BASE_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1",
    "model": "smollm2",
    "engine": "llama.cpp",
    "engine_options": {"n_ctx": 1024, "n_threads": 1},
    "log_level": "warning",
    "limits": {"max_steps": 16, "max_step_tokens": 128, "max_total_tokens": 4096},
    "reason": {"max_steps": 2, "max_thought_tokens": 24, "max_action_tokens": 24, "temperature": 0.0},
}


class Exactly(dict):
    """An override that replaces the base's section as a whole: `limits=Exactly(resume_grace_s=1)`."""


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, nested dicts merged key by key; a None value removes the key."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Exactly):
            result[key] = copy.deepcopy(dict(value))
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class SrlServer(ServerProcess):
    """A started `srl serve` with the paths a test inspects: its folder, config, store and log."""

    def __init__(self, folder: Path, config: dict[str, Any], *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, start_timeout_s: float = 180.0,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = config
        store = config.get("store")
        self.store = Path(store) if isinstance(store, (str, Path)) and "://" not in str(store) else None
        self.config_path = self.folder / "server.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(self.config_path, log=self.folder / "server.log", env=env, args=args,
                         start_timeout_s=start_timeout_s, preexec_fn=preexec_fn)
        if config.get("ssl_certfile"):
            self.url = f"https://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else ""

    def trace(self, trace_id: str, headers: dict[str, str] | None = None) -> Trace:
        response = httpx.get(f"{self.url}/v1/traces/{trace_id}", headers=headers, timeout=30)
        response.raise_for_status()
        return Trace.model_validate(response.json())

    def wait_finished(self, trace_id: str, timeout_s: float = 60.0,
                      headers: dict[str, str] | None = None) -> Trace:
        """Poll the trace until it has a finish reason (a cancelled run is recorded a moment after
        its client leaves); fail the test with the log's tail if it does not finish in time."""
        deadline = time.monotonic() + timeout_s
        trace = None
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/v1/traces/{trace_id}", headers=headers, timeout=30)
            if response.status_code == 200:
                trace = Trace.model_validate(response.json())
                if trace.finish_reason is not None:
                    return trace
            time.sleep(0.2)
        raise AssertionError(f"trace {trace_id} did not finish within {timeout_s:.0f} s (last seen: {trace}); "
                             f"server log:\n{self.log_tail()}")

    def leave_after_first_token(self, body: dict[str, Any]) -> str:
        """POST /v1/reason with token events, read the first one and close the connection mid-thought;
        the trace's id (the server cancels the run, or keeps it for a resume within the grace)."""
        with httpx.Client(timeout=300) as client:
            with connect_sse(client, "POST", self.url + "/v1/reason", json={**body, "tokens": True}) as source:
                first = next(iter(source.iter_sse()))
                assert first.event == "token", first
                return first.id.rpartition(":")[0]

    def reason_concurrently(self, problems: list[str], timeout_s: float = 300.0) -> list[list]:
        """One-step /v1/reason streams for all `problems` at once, each read to its end (its events)."""

        async def one(client: httpx.AsyncClient, problem: str) -> list:
            async with aconnect_sse(client, "POST", self.url + "/v1/reason",
                                    json={"problem": problem, "limits": {"max_steps": 1}}) as source:
                assert source.response.status_code == 200
                return [event async for event in source.aiter_sse()]

        async def all_of_them() -> list[list]:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                return list(await asyncio.gather(*(one(client, problem) for problem in problems)))

        return asyncio.run(all_of_them())

    def metric(self, name: str) -> float:
        """One sample of /metrics by its full name (labels included); 0 when not exported yet."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def group_pids(self) -> list[int]:
        """Every live (not zombie) process of the server's own process group."""
        assert self.process is not None
        return [pid for pid, state, _, group in _processes() if group == self.process.pid and state != "Z"]

    def children(self) -> list[int]:
        """The live children of the main process (the managers, the API process, the workers)."""
        assert self.process is not None
        return [pid for pid, state, parent, _ in _processes() if parent == self.process.pid and state != "Z"]

    def worker_pid(self) -> int:
        """The inference worker: the main process's child started by multiprocessing's spawn."""
        for pid in self.children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return pid
        raise AssertionError(f"no inference worker among the children of {self.process and self.process.pid}")

    def stop_and_check(self, timeout_s: float = 30.0) -> None:
        """Stop with SIGTERM and assert that nothing of the server is left behind."""
        clean = self.stop(timeout_s)
        assert clean, f"the server did not stop on SIGTERM; log:\n{self.log_tail()}"
        assert not self.group_alive(), "a server process outlived SIGTERM"
        assert port_is_free(self.port), "something still holds the server's port"


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, read from /proc."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield int(entry.name), fields[0], int(fields[1]), int(fields[2])


def post_reason(url: str, body: dict[str, Any], **headers: str) -> list:
    """POST /v1/reason as an SSE stream (checked to be one) and read every event."""
    with httpx.Client(timeout=180) as client:
        with connect_sse(client, "POST", url + "/v1/reason", json=body, headers=headers) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            return list(source.iter_sse())


def make_server(folder: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                start_timeout_s: float = 180.0, preexec_fn: Callable[[], None] | None = None,
                **overrides: Any) -> SrlServer:
    """A server (not started) on BASE_CONFIG with `overrides`; the store defaults to folder/traces.db."""
    folder = Path(folder)
    config = merged({**BASE_CONFIG, "store": str(folder / "traces.db")}, overrides)
    return SrlServer(folder, config, args=args, env=env, start_timeout_s=start_timeout_s, preexec_fn=preexec_fn)


@contextlib.contextmanager
def serving(folder: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
            check_clean_stop: bool = True, start_timeout_s: float = 180.0, stop_timeout_s: float = 30.0,
            preexec_fn: Callable[[], None] | None = None, **overrides: Any) -> Iterator[SrlServer]:
    """`with serving(tmp, limits={"max_steps": 4}) as server: ...` — started, then stopped and checked."""
    server = make_server(folder, args=args, env=env, start_timeout_s=start_timeout_s, preexec_fn=preexec_fn,
                         **overrides)
    server.start()
    try:
        yield server
    finally:
        if check_clean_stop:
            server.stop_and_check(stop_timeout_s)
        else:
            server.stop(stop_timeout_s)

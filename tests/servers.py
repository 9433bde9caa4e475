"""One way to run a real `srl serve` in a test: a small config, deep-merged overrides, a clean stop.

Every server test starts its servers through `serving(folder, **overrides)` (a context manager, for
module-scoped fixtures) or the `srl_server(**overrides)` fixture factory in conftest.py (function
scope). The server is a real subprocess on 127.0.0.1 running SmolLM2 on llama.cpp; on exit it is
stopped with SIGTERM and checked to have left no process and no bound port behind.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

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


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, nested dicts merged key by key; a None value removes the key."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class SrlServer(ServerProcess):
    """A started `srl serve` with the paths a test inspects: its folder, config, store and log."""

    def __init__(self, folder: Path, config: dict[str, Any], *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, start_timeout_s: float = 180.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = config
        self.store = Path(config["store"]) if "store" in config and "://" not in str(config["store"]) else None
        self.config_path = self.folder / "server.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(self.config_path, log=self.folder / "server.log", env=env, args=args,
                         start_timeout_s=start_timeout_s)

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

    def stop_and_check(self) -> None:
        """Stop with SIGTERM and assert that nothing of the server is left behind."""
        clean = self.stop()
        assert clean, f"the server did not stop on SIGTERM; log:\n{self.log_tail()}"
        assert not self.group_alive(), "a server process outlived SIGTERM"
        assert port_is_free(self.port), "something still holds the server's port"


def make_server(folder: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                **overrides: Any) -> SrlServer:
    """A server (not started) on BASE_CONFIG with `overrides`; the store defaults to folder/traces.db."""
    folder = Path(folder)
    config = merged({**BASE_CONFIG, "store": str(folder / "traces.db")}, overrides)
    return SrlServer(folder, config, args=args, env=env)


@contextlib.contextmanager
def serving(folder: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
            check_clean_stop: bool = True, **overrides: Any) -> Iterator[SrlServer]:
    """`with serving(tmp, limits={"max_steps": 4}) as server: ...` — started, then stopped and checked."""
    server = make_server(folder, args=args, env=env, **overrides)
    server.start()
    try:
        yield server
    finally:
        if check_clean_stop:
            server.stop_and_check()
        else:
            server.stop()

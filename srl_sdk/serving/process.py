"""Run `srl serve` as a child process: start, wait until /health says ready, stop cleanly.

For tests, notebooks and examples that need a real server next to them. Start-up is awaited by
polling /health (bounded in time), never by sleeping a guessed amount; stopping sends SIGTERM
(which the server turns into LitServe's graceful shutdown) and then checks that no process of
the server is left holding the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from srl_sdk.errors import ConfigError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ServerProcess:
    """`with ServerProcess(config_path) as server: httpx.get(server.url + "/health")`."""

    def __init__(self, config: str | os.PathLike[str], *, port: int | None = None, log: Path | None = None,
                 env: dict[str, str] | None = None, start_timeout_s: float = 180.0,
                 args: tuple[str, ...] = (), preexec_fn: Callable[[], None] | None = None) -> None:
        """`args`: more `srl serve` flags (e.g. `--api-key-file PATH`); `preexec_fn`: run in the child
        before `srl serve` starts (e.g. a resource limit its processes inherit)."""
        self.config = Path(config)
        self.args = tuple(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**os.environ, **(env or {})}  # the server picks OpenMP's wait policy (placement.py)
        self.start_timeout_s = start_timeout_s
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        command = [sys.executable, "-m", "srl_sdk.cli", "serve", "--config", str(self.config), "--port", str(self.port),
                   *self.args]
        sink = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True,  # its own group: nothing of it can outlive stop()
                                        preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"srl serve exited with code {self.process.returncode} while starting; "
                                  f"see {self.log or 'its output'}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ConfigError(f"srl serve did not become healthy within {self.start_timeout_s:.0f} s; see {self.log}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait; SIGKILL the group only if it hangs. True if it stopped cleanly."""
        if self.process is None:
            return True
        clean = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                clean = False
        deadline = time.monotonic() + timeout_s
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.group_alive():
            clean = False
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        return clean

    def group_alive(self) -> bool:
        """Whether any process of the server's own process group is still running (not a zombie)."""
        if self.process is None:
            return False
        pgid = self.process.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, group = fields[0], int(fields[2])
            if group == pgid and state != "Z":
                return True
        return False

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

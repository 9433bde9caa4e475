"""Load: N concurrent streaming clients against one `srl serve` for a fixed time.

Pass criteria (the script exits 1 if any fails): zero errors (every stream ends with `done`),
the server's resident memory (all its processes) grows by less than a bound between the end of
a warm-up and the end of the run, and every trace a client received is in the store, fetched
back by id (GET /v1/traces/{id}) and identical to what was streamed.

    .venv/bin/python benchmarks/load_test.py --clients 8 --seconds 120

tests/test_hardening_load.py runs the same code briefly (4 clients x 20 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

RSS_GROWTH_BOUND_MB = 64.0
PROBLEMS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Sara had 20 dollars and spent 8. How much money is left?",
    "A train travels 60 km each hour for 3 hours. How far does it go?",
]


@dataclass
class LoadResult:
    clients: int
    seconds: float
    completed: list[dict] = field(default_factory=list)  # the `done` traces
    errors: list[str] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    missing: list[str] = field(default_factory=list)  # streamed but not stored (or stored differently)
    wall_s: float = 0.0

    @property
    def growth_mb(self) -> float:
        return self.rss_after_mb - self.rss_before_mb

    def passed(self, bound_mb: float = RSS_GROWTH_BOUND_MB) -> bool:
        return not self.errors and not self.missing and self.growth_mb < bound_mb and bool(self.completed)


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every live process in the server's process group, in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def stream_once(client: httpx.Client, url: str, problem: str) -> dict:
    """One streamed /v1/reason; returns the `done` trace or raises with what went wrong."""
    from httpx_sse import connect_sse

    with connect_sse(client, "POST", url + "/v1/reason", json={"problem": problem}) as source:
        if source.response.status_code != 200:
            raise RuntimeError(f"HTTP {source.response.status_code}")
        for event in source.iter_sse():
            if event.event == "error":
                raise RuntimeError(f"error event: {event.data[:200]}")
            if event.event == "done":
                return json.loads(event.data)
    raise RuntimeError("stream ended without `done`")


def run_load(url: str, pgid: int, clients: int, seconds: float, request_timeout_s: float = 300.0) -> LoadResult:
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    with httpx.Client(timeout=request_timeout_s) as warm:  # the engine warm, buffers allocated
        for problem in PROBLEMS:
            stream_once(warm, url, problem)
    result.rss_before_mb = group_rss_mb(pgid)
    deadline = time.monotonic() + seconds

    def client_loop(n: int) -> None:
        with httpx.Client(timeout=request_timeout_s) as client:
            i = n
            while time.monotonic() < deadline:
                try:
                    trace = stream_once(client, url, PROBLEMS[i % len(PROBLEMS)])
                    with lock:
                        result.completed.append(trace)
                except Exception as exc:  # noqa: BLE001 - every failure is a finding, recorded
                    with lock:
                        result.errors.append(f"client {n}: {type(exc).__name__}: {exc}")
                i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + request_timeout_s + 30)
        if thread.is_alive():
            result.errors.append("a client hung past its timeout")
    result.wall_s = time.monotonic() - started
    time.sleep(1.0)  # let the worker finish its last store writes
    result.rss_after_mb = group_rss_mb(pgid)
    with httpx.Client(timeout=60) as client:
        for trace in result.completed:
            got = client.get(f"{url}/v1/traces/{trace['id']}")
            if got.status_code != 200 or got.json()["steps"] != trace["steps"]:
                result.missing.append(trace["id"])
    return result


def start_server(folder: Path, threads: int = 1, steps: int = 2, tokens: int = 16):
    from srl_sdk.serving.process import ServerProcess

    config = folder / "load.yaml"
    config.write_text(
        "host: 127.0.0.1\nmodel: smollm2\nengine: llama.cpp\n"
        f"engine_options: {{n_ctx: 1024, n_threads: {threads}}}\n"
        f"store: {folder / 'traces.db'}\nlog_level: warning\n"
        f"reason: {{max_steps: {steps}, max_thought_tokens: {tokens}, max_action_tokens: {tokens}, temperature: 0.0}}\n"
    )
    return ServerProcess(config, log=folder / "load.log").start()


def main() -> None:
    from common import Session, table, write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()
    folder = Path(tempfile.mkdtemp(prefix="srl-load-"))
    server = start_server(folder, threads=args.threads)
    try:
        result = run_load(server.url, server.process.pid, args.clients, args.seconds)
    finally:
        clean = server.stop()
    tokens = sum(t["usage"].get("completion_tokens", 0) for t in result.completed)
    rows = [[args.clients, f"{result.wall_s:.0f}", len(result.completed), len(result.errors),
             f"{tokens / result.wall_s:.1f}", f"{result.rss_before_mb:.0f} -> {result.rss_after_mb:.0f} "
             f"({result.growth_mb:+.1f})", f"{len(result.completed) - len(result.missing)}/{len(result.completed)}",
             "yes" if clean else "NO", "PASS" if result.passed() else "FAIL"]]
    out = table(["clients", "seconds", "streams done", "errors", "tokens/s (aggregate)",
                 "server RSS MB (warm -> end)", "traces found by id", "clean SIGTERM stop", "verdict"], rows)
    print(out)
    for error in result.errors[:10]:
        print("error:", error)
    if not args.no_docs:
        write_section("Load", session.machine_block() + "\n\n" + out + "\n\n"
                      + f"Pass: 0 errors, RSS growth < {RSS_GROWTH_BOUND_MB:.0f} MB, every streamed trace stored "
                        "and equal when fetched back by id. Each stream: up to 2 steps of 16 + 16 tokens.")
    sys.exit(0 if result.passed() and clean else 1)


if __name__ == "__main__":
    main()

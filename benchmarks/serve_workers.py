"""What a second serving worker costs in memory, measured on a real `srl serve`.

Why: `workers: N` loads N copies of the model, one per worker process. How much memory each copy
really adds depends on what the processes share: llama.cpp maps the GGUF file (`use_mmap`), so
the weights sit once in the page cache and count in every worker's RSS, while the KV cache
(`n_ctx`), compute buffers and the Python interpreter are private to each worker. RSS alone
therefore overstates the cost; this reads /proc/<pid>/smaps_rollup of every process of the
server: RSS, PSS (shared pages divided among the processes sharing them) and private memory.

For 1 and 2 workers, with n_ctx 1024 (the tests') and 4096 (server/cpu.yaml's), it starts the
server (SmolLM2 Q4_1 on llama.cpp, 1 thread per worker, streams_per_worker 1), runs one short
request per worker at once (so every worker has used its context), then reads the memory
figures and stops the server.

    .venv/bin/python benchmarks/serve_workers.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Session, table, write_section  # noqa: E402

N_CTX = (1024, 4096)
REQUEST = {"problem": "Tom has 3 apples and buys 5 more. How many apples does he have?", "stream": False,
           "limits": {"max_steps": 2, "max_thought_tokens": 24, "max_action_tokens": 24}}
CONFIG = """\
host: 127.0.0.1
model: smollm2
engine: llama.cpp
engine_options: {{n_ctx: {n_ctx}, n_threads: 1}}
workers: {workers}
store: {store}
log_level: warning
limits: {{streams_per_worker: 1}}
"""


def memory(pid: int) -> dict[str, float]:
    """MiB of RSS, PSS and private memory of one process (smaps_rollup, Linux 4.14+)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)}


def server_processes(main_pid: int) -> dict[int, str]:
    """pid -> role ("worker" for the spawned inference workers, "other" for the rest) of the group."""
    roles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[2]) == main_pid and fields[0] != "Z":  # the server's own process group
            worker = int(fields[1]) == main_pid and b"spawn_main" in cmdline
            roles[int(entry.name)] = "worker" if worker else "other"
    return roles


def measure(workers: int, n_ctx: int) -> dict[str, float]:
    import httpx

    from srl_sdk.serving.process import ServerProcess

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "server.yaml"
        config.write_text(CONFIG.format(n_ctx=n_ctx, workers=workers, store=Path(folder) / "traces.db"))
        with ServerProcess(config, log=Path(folder) / "server.log") as server:
            answers: list[int] = []

            def ask() -> None:
                answers.append(httpx.post(server.url + "/v1/reason", json=REQUEST, timeout=300).status_code)

            threads = [threading.Thread(target=ask) for _ in range(workers)]  # one request per worker, at once
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert answers == [200] * workers, answers
            roles = server_processes(server.process.pid)
            figures = {pid: memory(pid) for pid in roles}
    worker_figures = [f for pid, f in figures.items() if roles[pid] == "worker"]
    assert len(worker_figures) == workers, roles
    return {
        "worker_rss": max(f["rss"] for f in worker_figures),
        "worker_pss": max(f["pss"] for f in worker_figures),
        "worker_private": max(f["private"] for f in worker_figures),
        "total_pss": sum(f["pss"] for f in figures.values()),
        "processes": len(figures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    session = Session()
    results = {(n_ctx, workers): measure(workers, n_ctx) for n_ctx in N_CTX for workers in (1, 2)}
    rows = [[n_ctx, workers, r["processes"], r["worker_rss"], r["worker_pss"], r["worker_private"], r["total_pss"]]
            for (n_ctx, workers), r in results.items()]
    out = table(["n_ctx", "workers", "processes", "RSS per worker (MiB)", "PSS per worker (MiB)",
                 "private per worker (MiB)", "whole server PSS (MiB)"], rows)
    added = ", ".join(f"**{results[(n, 2)]['total_pss'] - results[(n, 1)]['total_pss']:.0f} MiB** at n_ctx {n}"
                      for n in N_CTX)
    notes = ("SmolLM2-135M Q4_1 (98 MB GGUF) on llama.cpp, 1 thread per worker; figures after one request per "
             f"worker; the largest worker shown. The second worker added {added} of PSS to the whole server "
             "(its private memory, mostly the KV cache and the interpreter, plus its share of the mapped weights "
             "and libraries); RSS counts the shared weights in every worker and overstates the cost.")
    print(out)
    print(notes)
    if not args.no_write:
        write_section("Serving workers", session.machine_block() + "\n\n" + notes + "\n\n" + out)


if __name__ == "__main__":
    main()

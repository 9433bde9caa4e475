"""`workers: 2` for real: two llama.cpp copies of SmolLM2 in two worker processes behind one server.

- two streams at once land on the two workers and run at the same moment: shown by the workers'
  own figures (`srl_worker_streams_running{worker="0"}` and `{worker="1"}` both 1 in one scrape,
  while the store shows both runs started and unfinished) and by each trace naming its worker,
  not by timing; both traces are stored in the one SQLite file;
- admission counts both workers (capacity 2 x streams_per_worker 1: a third request gets 429);
- a run cancelled on one worker stops there while the other worker's run goes on to its end;
- a killed worker still fails every run in flight (both workers' runs) and the server exits 1;
- two processes writing one SQLite store at once lose nothing (what the workers do);
- placement: the device LitServe hands a worker reaches the engine, CPU threads are split.

Streams use hot sampling (the model then writes no final answer) so a run lasts its whole step
cap, with one thread per worker and tiny step caps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from servers import serving
from srl_sdk.core.steps import Step, Trace
from srl_sdk.serving.placement import engine_name, place
from srl_sdk.store import TraceStore

PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
HOT = {"temperature": 1.5, "seed": 7}  # no final answer: a run goes on to its step cap
RUN = {"problem": PROBLEM, "tokens": True, "sampling": HOT,
       "limits": {"max_steps": 3, "max_thought_tokens": 32, "max_action_tokens": 32}}
LONG = {**RUN, "limits": {"max_steps": 12, "max_thought_tokens": 128, "max_action_tokens": 128}}
WORKERS = {"workers": 2, "limits": {"streams_per_worker": 1, "max_queued": 0, "resume_grace_s": 0}}


def worker_figures(url: str) -> dict[tuple[str, str], float]:
    """(sample name, worker label) -> value of the srl_worker_* samples of one /metrics scrape."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return {(sample.name, sample.labels.get("worker", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("srl_worker_")}


def running(url: str) -> dict[str, float]:
    figures = worker_figures(url)
    return {worker: value for (name, worker), value in figures.items() if name == "srl_worker_streams_running"}


def wait_for(check, timeout_s: float = 30.0, what: str = "condition"):
    """Poll `check()` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s:.0f} s")


def open_streams(stack: contextlib.ExitStack, url: str, bodies: list[dict]) -> list:
    """Open one /v1/reason stream per body, all at once (each on its own connection), then read
    each one's first event: a token, so every run has started. [(trace id, the stream's events)]."""
    sources = []
    for body in bodies:
        client = stack.enter_context(httpx.Client(timeout=120))
        source = stack.enter_context(connect_sse(client, "POST", url + "/v1/reason", json=body))
        assert source.response.status_code == 200, source.response.read()
        sources.append(source)
    started = []
    for source in sources:
        events = source.iter_sse()
        first = next(events)
        assert first.event == "token", first
        started.append((first.id.rpartition(":")[0], events))
    return started


def last_event(events):
    for event in events:
        if event.event in ("done", "error"):
            return event
    raise AssertionError("the stream ended without a done or error event")


def stored(url: str, trace_id: str) -> Trace:
    response = httpx.get(f"{url}/v1/traces/{trace_id}", timeout=30)
    response.raise_for_status()
    return Trace.model_validate(response.json())


@pytest.mark.slow
def test_two_workers_serve_two_streams_at_once_and_a_cancel_stays_on_its_worker(tmp_path):
    with serving(tmp_path, **WORKERS) as server, contextlib.ExitStack() as stack:
        url = server.url
        assert running(url) == {"0": 0, "1": 0}  # both workers loaded and publishing before any request
        figures = worker_figures(url)
        assert figures[("srl_worker_stream_slots", "0")] == figures[("srl_worker_stream_slots", "1")] == 1

        # one run that would go on for minutes, one that ends at its step cap: both sent at once; the
        # short one's first token is read last, so it has its whole run ahead when the figures are read
        (gone_id, gone_events), (kept_id, kept_events) = open_streams(stack, url, [LONG, RUN])

        # both runs have started (each sent a token) ...
        both = running(url)
        # ... and neither had ended when the workers' figures were read: both were running at once
        kept, gone = stored(url, kept_id), stored(url, gone_id)
        assert kept.finish_reason is None and gone.finish_reason is None, (kept, gone)
        assert both == {"0": 1, "1": 1}, both
        kept_worker, gone_worker = kept.meta["server"]["worker"], gone.meta["server"]["worker"]
        assert {kept_worker, gone_worker} == {0, 1}, "each worker took one run (streams_per_worker 1)"

        # capacity is workers x streams_per_worker = 2, both taken, max_queued 0: a third is refused
        third = httpx.post(url + "/v1/reason", json={**RUN, "stream": False}, timeout=30)
        assert third.status_code == 429, third.text
        assert third.headers["retry-after"]

        # cancel one worker's run: it ends there, cancelled; the other worker's run is not touched
        cancelled = httpx.post(f"{url}/v1/traces/{gone_id}/cancel", timeout=30)
        assert cancelled.status_code == 202, cancelled.text
        end = last_event(gone_events)
        assert end.event == "done", end
        assert server.wait_finished(gone_id).finish_reason == "cancelled"
        after_cancel = wait_for(lambda: (lambda r: r if r.get(str(gone_worker)) == 0 else None)(running(url)),
                                what="the cancelled run's worker publishing that it ended")
        assert after_cancel[str(kept_worker)] == 1 or stored(url, kept_id).finish_reason is not None

        end = last_event(kept_events)
        assert end.event == "done", end
        streamed = Trace.model_validate_json(end.data)
        kept = server.wait_finished(kept_id)
        assert kept.finish_reason in ("max_steps", "final_answer") and 1 <= len(kept.steps) <= 3, kept.finish_reason

        # both traces are in the one store file, written by two worker processes
        store = TraceStore(server.store)
        try:
            for trace_id, worker, reason in ((kept_id, kept_worker, kept.finish_reason),
                                             (gone_id, gone_worker, "cancelled")):
                trace = store.get(trace_id)
                assert trace.meta["server"]["worker"] == worker and trace.finish_reason == reason
                assert all(isinstance(step, Step) for step in trace.steps)
            assert store.get(kept_id).steps == streamed.steps  # what was streamed, step for step
        finally:
            store.close()

        # per-worker counters: one run each (the refused third never reached a worker)
        figures = wait_for(lambda: (lambda f: f if f.get(("srl_worker_streams_running", str(kept_worker))) == 0
                                    else None)(worker_figures(url)), what="the other worker publishing its end")
        assert figures[("srl_worker_runs_total", "0")] == figures[("srl_worker_runs_total", "1")] == 1
        assert figures[("srl_worker_steps_total", str(kept_worker))] == len(kept.steps)
        assert figures[("srl_worker_tokens_total", "0")] > 0 and figures[("srl_worker_tokens_total", "1")] > 0
        info = {(s.labels["worker"], s.labels["device"])
                for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text)
                for s in family.samples if s.name == "srl_worker_info"}
        assert info == {("0", "cpu"), ("1", "cpu")}  # the device LitServe gave each worker's setup()


@pytest.mark.slow
def test_a_killed_worker_fails_the_runs_of_both_workers_and_the_server_exits_1(tmp_path):
    with serving(tmp_path, check_clean_stop=False, **WORKERS) as server, contextlib.ExitStack() as stack:
        url = server.url
        started = open_streams(stack, url, [LONG, LONG])
        assert running(url) == {"0": 1, "1": 1}
        workers = [pid for pid in server.children() if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        for _, events in started:
            end = last_event(events)
            assert end.event == "error" and '"interrupted"' in end.data, end
        assert server.process.wait(timeout=60) == 1, server.log_tail()
        assert not server.group_alive(), "a server process outlived the failed server"
        store = TraceStore(server.store)
        try:
            traces = [store.get(trace_id) for trace_id, _ in started]
        finally:
            store.close()
        assert [trace.finish_reason for trace in traces] == ["interrupted", "interrupted"]
        assert {trace.meta["server"]["worker"] for trace in traces} == {0, 1}
        # the live worker stopped its run and recorded it itself (a finished run has a duration),
        # rather than running on unseen until the server stopped; the dead one's was closed for it
        assert sorted(trace.duration_s is not None for trace in traces) == [False, True], traces


WRITER = """
import sys
from srl_sdk.core.steps import Step, Trace
from srl_sdk.store import TraceStore

store, name, count = TraceStore(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    trace = Trace(id=f"{name}-{i}", problem=f"problem {i} of {name}", mode="stepwise", model="m", engine="e")
    for k in range(1, 4):  # a partial trace after every step, like a worker's run
        trace.steps.append(Step(index=k, thought=f"t{k}", action=f"a{k}"))
        store.save(trace)
    trace.finish_reason = "max_steps"
    store.save(trace)
store.close()
"""


def test_two_processes_writing_one_sqlite_store_at_once_lose_nothing(tmp_path):
    """What two workers do (a partial save per step, a final save), as fast as they can, at once."""
    path = tmp_path / "traces.db"
    TraceStore(path).close()  # srl serve creates the store before the workers start
    count = 30
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)], stderr=subprocess.PIPE)
               for name in ("w0", "w1")]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
    store = TraceStore(path)
    try:
        rows = store.list(limit=1000)
        assert len(rows) == 2 * count
        for name in ("w0", "w1"):
            for i in range(count):
                trace = store.get(f"{name}-{i}")
                assert trace.finish_reason == "max_steps" and [s.action for s in trace.steps] == ["a1", "a2", "a3"]
    finally:
        store.close()


# -- placement: the device LitServe hands each worker reaches its engine ----------------------------
def test_cpu_workers_split_the_cores_unless_threads_are_set(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert place("llama.cpp", "cpu", {"n_ctx": 512}, workers=1, cpus=8).options == {"n_ctx": 512}  # engine default
    assert place("llama.cpp", "cpu", {}, workers=2, cpus=2).options == {"n_threads": 1}
    assert place("llama.cpp", "cpu", {}, workers=2, cpus=6).options == {"n_threads": 3}
    assert place("onnx", "cpu", {}, workers=3, cpus=64).options == {"n_threads": 4}  # the engines' cap
    assert place("transformers", "cpu", {}, workers=4, cpus=2).options == {"n_threads": 1}
    assert place("vllm", "cpu", {}, workers=2, cpus=8).options == {"threads": 4}
    assert place("llama.cpp", "cpu", {"n_threads": 2}, workers=2, cpus=2).options == {"n_threads": 2}  # as written
    placed = place("llama.cpp", "cpu", {}, workers=2, cpus=2)
    assert placed.env == {} and placed.device == "cpu"


def test_openmp_threads_sleep_at_once_only_where_the_workers_outnumber_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert place("llama.cpp", "cpu", {"n_threads": 2}, workers=1, cpus=2).env == {}  # a spin is what makes it fast
    assert place("llama.cpp", "cpu", {}, workers=1, cpus=2).env == {}  # engine default: the cores, at most 4
    assert place("llama.cpp", "cpu", {}, workers=4, cpus=2).env == {"OMP_WAIT_POLICY": "PASSIVE"}  # 1 thread each, 4 > 2
    assert place("llama.cpp", "cpu", {"n_threads": 2}, workers=2, cpus=2).env == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the server's own environment wins
    assert place("llama.cpp", "cpu", {"n_threads": 2}, workers=2, cpus=2).env == {}


def test_a_cuda_worker_sees_only_its_gpu():
    placed = place("transformers", "cuda:1", {"dtype": "bfloat16"}, workers=1, visible=None)
    assert placed.env == {"CUDA_VISIBLE_DEVICES": "1"}
    assert placed.options == {"dtype": "bfloat16", "device": "cuda:0"}  # its only visible GPU
    assert placed.device == "cuda:1"
    # the server's own CUDA_VISIBLE_DEVICES is respected: index 1 of "4,6" is GPU 6
    assert place("vllm", "cuda:1", {}, workers=2, visible="4,6").env == {"CUDA_VISIBLE_DEVICES": "6"}
    assert place("llama.cpp", "cuda:0", {}, workers=2, visible="").env == {"CUDA_VISIBLE_DEVICES": "0"}
    # vLLM spanning GPUs in one worker, or an engine placed by the user: nothing pinned
    assert place("vllm", "cuda:0", {"tensor_parallel_size": 2}, workers=1).env == {}
    assert place("vllm", "cuda:0", {"data_parallel_size": 2, "tensor_parallel_size": 1}, workers=1).env == {}
    assert place("vllm", "cuda:0", {"engine_options": {"pipeline_parallel_size": 2}}, workers=1).env == {}
    assert place("transformers", "cuda:1", {"device": "cuda:3"}, workers=1).options == {"device": "cuda:3"}
    assert place("transformers", "cuda:1", {"device": "cuda:3"}, workers=1).env == {}


def test_engine_names_are_canonical():
    assert engine_name("GGUF", "x") == "llama.cpp" and engine_name("hf", "x") == "transformers"
    assert engine_name(None, "smollm2") == "llama.cpp"


def test_devices_on_cpu_is_refused_with_the_setting_to_use():
    from srl_sdk.errors import ConfigError
    from srl_sdk.serving.config import load_server_config

    assert load_server_config(workers=2).workers == 2
    with pytest.raises(ConfigError, match="set workers: N instead"):
        load_server_config(devices=2)
    assert load_server_config(accelerator="cuda", devices=2, workers=2).devices == 2

"""Prometheus counters, counted in the API process from the events it relays.

Counting where the stream passes (not in the workers) avoids prometheus multiprocess mode: the
API process sees every step, every finished trace and every client that left early. These are
the server's totals; the per-worker figures (`worker` label) are published by the workers
themselves through a Manager dict (WorkerMetrics). A private registry keeps these apart from
anything else in the process.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

REGISTRY = CollectorRegistry()

REQUESTS = Counter("srl_requests", "Accepted reasoning requests", ["endpoint"], registry=REGISTRY)
REJECTED = Counter("srl_rejected_requests", "Requests refused before reaching a worker", ["status"],
                   registry=REGISTRY)
STEPS = Counter("srl_steps", "Steps produced and relayed", registry=REGISTRY)
TRACES = Counter("srl_traces", "Finished traces by finish reason", ["finish_reason"], registry=REGISTRY)
STREAM_ERRORS = Counter("srl_stream_errors", "Runs that ended with an error event", ["type"], registry=REGISTRY)
STREAMS_CANCELLED = Counter("srl_streams_cancelled", "Streams whose client left before the end (run cancelled)",
                            registry=REGISTRY)
ACTIVE_STREAMS = Gauge("srl_active_streams", "Streams being relayed now", registry=REGISTRY)


def observe(event: dict) -> None:
    kind = event["type"]
    if kind == "step":
        STEPS.inc()
    elif kind == "done":
        TRACES.labels(str(event["trace"].get("finish_reason"))).inc()
    elif kind == "error":
        STREAM_ERRORS.labels(str(event["error"].get("type"))).inc()


class WorkerMetrics:
    """Exports what each inference worker last published, labelled `worker="0"`, `worker="1"`, ...

    The figures live in the workers (worker.StepAPI._figures); they copy them into a Manager dict
    keyed by LitServe's worker index, which `render` points this collector at, read at scrape
    time. The label is that index (the one recorded in each trace), never a process id:
    responses carry no PIDs (the log has them).

    - srl_worker_streams_running, srl_worker_stream_slots: runs going now, and the most it takes
    - srl_worker_runs_total, srl_worker_steps_total, srl_worker_tokens_total: since it started
    - srl_worker_info{device}: 1, naming the device LitServe gave it ("cpu", "cuda:1")
    - srl_engine_<name>: a batching engine's own gauges (vLLM's requests running, waiting, ...)
    """

    GAUGES = {"running": ("srl_worker_streams_running", "Streams this worker runs now"),
              "slots": ("srl_worker_stream_slots", "Streams this worker runs at most (streams_per_worker)")}
    COUNTERS = {"runs": ("srl_worker_runs", "Runs this worker started"),
                "steps": ("srl_worker_steps", "Steps this worker produced"),
                "tokens": ("srl_worker_tokens", "Generated token pieces this worker streamed")}

    def __init__(self) -> None:
        self.source: Any = None

    def collect(self):
        try:
            published = dict(self.source) if self.source is not None else {}
        except (OSError, EOFError, ConnectionError):  # the manager is gone: the server is stopping
            published = {}
        families: dict[str, Any] = {}

        def family(name: str, doc: str, kind=GaugeMetricFamily, labels=("worker",)):
            if name not in families:
                families[name] = kind(name, doc, labels=list(labels))
            return families[name]

        for worker, figures in sorted(published.items(), key=lambda item: str(item[0]).zfill(6)):
            label = str(worker)
            if not isinstance(figures, dict):
                continue
            family("srl_worker_info", "The device of each inference worker", labels=("worker", "device")
                   ).add_metric([label, str(figures.get("device", ""))], 1.0)
            for key, (name, doc) in self.GAUGES.items():
                if key in figures:
                    family(name, doc).add_metric([label], float(figures[key]))
            for key, (name, doc) in self.COUNTERS.items():
                if key in figures:
                    family(name, doc, CounterMetricFamily).add_metric([label], float(figures[key]))
            for name, value in (figures.get("engine") or {}).items():
                family(f"srl_engine_{name}", f"The engine's {name.replace('_', ' ')} (per worker)"
                       ).add_metric([label], float(value))
        yield from families.values()


WORKER_METRICS = WorkerMetrics()
REGISTRY.register(WORKER_METRICS)


def render(worker_figures: Any = None) -> tuple[bytes, str]:
    """The registry's text; `worker_figures`: the Manager dict the workers publish into."""
    if worker_figures is not None:
        WORKER_METRICS.source = worker_figures
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

"""Prometheus counters, counted in the API process from the events it relays.

Counting where the stream passes (not in the workers) avoids prometheus multiprocess mode: the
API process sees every step, every finished trace and every client that left early. A private
registry keeps these apart from anything else in the process.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily

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


class EngineGauges:
    """Exports what the workers' engines last published (`srl_engine_<name>{worker="0"}`).

    The figures live in the workers; they copy them into a Manager dict (keyed by process id) that
    `render` points this collector at, read at scrape time. The label is the worker's rank among
    the live workers, not its process id: responses carry no PIDs (the log has them)."""

    def __init__(self) -> None:
        self.source: Any = None

    def collect(self):
        try:
            published = dict(self.source) if self.source is not None else {}
        except (OSError, EOFError, ConnectionError):  # the manager is gone: the server is stopping
            published = {}
        families: dict[str, GaugeMetricFamily] = {}
        ranked = sorted(published.items(), key=lambda item: str(item[0]).zfill(12))  # by pid, numerically
        for worker, (_, gauges) in enumerate(ranked):
            for name, value in gauges.items():
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(
                        f"srl_engine_{name}", f"The engine's {name.replace('_', ' ')} (per worker)", labels=["worker"])
                family.add_metric([str(worker)], float(value))
        yield from families.values()


ENGINE_GAUGES = EngineGauges()
REGISTRY.register(ENGINE_GAUGES)


def render(engine_gauges: Any = None) -> tuple[bytes, str]:
    if engine_gauges is not None:
        ENGINE_GAUGES.source = engine_gauges
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

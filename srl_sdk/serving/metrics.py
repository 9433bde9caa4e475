"""Prometheus counters, counted in the API process from the events it relays.

Counting where the stream passes (not in the workers) avoids prometheus multiprocess mode: the
API process sees every step, every finished trace and every client that left early. A private
registry keeps these apart from anything else in the process.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

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


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

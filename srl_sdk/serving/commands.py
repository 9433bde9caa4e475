"""`srl serve`: start the streaming step server. litserve is imported only when the server starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from srl_sdk.cli import friendly_errors

    @app.command()
    @friendly_errors
    def serve(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML server config (see server/cpu.yaml)."),
        host: Optional[str] = typer.Option(None, help="127.0.0.1 (default), 0.0.0.0 or :: (these need an API key)."),
        port: Optional[int] = typer.Option(None, help="Port (1024-65535, default 8000)."),
        model: Optional[str] = typer.Option(None, help="GGUF path, model folder or alias 'smollm2'."),
        engine: Optional[str] = typer.Option(None, help="llama.cpp | transformers | vllm | onnx."),
        workers: Optional[int] = typer.Option(None, help="Workers per device, each with its own engine."),
        n_threads: Optional[int] = typer.Option(None, help="llama.cpp threads per worker."),
        n_ctx: Optional[int] = typer.Option(None, help="llama.cpp context length."),
        store: Optional[Path] = typer.Option(None, help="Trace store file (default $SRL_HOME/traces.db)."),
        api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable; or SRL_API_KEYS)."),
        max_steps: Optional[int] = typer.Option(None, help="Default max steps per request."),
        log_level: Optional[str] = typer.Option(None, help="critical | error | warning | info | debug."),
    ) -> None:
        """Serve steps over HTTP: /v1/reason (SSE), /v1/chat/completions (OpenAI), /v1/traces, /metrics."""
        from srl_sdk.serving.app import serve as run_server
        from srl_sdk.serving.config import load_server_config

        engine_options = {k: v for k, v in (("n_threads", n_threads), ("n_ctx", n_ctx)) if v is not None}
        cfg = load_server_config(
            config,
            host=host,
            port=port,
            model=model,
            engine=engine,
            workers=workers,
            store=store,
            api_keys=list(api_key) or None,
            engine_options=engine_options or None,
            log_level=log_level,
        )
        if max_steps is not None:
            cfg = cfg.model_copy(update={"reason": cfg.reason.model_copy(update={"max_steps": max_steps})})
        keys = f", {len(cfg.api_keys)} API key(s)" if cfg.api_keys else ", no API key (loopback only)"
        typer.echo(f"srl serve: {cfg.model_name} on {cfg.engine} at http://{cfg.host}:{cfg.port}{keys}", err=True)
        run_server(cfg)

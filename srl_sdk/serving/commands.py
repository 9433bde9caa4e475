"""`srl serve`: start the streaming step server. litserve is imported only when the server starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from srl_sdk.cli_common import friendly_errors

    @app.command()
    @friendly_errors
    def serve(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML server config (see server/cpu.yaml)."),
        host: Optional[str] = typer.Option(None, help="127.0.0.1 (default), 0.0.0.0 or :: (these need an API key)."),
        port: Optional[int] = typer.Option(None, help="Port (1024-65535, default 8000)."),
        model: Optional[str] = typer.Option(None, help="GGUF path, model folder, 'smollm2' or 'smollm2-srl'."),
        engine: Optional[str] = typer.Option(None, help="llama.cpp | transformers | vllm | onnx."),
        workers: Optional[int] = typer.Option(None, help="Workers per device, each with its own engine."),
        n_threads: Optional[int] = typer.Option(None, help="llama.cpp threads per worker."),
        n_ctx: Optional[int] = typer.Option(None, help="llama.cpp context length."),
        store: Optional[str] = typer.Option(None, help="Trace store: a file (default $SRL_HOME/traces.db) or a "
                                            "postgresql:// URL shared by several servers."),
        api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable). Visible in `ps`: "
                                          "prefer --api-key-file or SRL_API_KEYS."),
        api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                    help="File with the accepted API keys, one per line (# comments)."),
        no_store: bool = typer.Option(False, "--no-store", help="Keep no traces (store: false)."),
        max_steps: Optional[int] = typer.Option(None, help="Default max steps per request."),
        log_level: Optional[str] = typer.Option(None, help="critical | error | warning | info | debug."),
    ) -> None:
        """Serve steps over HTTP: /v1/reason (SSE), /v1/chat/completions (OpenAI), /v1/traces, /metrics."""
        from srl_sdk.serving.app import serve as run_server
        from srl_sdk.serving.config import load_server_config

        engine_options = {k: v for k, v in (("n_threads", n_threads), ("n_ctx", n_ctx)) if v is not None}
        if api_key:
            typer.echo("srl serve: --api-key shows the key to every user of this machine (ps, /proc) and to "
                       "every process the server starts; use --api-key-file PATH or SRL_API_KEYS", err=True)
        keys = [*api_key, *(read_key_file(api_key_file) if api_key_file is not None else [])]
        cfg = load_server_config(
            config,
            host=host,
            port=port,
            model=model,
            engine=engine,
            workers=workers,
            store=False if no_store else store,
            api_keys=keys or None,
            engine_options=engine_options or None,
            log_level=log_level,
        )
        if max_steps is not None:
            cfg = cfg.model_copy(update={"reason": cfg.reason.model_copy(update={"max_steps": max_steps})})
        keys_note = f", {len(cfg.keys)} API key(s)" if cfg.keys else ", no API key (loopback only)"
        scheme = "https" if cfg.ssl_certfile else "http"
        typer.echo(f"srl serve: {cfg.model_name} on {cfg.engine} at {scheme}://{cfg.host}:{cfg.port}{keys_note}", err=True)
        run_server(cfg)


def read_key_file(path: Path) -> list[str]:
    """API keys from a file, one per line; blank lines and `#` comments are skipped.

    Keys in a file (mode 0600) stay out of the command line, which every local user can read
    with `ps` and which every forked server process inherits."""
    from srl_sdk.errors import ConfigError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc}; pass a readable text file") from exc
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key; write one key per line")
    return keys

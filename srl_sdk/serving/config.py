"""ServerConfig: everything `srl serve` needs, from a YAML file, the environment and CLI flags.

Kept free of litserve/fastapi imports so `srl serve --help` and config validation stay instant.
Precedence: CLI flags > YAML file > defaults; `SRL_API_KEYS` (comma-separated) adds keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srl_sdk.engines.models import is_alias
from srl_sdk.errors import ConfigError
from srl_sdk.reasoning.driver import ReasonConfig

# LitServe 0.2.19 binds only these (it refuses any other address).
ALLOWED_HOSTS = ("127.0.0.1", "0.0.0.0", "::")
LOOPBACK_HOSTS = ("127.0.0.1",)


class ServerLimits(BaseModel):
    """Caps a request cannot exceed. They protect a shared server from one greedy client."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_steps: int = Field(default=32, ge=1, le=64)
    max_given_steps: int = Field(default=64, ge=0, le=512)
    max_step_tokens: int = Field(default=1024, ge=1, le=4096, description="per thought / per action")
    max_total_tokens: int = Field(default=8192, ge=1, le=65536)
    default_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    queue_timeout_s: float = Field(default=120.0, gt=0, description="LitServe: max wait in the queue (then 504)")
    streams_per_worker: int = Field(default=8, ge=1, le=64, description="concurrent streams one worker interleaves")


class ServerConfig(BaseModel):
    """How the server is bound, which model and engine it loads, where traces go, what is allowed."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1024, le=65535)
    model: str = "smollm2"
    served_model_name: str | None = Field(default=None, description="name clients pass as `model`")
    engine: str | None = Field(default="llama.cpp", description="llama.cpp | transformers | vllm | onnx")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="passed to the engine, e.g. n_ctx")
    accelerator: Literal["auto", "cpu", "cuda"] = "cpu"
    devices: int = Field(default=1, ge=1, le=64)
    workers: int = Field(default=1, ge=1, le=32, description="LitServe workers_per_device, each with its own engine")
    api_keys: list[str] = Field(default_factory=list)
    store: Path | None = Field(default=None, description="SQLite trace store; default $SRL_HOME/traces.db")
    limits: ServerLimits = Field(default_factory=ServerLimits)
    reason: ReasonConfig = Field(default_factory=ReasonConfig, description="defaults for every request")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    @field_validator("host")
    @classmethod
    def _known_host(cls, value: str) -> str:
        if value == "localhost":
            return "127.0.0.1"
        if value not in ALLOWED_HOSTS:
            raise ValueError(
                f"host {value!r} cannot be bound by LitServe; use 127.0.0.1 (local only), 0.0.0.0 or ::"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 8 or key != key.strip():
                raise ValueError("every API key must be at least 8 characters with no surrounding spaces")
        return keys

    @model_validator(mode="after")
    def _key_off_loopback(self) -> "ServerConfig":
        if self.host not in LOOPBACK_HOSTS and not self.api_keys:
            raise ValueError(
                f"binding to {self.host} exposes the server beyond this machine, so an API key is required: "
                "set SRL_API_KEYS=<key> (comma-separated for several), pass --api-key, or add api_keys in the "
                "YAML; or bind to 127.0.0.1"
            )
        if self.limits.default_timeout_s > self.limits.max_timeout_s:
            raise ValueError("limits.default_timeout_s must not exceed limits.max_timeout_s")
        return self

    @property
    def model_name(self) -> str:
        """The model id clients see in /v1/models and pass to /v1/chat/completions."""
        if self.served_model_name:
            return self.served_model_name
        if is_alias(self.model) or "/" not in self.model:
            return Path(self.model).stem if self.model.endswith(".gguf") else self.model
        return Path(self.model).name.removesuffix(".gguf")


def load_server_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> ServerConfig:
    """YAML file (optional) + overrides (None values ignored) + SRL_API_KEYS -> a validated config."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "engine_options":
            data["engine_options"] = {**data.get("engine_options", {}), **value}
        elif key == "api_keys":
            data["api_keys"] = [*data.get("api_keys", []), *value]
        else:
            data[key] = value
    env_keys = [k.strip() for k in os.environ.get("SRL_API_KEYS", "").split(",") if k.strip()]
    if env_keys:
        data["api_keys"] = [*data.get("api_keys", []), *env_keys]
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid server configuration{where}: {_short(exc)}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    from srl_sdk.errors import require

    yaml = require("yaml", "serve", package="pyyaml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the server config {path}: {exc}; pass an existing YAML file") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (host:, port:, model:, ...)")
    if data.get("store") is not None:
        store = Path(str(data["store"])).expanduser()
        data["store"] = store if store.is_absolute() else (path.parent / store)
    return data


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)

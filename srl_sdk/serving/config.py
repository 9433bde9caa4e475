"""ServerConfig: everything `srl serve` needs, from a YAML file, the environment and CLI flags.

Kept free of litserve/fastapi imports so `srl serve --help` and config validation stay instant.
Precedence: CLI flags > YAML file > defaults; `SRL_API_KEYS` (comma-separated) adds keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srl_sdk.engines.models import DEFAULT_MODEL, is_alias
from srl_sdk.errors import ConfigError
from srl_sdk.reasoning.driver import ReasonConfig

# LitServe 0.2.19 binds only these (it refuses any other address).
ALLOWED_HOSTS = ("127.0.0.1", "0.0.0.0", "::")
LOOPBACK_HOSTS = ("127.0.0.1",)
# The Host header names a loopback-bound server may be reached by (any port): anything else is
# a DNS-rebinding page that resolved its own name to 127.0.0.1.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class TraceRetention(BaseModel):
    """How much the trace store keeps (None: no bound). The oldest traces are deleted first."""

    model_config = ConfigDict(extra="forbid")

    max_traces: int | None = Field(default=None, ge=1, description="keep at most this many traces")
    max_age_days: float | None = Field(default=None, gt=0, description="delete traces older than this")


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
    queue_timeout_s: float = Field(default=120.0, gt=0, le=3600,
                                   description="max wait for a free stream slot (then 504); counts in timeout_s")
    streams_per_worker: int = Field(default=8, ge=1, le=64, description="concurrent streams one worker interleaves")
    max_queued: int = Field(default=16, ge=0, le=10_000,
                            description="requests that may wait for a slot beyond the ones running (then 429)")
    resume_grace_s: float = Field(default=30.0, ge=0, le=3600,
                                  description="how long a run outlives a lost connection, for a Last-Event-ID resume")


class ServerConfig(BaseModel):
    """How the server is bound, which model and engine it loads, where traces go, what is allowed."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1024, le=65535)
    model: str = DEFAULT_MODEL
    served_model_name: str | None = Field(default=None, description="name clients pass as `model`")
    engine: str | None = Field(default="llama.cpp", description="llama.cpp | transformers | vllm | onnx")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="passed to the engine, e.g. n_ctx")
    accelerator: Literal["auto", "cpu", "cuda"] = "cpu"
    devices: int = Field(default=1, ge=1, le=64)
    workers: int = Field(default=1, ge=1, le=32, description="LitServe workers_per_device, each with its own engine")
    api_keys: list[str] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list,
                                  description="keys that may also read every key's traces (they are API keys too)")
    store: Path | str | Literal[False] | None = Field(
        default=None, description="trace store: a SQLite file (default $SRL_HOME/traces.db), a postgresql:// URL "
                                  "(one store for several servers), or false: keep no traces")
    retention: TraceRetention = Field(default_factory=TraceRetention)
    allowed_hosts: list[str] | None = Field(
        default=None, description="Host header names accepted (any port; '*' any); default: loopback names on 127.0.0.1")
    cors_origins: list[str] = Field(default_factory=list, description="origins browsers may call from; none by default")
    ssl_certfile: Path | None = Field(default=None, description="PEM certificate: serve HTTPS (with ssl_keyfile)")
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile")
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

    @field_validator("store", mode="before")
    @classmethod
    def _store_path_or_url(cls, value: Any) -> Any:
        """A postgresql:// URL stays a string (a Path would fold its //); anything else is a file path."""
        from srl_sdk.store.factory import URL_SCHEMES, is_store_url, masked_url

        if value is None or value is False or isinstance(value, Path):
            return value
        if isinstance(value, str) and is_store_url(value):
            if not value.startswith(URL_SCHEMES):
                raise ValueError(f"{masked_url(value)} is not a store this server can use; give a file path "
                                 f"(SQLite) or a postgresql://user@host:5432/dbname URL")
            return value
        if isinstance(value, str):
            return Path(value).expanduser()
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _usable_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 8 or key != key.strip():
                raise ValueError("every API key must be at least 8 characters with no surrounding spaces")
        return keys

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        cleaned = [name.strip().lower().removeprefix("[").removesuffix("]") for name in names]
        if not cleaned or any(not name or ":" in name and name.count(":") < 2 for name in cleaned):
            raise ValueError("allowed_hosts lists host names without ports, e.g. [srl.example.com, 10.0.0.5]")
        return cleaned

    @model_validator(mode="after")
    def _key_off_loopback(self) -> "ServerConfig":
        if self.host not in LOOPBACK_HOSTS and not self.keys:
            raise ValueError(
                f"binding to {self.host} exposes the server beyond this machine, so an API key is required: "
                "set SRL_API_KEYS=<key> (comma-separated for several), pass --api-key, or add api_keys in the "
                "YAML; or bind to 127.0.0.1"
            )
        if self.accelerator == "cpu" and self.devices > 1:  # LitServe would quietly start `workers` workers
            raise ValueError(f"devices: {self.devices} counts GPUs (accelerator: cuda); on CPU every worker shares "
                             "the machine's cores: set workers: N instead (see server/README.md)")
        self._engine_options_fit()
        if self.limits.default_timeout_s > self.limits.max_timeout_s:
            raise ValueError("limits.default_timeout_s must not exceed limits.max_timeout_s")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a file; pass a PEM file")
        return self

    def _engine_options_fit(self) -> None:
        """engine_options are checked against the chosen engine's options now, not at worker setup."""
        from srl_sdk.engines import guess_engine
        from srl_sdk.engines.options import check_engine_options

        try:
            check_engine_options(self.engine or guess_engine(self.model), self.engine_options)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @property
    def keys(self) -> list[str]:
        """Every accepted API key (plain and admin)."""
        return [*self.api_keys, *self.admin_keys]

    @property
    def host_names(self) -> tuple[str, ...]:
        """Host header names this server answers: the configured list, else the loopback names on
        a loopback bind, else any ('*': an API key is then required, and it is what stops drive-by use)."""
        if self.allowed_hosts is not None:
            return tuple(self.allowed_hosts)
        return LOOPBACK_NAMES if self.host in LOOPBACK_HOSTS else ("*",)

    def trace_store(self):
        """The store this server writes and reads (a DisabledStore with `store: false`)."""
        from srl_sdk.store import DisabledStore, open_store

        if self.store is False:
            return DisabledStore()
        return open_store(self.store, max_traces=self.retention.max_traces,
                          max_age_days=self.retention.max_age_days)

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
            data["api_keys"] = [*(data.get("api_keys") or []), *value]
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
    for key in ("store", "ssl_certfile", "ssl_keyfile"):  # relative to the YAML file, like a config should be
        if data.get(key) not in (None, False) and "://" not in str(data[key]):
            file = Path(str(data[key])).expanduser()
            data[key] = file if file.is_absolute() else (path.parent / file)
    return data


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)

"""The streaming step server (`srl serve`). Light to import: litserve loads only in `app.serve`."""

from srl_sdk.serving.config import ServerConfig, ServerLimits, load_server_config

__all__ = ["ServerConfig", "ServerLimits", "load_server_config"]

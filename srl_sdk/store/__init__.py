"""Trace persistence: SQLite (embedded default) or PostgreSQL (shared by several servers)."""

from srl_sdk.store.factory import describe_store, is_store_url, open_store
from srl_sdk.store.sqlite import SCHEMA_VERSION, DisabledStore, TraceStore, TraceSummary, default_store_path

__all__ = ["SCHEMA_VERSION", "DisabledStore", "TraceStore", "TraceSummary", "default_store_path", "describe_store",
           "is_store_url", "open_store"]

"""Trace persistence."""

from srl_sdk.store.sqlite import SCHEMA_VERSION, DisabledStore, TraceStore, TraceSummary, default_store_path

__all__ = ["SCHEMA_VERSION", "DisabledStore", "TraceStore", "TraceSummary", "default_store_path"]

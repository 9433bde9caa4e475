"""open_store: one call that opens whichever trace store a path or URL names.

Why one factory: the server config, the CLI and the Reasoner all accept "a store" — a file path
(SQLite, the embedded default), a postgresql:// URL (one store shared by several servers), or
nothing (the default file). Each of them calls this, so a new backend is added in one place.
"""

from __future__ import annotations

import os
from typing import Any

from srl_sdk.store.postgres import URL_SCHEMES, is_postgres_url, masked_url

__all__ = ["URL_SCHEMES", "describe_store", "is_store_url", "open_store"]


def is_store_url(target: object) -> bool:
    """True for a URL (scheme://...) rather than a file path."""
    return isinstance(target, str) and "://" in target


def describe_store(target: str | os.PathLike[str] | None) -> str:
    """How a store may be named in messages: a path as is, a URL without its password."""
    if target is None:
        from srl_sdk.store.sqlite import default_store_path

        return str(default_store_path())
    return masked_url(str(target)) if is_store_url(target) else str(target)


def open_store(target: str | os.PathLike[str] | None = None, *, max_traces: int | None = None,
               max_age_days: float | None = None) -> Any:
    """A TraceStore (SQLite file; None: $SRL_HOME/traces.db) or a PostgresTraceStore (postgresql://
    or postgres:// URL). Any other URL scheme is a StoreError naming the ones understood."""
    if is_postgres_url(target):
        from srl_sdk.store.postgres import PostgresTraceStore

        return PostgresTraceStore(str(target), max_traces=max_traces, max_age_days=max_age_days)
    if is_store_url(target):
        from srl_sdk.errors import StoreError

        raise StoreError(
            f"unknown trace store URL {masked_url(str(target))}; use a file path (SQLite) or "
            f"{' / '.join(s + '…' for s in URL_SCHEMES)} (PostgreSQL)"
        )
    from srl_sdk.store.sqlite import TraceStore

    return TraceStore(target, max_traces=max_traces, max_age_days=max_age_days)

"""Trace store on PostgreSQL: one store that several `srl serve` replicas write at once.

Why: SQLite is one file on one machine; replicas behind a load balancer need one store they all
reach, so a trace written by one replica can be read (and a stream resumed) through another.
The table holds the same columns as the SQLite store and the TraceStore API is the same (save,
get, list, prune, count, close_unfinished, close), so the server and the CLI do not care which
one they have.

How it is kept safe with many writers:
- the schema is versioned: `schema_version` records each applied migration, and `MIGRATIONS`
  (ordered, append-only) are applied on open inside one transaction that first takes an advisory
  lock, so two servers starting at once apply them exactly once;
- every save is one upsert (a later save of the same trace keeps the owner the first one named);
- retention deletes run under a try-advisory-lock, so two replicas never prune at once (and
  never deadlock a save): the one that does not get the lock skips, the other prunes for both.

Connections come from psycopg's pool (threads share it). psycopg is the `postgres` extra,
imported only when a postgresql:// store is opened.
"""

from __future__ import annotations

import builtins
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from srl_sdk.core.steps import FinishReason, Trace
from srl_sdk.errors import MissingDependencyError, StoreError, TraceNotFoundError
from srl_sdk.store.sqlite import SCHEMA_VERSION, TraceSummary

URL_SCHEMES = ("postgresql://", "postgres://")
_CONNECT_TIMEOUT_S = 10
_POOL_MAX = 8
# advisory lock keys (any two constants; they only need to be the same in every srl-sdk)
_MIGRATION_LOCK = 0x5352_4C01
_PRUNE_LOCK = 0x5352_4C02

# version -> statements; append only (a released step never changes), so any older store upgrades
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE traces (
            id TEXT PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            problem TEXT NOT NULL,
            answer TEXT,
            finish_reason TEXT,
            n_steps INTEGER NOT NULL,
            model TEXT NOT NULL,
            engine TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX traces_created ON traces (created_at)",
    ),
    2: (
        "ALTER TABLE traces ADD COLUMN owner TEXT",
        "CREATE INDEX traces_owner_created ON traces (owner, created_at)",
    ),
}
assert max(MIGRATIONS) == SCHEMA_VERSION, "the PostgreSQL and SQLite stores share one schema version"

_COLUMNS = "id, created_at, problem, answer, finish_reason, n_steps, model, engine, body, owner"


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***: what error messages and logs may show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _require_psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise MissingDependencyError("psycopg", "postgres") from exc
    return psycopg, psycopg_pool


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; the body (JSON) escapes it, the summary columns replace it."""
    return value.replace("\x00", "\ufffd") if value is not None else None


class PostgresTraceStore:
    """save / get / list traces in a PostgreSQL database. Safe to share between threads.

    `url` is a libpq URL (postgresql://user:password@host:5432/dbname?sslmode=require); the
    database must exist and the user may create tables in it (the first open creates them).
    `max_traces` / `max_age_days` bound what the store keeps, as in the SQLite store."""

    shared = True  # several servers write it: an unfinished trace may be another server's live run

    def __init__(self, url: str, *, max_traces: int | None = None, max_age_days: float | None = None) -> None:
        if not is_postgres_url(url):
            raise StoreError(f"{masked_url(str(url))} is not a PostgreSQL URL; use postgresql://user@host:5432/dbname")
        psycopg, psycopg_pool = _require_psycopg()
        self.url = url
        self.path = None  # no file: what a server removes from error text comes from masked_url
        self.where = masked_url(url)
        self.max_traces = max_traces
        self.max_age_days = max_age_days
        self._errors = psycopg.Error
        self._lock = threading.Lock()
        options = {"connect_timeout": _CONNECT_TIMEOUT_S, "options": "-c timezone=UTC", "application_name": "srl-sdk"}
        try:
            with psycopg.connect(url, autocommit=True, **options) as conn:  # one clear error for a bad URL
                self._migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open the trace store {self.where}: {_first_line(exc)}; check the URL (host, port, "
                "user, password, database) and that the server accepts connections from here"
            ) from exc
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=_POOL_MAX, kwargs={"autocommit": True, **options},
            timeout=_CONNECT_TIMEOUT_S * 3, open=True, name="srl-traces")
        self.prune()

    # -- schema ---------------------------------------------------------------------------------
    def _migrate(self, conn: Any) -> None:
        """Apply the missing migrations in one transaction, under an advisory lock (servers that
        start at once wait for the first, then find nothing left to do)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                         "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has schema version {current}, newer than this srl-sdk understands "
                    f"({SCHEMA_VERSION}); upgrade srl-sdk"
                )
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_version")[0][0])

    # -- the TraceStore API ---------------------------------------------------------------------
    def save(self, trace: Trace, owner: str | None = None) -> str:
        """Insert or replace one trace; returns its id (`owner` as in the SQLite store)."""
        if not isinstance(trace, Trace):
            raise StoreError(f"can only save a Trace, not {type(trace).__name__}")
        row = (trace.id, trace.created_at, _text(trace.problem), _text(trace.answer), trace.finish_reason,
               len(trace.steps), _text(trace.model), _text(trace.engine), trace.model_dump_json(), owner)
        try:
            with self._open_pool().connection() as conn:
                conn.execute(
                    f"INSERT INTO traces ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at, problem = EXCLUDED.problem, "
                    "answer = EXCLUDED.answer, finish_reason = EXCLUDED.finish_reason, n_steps = EXCLUDED.n_steps, "
                    "model = EXCLUDED.model, engine = EXCLUDED.engine, body = EXCLUDED.body, "
                    "owner = COALESCE(EXCLUDED.owner, traces.owner)",
                    row,
                )
        except self._errors as exc:
            raise StoreError(
                f"could not save trace {trace.id} to {self.where}: {_first_line(exc)}; traces already stored are intact"
            ) from exc
        if trace.finish_reason is not None and (self.max_traces or self.max_age_days):
            self.prune()
        return trace.id

    def get(self, trace_id: str, owner: str | None = None) -> Trace:
        """The trace with this id; with `owner`, only if that owner made it (else not found)."""
        query, args = "SELECT body FROM traces WHERE id = %s", [trace_id]
        if owner is not None:
            query, args = query + " AND owner = %s", [trace_id, owner]
        rows = self._query(query, args)
        if not rows:
            raise TraceNotFoundError(trace_id)
        return Trace.model_validate_json(rows[0][0])

    def list(self, limit: int = 50, offset: int = 0, owner: str | None = None) -> list[TraceSummary]:
        """Newest first; with `owner`, only that owner's traces."""
        if limit < 1 or offset < 0:
            raise StoreError("limit must be >= 1 and offset >= 0")
        where, args = ("WHERE owner = %s ", [owner]) if owner is not None else ("", [])
        rows = self._query(
            "SELECT id, created_at, problem, answer, finish_reason, n_steps, model, engine "
            f"FROM traces {where}ORDER BY created_at DESC, id LIMIT %s OFFSET %s",
            [*args, limit, offset],
        )
        keys = ("id", "created_at", "problem", "answer", "finish_reason", "n_steps", "model", "engine")
        return [TraceSummary(**dict(zip(keys, row))) for row in rows]

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM traces")[0][0])

    def prune(self) -> int:
        """Apply `max_traces` / `max_age_days` now; returns how many traces were deleted (0 when
        another replica is pruning at this moment: it deletes the same rows)."""
        if not (self.max_traces or self.max_age_days):
            return 0
        deleted = 0
        try:
            with self._open_pool().connection() as conn, conn.transaction():
                if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PRUNE_LOCK,)).fetchone()[0]:
                    return 0
                if self.max_age_days:
                    cutoff = datetime.now(timezone.utc) - timedelta(days=self.max_age_days)
                    deleted += conn.execute("DELETE FROM traces WHERE created_at < %s", (cutoff,)).rowcount
                if self.max_traces:
                    deleted += conn.execute(
                        "DELETE FROM traces WHERE id IN "
                        "(SELECT id FROM traces ORDER BY created_at DESC, id OFFSET %s)",
                        (self.max_traces,),
                    ).rowcount
        except self._errors as exc:
            raise StoreError(f"could not prune {self.where}: {_first_line(exc)}") from exc
        return deleted

    def close_unfinished(self, reason: str, message: str, ids: builtins.list[str] | None = None,
                         before: datetime | None = None) -> int:
        """Mark traces with no finish_reason yet (all, those in `ids`, those created before
        `before`) as finished with `reason` and meta.error = {type: reason, message}; returns how
        many (see the SQLite store). Replicas pass `before`: a younger run may be another's, live."""
        if ids is not None and not ids:
            return 0
        where, args = "WHERE finish_reason IS NULL", builtins.list[Any]()
        if ids is not None:
            where, args = where + " AND id = ANY(%s)", [list(ids)]
        if before is not None:
            where, args = where + " AND created_at < %s", [*args, before]
        try:
            with self._open_pool().connection() as conn, conn.transaction():
                rows = conn.execute(f"SELECT id, body FROM traces {where} FOR UPDATE", args).fetchall()
                for trace_id, body in rows:
                    trace = Trace.model_validate_json(body)
                    trace.finish_reason = cast(FinishReason, reason)  # one of FinishReason, by the caller
                    trace.meta = {**trace.meta, "error": {"type": reason, "message": message}}
                    conn.execute("UPDATE traces SET finish_reason = %s, body = %s WHERE id = %s",
                                 (reason, trace.model_dump_json(), trace_id))
        except self._errors as exc:
            raise StoreError(f"could not close unfinished traces in {self.where}: {_first_line(exc)}") from exc
        return len(rows)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.close()

    # -- helpers --------------------------------------------------------------------------------
    def _open_pool(self) -> Any:
        pool = self._pool
        if pool is None:
            raise StoreError(f"the trace store {self.where} is closed")
        return pool

    def _query(self, query: str, args: builtins.list[Any] | tuple[Any, ...] = ()) -> builtins.list[tuple]:
        try:
            with self._open_pool().connection() as conn:
                return conn.execute(query, args).fetchall()
        except self._errors as exc:
            raise StoreError(f"could not read {self.where}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

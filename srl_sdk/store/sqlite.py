"""Trace store on SQLite: one file, WAL journal, versioned schema.

Traces are the audit record of what a model did, so the store favours not losing them: every
write is one transaction, WAL lets readers (the CLI, the server's GET endpoints) read while a
writer writes, and a trace that fails validation is refused before it touches the file.

Traces hold what people asked, so the file is private: a new store is created 0600 in a folder
created 0700 (SQLite gives its -wal and -shm files the mode of the database file). A server
records an `owner` per trace (a hash of the API key that made it, never the key) so one key
cannot read another's traces, and may bound the store's growth (`max_traces`, `max_age_days`):
pruning runs when the store opens and after each finished trace is saved, with indexed deletes.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel

from srl_sdk.core.paths import srl_home
from srl_sdk.core.steps import Trace
from srl_sdk.errors import StoreError, TraceNotFoundError

SCHEMA_VERSION = 2  # 2: traces.owner (version 1 files are upgraded in place when opened)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    problem TEXT NOT NULL,
    answer TEXT,
    finish_reason TEXT,
    n_steps INTEGER NOT NULL,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    body TEXT NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS traces_created ON traces (created_at);
"""
_COLUMNS = "id, created_at, problem, answer, finish_reason, n_steps, model, engine, body, owner"
FILE_MODE = 0o600


def default_store_path() -> Path:
    """$SRL_HOME/traces.db, else ~/.srl/traces.db."""
    return srl_home() / "traces.db"


class TraceSummary(BaseModel):
    id: str
    created_at: datetime
    problem: str
    answer: str | None
    finish_reason: str | None
    n_steps: int
    model: str
    engine: str


class TraceStore:
    """save / get / list traces in one SQLite file. Safe to share between threads.

    `max_traces` / `max_age_days` (None: unbounded) bound what the store keeps; the oldest
    traces go first."""

    shared = False  # one server per file: its unfinished traces at start-up are its own leftovers

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_traces: int | None = None,
                 max_age_days: float | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.max_traces = max_traces
        self.max_age_days = max_age_days
        self._local = threading.local()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
            self._connection().executescript(_SCHEMA)  # executescript commits on its own
            with self._connect() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {row[0]}, newer than this srl-sdk "
                        f"understands ({SCHEMA_VERSION}); upgrade srl-sdk"
                    )
                elif int(row[0]) < SCHEMA_VERSION:
                    columns = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
                    if "owner" not in columns:
                        conn.execute("ALTER TABLE traces ADD COLUMN owner TEXT")
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self.prune()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the trace store {self.path}: {exc}; "
                "point SRL_HOME (or --store) at a writable folder or move the damaged file away"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot create the trace store at {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT (disk full) leaves it open: never stay stuck
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def save(self, trace: Trace, owner: str | None = None) -> str:
        """Insert or replace one trace; returns its id.

        `owner` (a server's hash of an API key) is kept when a later save of the same trace
        passes None, so only the first save of a run needs to name it."""
        if not isinstance(trace, Trace):
            raise StoreError(f"can only save a Trace, not {type(trace).__name__}")
        body = trace.model_dump_json()
        try:
            with self._connect() as conn:
                conn.execute(
                    f"INSERT INTO traces ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET created_at = excluded.created_at, problem = excluded.problem, "
                    "answer = excluded.answer, finish_reason = excluded.finish_reason, n_steps = excluded.n_steps, "
                    "model = excluded.model, engine = excluded.engine, body = excluded.body, "
                    "owner = COALESCE(excluded.owner, traces.owner)",
                    (
                        trace.id,
                        trace.created_at.isoformat(),
                        trace.problem,
                        trace.answer,
                        trace.finish_reason,
                        len(trace.steps),
                        trace.model,
                        trace.engine,
                        body,
                        owner,
                    ),
                )
                if trace.finish_reason is not None and (self.max_traces or self.max_age_days):
                    self._prune(conn)
        except sqlite3.Error as exc:
            raise StoreError(
                f"could not save trace {trace.id} to {self.path}: {exc}; free disk space or point "
                "SRL_HOME (or --store) at a writable disk — traces already stored are intact"
            ) from exc
        return trace.id

    def get(self, trace_id: str, owner: str | None = None) -> Trace:
        """The trace with this id; with `owner`, only if that owner made it (else not found, so
        an id that exists and one that does not look the same)."""
        query, args = "SELECT body FROM traces WHERE id = ?", [trace_id]
        if owner is not None:
            query, args = query + " AND owner = ?", [trace_id, owner]
        try:
            row = self._connection().execute(query, args).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read {self.path}: {exc}") from exc
        if row is None:
            raise TraceNotFoundError(trace_id)
        return Trace.model_validate_json(row[0])

    def list(self, limit: int = 50, offset: int = 0, owner: str | None = None) -> list[TraceSummary]:
        """Newest first; with `owner`, only that owner's traces."""
        if limit < 1 or offset < 0:
            raise StoreError("limit must be >= 1 and offset >= 0")
        where, args = ("WHERE owner = ? ", [owner]) if owner is not None else ("", [])
        try:
            rows = self._connection().execute(
                "SELECT id, created_at, problem, answer, finish_reason, n_steps, model, engine "
                f"FROM traces {where}ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise StoreError(f"could not read {self.path}: {exc}") from exc
        keys = ("id", "created_at", "problem", "answer", "finish_reason", "n_steps", "model", "engine")
        return [TraceSummary(**dict(zip(keys, row))) for row in rows]

    def prune(self) -> int:
        """Apply `max_traces` / `max_age_days` now; returns how many traces were deleted."""
        if not (self.max_traces or self.max_age_days):
            return 0
        try:
            with self._connect() as conn:
                return self._prune(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"could not prune {self.path}: {exc}") from exc

    def _prune(self, conn: sqlite3.Connection) -> int:
        deleted = 0
        if self.max_age_days:
            cutoff = datetime.now(timezone.utc) - timedelta(days=self.max_age_days)
            deleted += conn.execute("DELETE FROM traces WHERE created_at < ?", (cutoff.isoformat(),)).rowcount
        if self.max_traces:
            deleted += conn.execute(
                "DELETE FROM traces WHERE id IN "
                "(SELECT id FROM traces ORDER BY created_at DESC, id LIMIT -1 OFFSET ?)",
                (self.max_traces,),
            ).rowcount
        return deleted

    def count(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    def close_unfinished(self, reason: str, message: str, ids: builtins.list[str] | None = None,
                         before: datetime | None = None) -> int:
        """Mark traces that have no finish_reason yet (all, those in `ids`, those created before
        `before`) as finished with `reason`, with meta.error = {type: reason, message}; returns how
        many. A server does this for the runs its dead worker left, and at start-up for the runs a
        killed server left: a trace nobody will ever finish must not look like one still in
        progress. One UPDATE, no reads."""
        where, args = "WHERE finish_reason IS NULL", []
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            args = list(ids)
        if before is not None:
            where += " AND created_at < ?"
            args.append(before.isoformat())
        error = json.dumps({"type": reason, "message": message})
        try:
            with self._connect() as conn:
                return conn.execute(
                    "UPDATE traces SET finish_reason = ?, "
                    f"body = json_set(body, '$.finish_reason', ?, '$.meta.error', json(?)) {where}",
                    (reason, reason, error, *args),
                ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"could not close unfinished traces in {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it does not exist (umask cannot widen it); SQLite then
    creates -wal and -shm with the same mode. An existing file keeps the mode its owner chose."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # an unusual umask (say 0o277) must not leave it unwritable
    finally:
        os.close(fd)


class DisabledStore:
    """What a server with `store: false` uses: saves keep nothing, reads find nothing.

    The worker's code stays the same whether traces are kept or not; the HTTP side answers the
    trace routes itself (storage is off) rather than reporting traces as missing."""

    path = None
    shared = False

    def save(self, trace: Trace, owner: str | None = None) -> str:
        return trace.id

    def get(self, trace_id: str, owner: str | None = None) -> Trace:
        raise TraceNotFoundError(trace_id)

    def list(self, limit: int = 50, offset: int = 0, owner: str | None = None) -> list[TraceSummary]:
        return []

    def prune(self) -> int:
        return 0

    def count(self) -> int:
        return 0

    def close_unfinished(self, reason: str, message: str, ids: builtins.list[str] | None = None,
                         before: datetime | None = None) -> int:
        return 0

    def close(self) -> None:
        pass

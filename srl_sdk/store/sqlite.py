"""Trace store on SQLite: one file, WAL journal, versioned schema.

Traces are the audit record of what a model did, so the store favours not losing them: every
write is one transaction, WAL lets readers (the CLI, the server's GET endpoints) read while a
writer writes, and a trace that fails validation is refused before it touches the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from srl_sdk.core.steps import Trace
from srl_sdk.errors import StoreError, TraceNotFoundError

SCHEMA_VERSION = 1

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
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_created ON traces (created_at);
"""


def default_store_path() -> Path:
    """$SRL_HOME/traces.db, else ~/.srl/traces.db."""
    home = Path(os.environ.get("SRL_HOME") or Path.home() / ".srl")
    return home / "traces.db"


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
    """save / get / list traces in one SQLite file. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def save(self, trace: Trace) -> str:
        """Insert or replace one trace; returns its id."""
        if not isinstance(trace, Trace):
            raise StoreError(f"can only save a Trace, not {type(trace).__name__}")
        body = trace.model_dump_json()
        try:
            with self._connect() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"could not save trace {trace.id} to {self.path}: {exc}; free disk space or point "
                "SRL_HOME (or --store) at a writable disk — traces already stored are intact"
            ) from exc
        return trace.id

    def get(self, trace_id: str) -> Trace:
        try:
            row = self._connection().execute("SELECT body FROM traces WHERE id = ?", (trace_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read {self.path}: {exc}") from exc
        if row is None:
            raise TraceNotFoundError(trace_id)
        return Trace.model_validate_json(row[0])

    def list(self, limit: int = 50, offset: int = 0) -> list[TraceSummary]:
        """Newest first."""
        if limit < 1 or offset < 0:
            raise StoreError("limit must be >= 1 and offset >= 0")
        try:
            rows = self._connection().execute(
                "SELECT id, created_at, problem, answer, finish_reason, n_steps, model, engine "
                "FROM traces ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read {self.path}: {exc}") from exc
        keys = ("id", "created_at", "problem", "answer", "finish_reason", "n_steps", "model", "engine")
        return [TraceSummary(**dict(zip(keys, row))) for row in rows]

    def count(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

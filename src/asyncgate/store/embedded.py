"""The embedded run store: SQLite on local disk, for one gateway with nothing else installed."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from asyncgate.errors import StoreError, StoreUnavailable
from asyncgate.runs import (
    Outcome,
    Run,
    RunResult,
    RunState,
    dump_error,
    dump_headers,
    dump_request,
    load_error,
    load_headers,
    load_request,
    now,
)

P = ParamSpec("P")
T = TypeVar("T")

DATABASE_FILE = "asyncgate.db"
LOCK_FILE = "asyncgate.lock"
#: Finished runs past their retention are deleted at most this often (get hides them sooner).
PURGE_INTERVAL = 5.0
#: How long a write waits for SQLite's own lock (a checkpoint, a backup tool) before failing.
BUSY_TIMEOUT = 5.0

_SYNCHRONOUS = frozenset({"off", "normal", "full", "extra"})

# The queue is the queued runs in ``seq`` order; requeue gives a run a new, last ``seq``.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    upstream_status INTEGER,
    error BLOB,
    request BLOB NOT NULL,
    body BLOB,
    owner TEXT,
    lease_until REAL,
    result_status INTEGER,
    result_headers BLOB,
    result_body BLOB,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS runs_queue ON runs (seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS runs_leases ON runs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS runs_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL;
"""

_COLUMNS = "run_id, state, attempt, created_at, started_at, finished_at, upstream_status, error, request"
_LIVE = "(expires_at IS NULL OR expires_at > :now)"
_NEXT_SEQ = "(SELECT coalesce(max(seq), 0) + 1 FROM runs)"
_FENCE = "run_id = :run_id AND state = 'running' AND attempt = :attempt"

_INSERT = f"""
INSERT INTO runs (run_id, seq, state, attempt, created_at, started_at, request, body)
VALUES (:run_id, {_NEXT_SEQ}, :state, :attempt, :created_at, :started_at, :request, :body)
"""
# One statement, so one transaction: a queued run is taken by exactly one claim.
_CLAIM = f"""
UPDATE runs SET state = 'running', attempt = attempt + 1, started_at = :now, owner = :owner, lease_until = :lease_until
WHERE run_id IN (SELECT run_id FROM runs WHERE state = 'queued' ORDER BY seq LIMIT :limit)
RETURNING seq, {_COLUMNS}
"""
_RENEW = f"UPDATE runs SET lease_until = :lease_until WHERE {_FENCE}"
_FINISH = f"""
UPDATE runs SET state = :state, finished_at = :now, upstream_status = :upstream_status, error = :error,
    result_status = :result_status, result_headers = :result_headers, result_body = :result_body,
    owner = NULL, lease_until = NULL, body = NULL, expires_at = :now + :retention
WHERE {_FENCE}
"""
_REQUEUE = f"""
UPDATE runs SET state = 'queued', seq = {_NEXT_SEQ}, owner = NULL, lease_until = NULL, started_at = NULL
WHERE {_FENCE}
"""
_EXPIRED = f"""
SELECT {_COLUMNS} FROM runs WHERE state = 'running' AND lease_until < :now ORDER BY lease_until LIMIT :limit
"""


def _decode_run(row: tuple[Any, ...]) -> Run:
    run_id, state, attempt, created_at, started_at, finished_at, upstream_status, error, request = row
    return Run(
        run_id=run_id,
        state=RunState(state),
        request=load_request(request),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        attempt=attempt,
        upstream_status=upstream_status,
        error=load_error(error),
    )


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # Autocommit: every statement here is its own transaction, and each is a whole change.
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.executescript(_SCHEMA)
        # Only this process uses the file (the lock says so), so whoever held a running run
        # before is gone: every lease is treated as run out, for recovery at once.
        db.execute("UPDATE runs SET lease_until = 0 WHERE state = 'running'")
    except BaseException:
        db.close()
        raise
    return db


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another asyncgate process is using {path.parent}") from None
    return fd


def _execute(db: sqlite3.Connection, sql: str, params: dict[str, Any]) -> int:
    """Run one statement and say how many rows it changed (cursors stay on the worker thread)."""
    return db.execute(sql, params).rowcount


def _claim(db: sqlite3.Connection, owner: str, limit: int, lease: float) -> list[Run]:
    started = now()
    params = {"now": started, "owner": owner, "lease_until": started + lease, "limit": limit}
    rows = db.execute(_CLAIM, params).fetchall()
    return [_decode_run(row[1:]) for row in sorted(rows)]


def _finish(db: sqlite3.Connection, run_id: str, attempt: int, outcome: Outcome, retention: float) -> bool:
    result = outcome.result
    params = {
        "run_id": run_id,
        "attempt": attempt,
        "state": outcome.state.value,
        "now": now(),
        "retention": retention,
        "upstream_status": outcome.upstream_status,
        "error": dump_error(outcome.error) if outcome.error else None,
        "result_status": result.status if result else None,
        "result_headers": dump_headers(result.headers) if result else None,
        "result_body": result.body if result else None,
    }
    return db.execute(_FINISH, params).rowcount == 1


class EmbeddedRunStore:
    """Runs in one SQLite file, used from one worker thread, by one process at a time."""

    def __init__(self, data_dir: str | Path, synchronous: str = "full") -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, not {synchronous!r}")
        self.data_dir = Path(data_dir)
        self.synchronous = synchronous
        # sqlite3 connections belong to the thread that made them, and its calls block.
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Set whenever a run is queued, so a waiting claim wakes without polling.
        self._work = asyncio.Event()
        self._next_purge = 0.0

    async def open(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.data_dir / LOCK_FILE)
        except OSError as exc:
            raise StoreError(f"cannot use {self.data_dir}: {exc}") from exc
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncgate-sqlite")
        path = self.data_dir / DATABASE_FILE
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._pool, _connect, path, self.synchronous)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open {path}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            if self._db is not None:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._db.close)
            self._pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
        self._pool = self._db = self._lock_fd = None

    async def _call(
        self, operation: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``operation(db, ...)`` on the worker thread."""
        if self._pool is None or self._db is None:
            raise StoreError("the embedded store is not open")
        call = functools.partial(operation, self._db, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except sqlite3.OperationalError as exc:  # locked, busy, disk I/O: may pass
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def ping(self) -> None:
        await self._call(_execute, "SELECT 1", {})

    async def create(self, run: Run, body: bytes) -> None:
        params = {
            "run_id": run.run_id,
            "state": run.state.value,
            "attempt": run.attempt,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "request": dump_request(run.request),
            "body": body,
        }
        await self._call(_execute, _INSERT, params)
        self._work.set()

    async def get(self, run_id: str) -> Run | None:
        row = await self._fetch(f"SELECT {_COLUMNS} FROM runs WHERE run_id = :run_id AND {_LIVE}", run_id)
        return None if row is None else _decode_run(row)

    async def request_body(self, run_id: str) -> bytes | None:
        row = await self._fetch(f"SELECT body FROM runs WHERE run_id = :run_id AND {_LIVE}", run_id)
        return None if row is None else row[0]

    async def result(self, run_id: str) -> RunResult | None:
        sql = f"SELECT result_status, result_headers, result_body FROM runs WHERE run_id = :run_id AND {_LIVE}"
        row = await self._fetch(sql, run_id)
        if row is None or row[0] is None:
            return None
        status, headers, body = row
        return RunResult(status=status, headers=load_headers(headers), body=body)

    async def _fetch(self, sql: str, run_id: str) -> tuple[Any, ...] | None:
        def fetch(db: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = db.execute(sql, {"run_id": run_id, "now": now()}).fetchone()
            return row

        return await self._call(fetch)

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        if limit <= 0:
            return []
        deadline = time.monotonic() + wait
        while True:
            # Cleared before looking, so a run queued after the look sets it again.
            self._work.clear()
            runs = await self._call(_claim, owner, limit, lease)
            remaining = deadline - time.monotonic()
            if runs or remaining <= 0:
                return runs
            try:
                async with asyncio.timeout(remaining):
                    await self._work.wait()
            except TimeoutError:
                return []

    async def renew(self, run_id: str, attempt: int, lease: float) -> bool:
        params = {"run_id": run_id, "attempt": attempt, "lease_until": now() + lease}
        return await self._call(_execute, _RENEW, params) == 1

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, retention: float) -> bool:
        if not outcome.state.is_final:
            raise ValueError(f"a run cannot finish as {outcome.state}")
        return await self._call(_finish, run_id, attempt, outcome, retention)

    async def requeue(self, run_id: str, attempt: int) -> bool:
        requeued = await self._call(_execute, _REQUEUE, {"run_id": run_id, "attempt": attempt}) == 1
        if requeued:
            self._work.set()
        return requeued

    async def expired(self, limit: int) -> list[Run]:
        await self._purge_if_due()
        if limit <= 0:
            return []

        def select(db: sqlite3.Connection) -> list[Run]:
            return [_decode_run(row) for row in db.execute(_EXPIRED, {"now": now(), "limit": limit})]

        return await self._call(select)

    async def _purge_if_due(self) -> None:
        """Delete finished runs past their retention; the executor calls expired() often enough."""
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL
        await self._call(_execute, "DELETE FROM runs WHERE expires_at <= :now", {"now": now()})

"""The embedded run store: SQLite on local disk, for one gateway with nothing else installed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from asyncgate.errors import ConfigError, QueueFull, ShareExceeded, StoreError, StoreUnavailable, WebhookUrlDeleted
from asyncgate.runs import (
    COMPLETED,
    EXPIRED_OUTCOME,
    Delivery,
    DeliveryState,
    ErrorCode,
    Outcome,
    Run,
    RunError,
    RunResult,
    RunState,
    dump_error,
    dump_headers,
    dump_request,
    load_error,
    load_headers,
    load_progress,
    load_request,
    now,
)
from asyncgate.store.base import (
    PURGE_BATCH,
    PURGE_ROUNDS,
    STARVATION_ROUND,
    UNFINISHED_TTL,
    CancelResult,
    ClaimRate,
    Created,
    DueDelivery,
    DueHook,
    Event,
    Finished,
    Hook,
    Idempotency,
    Identity,
    Lease,
    Liveness,
    QueuePosition,
    Share,
    delivery_event,
    finished_taking,
    state_event,
)
from asyncgate.store.sealing import KEY_FILE, Sealer, own_key

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
    expires_at REAL,
    caller TEXT NOT NULL DEFAULT '',
    webhook INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    dlv_state TEXT,
    dlv_attempts INTEGER NOT NULL DEFAULT 0,
    dlv_last_status INTEGER,
    dlv_last_error TEXT,
    dlv_next_at REAL,
    dlv_seq INTEGER NOT NULL DEFAULT 0,
    secrets BLOB,
    webhook_url BLOB,
    progress BLOB,
    progress_n INTEGER NOT NULL DEFAULT 0,
    progress_id INTEGER,
    hook_events TEXT,
    hook_seq INTEGER NOT NULL DEFAULT 0,
    hook_token INTEGER NOT NULL DEFAULT 0,
    hook_next_at REAL,
    hook_dropped INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    queue_deadline REAL,
    share TEXT,
    route_share TEXT
);
-- Lifecycle webhook deliveries waiting (start, output, progress), sent in seq order per run.
CREATE TABLE IF NOT EXISTS hooks (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
);
-- Whose runs these are: 'deployment', and 'upstream' (the URL the runs were accepted for).
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq);
CREATE INDEX IF NOT EXISTS idempotency_run ON idempotency (run_id);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_caller ON runs (caller, created_at);
CREATE INDEX IF NOT EXISTS runs_deliveries ON runs (dlv_next_at) WHERE dlv_state IN ('pending', 'delivering');
CREATE INDEX IF NOT EXISTS runs_leases ON runs (lease_until) WHERE state = 'running';
-- Each gateway's heartbeat (keep_alive): while it lasts, every run the gateway holds is alive
-- whatever its own lease_until, so a heartbeat writes one row, not one per held run (#18).
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, alive_until REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_cancels ON runs (owner) WHERE cancel_requested = 1 AND state = 'running';
CREATE INDEX IF NOT EXISTS runs_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL;
-- How many runs are queued, kept by triggers: counting the queue at each submission (for
-- limits.max_queued) cost time in proportion to its length, under the writer's lock.
CREATE TABLE IF NOT EXISTS queue_length (one INTEGER PRIMARY KEY CHECK (one = 1), runs INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS queue_insert AFTER INSERT ON runs WHEN NEW.state = 'queued'
BEGIN UPDATE queue_length SET runs = runs + 1; END;
CREATE TRIGGER IF NOT EXISTS queue_enter AFTER UPDATE OF state ON runs
WHEN OLD.state <> 'queued' AND NEW.state = 'queued'
BEGIN UPDATE queue_length SET runs = runs + 1; END;
CREATE TRIGGER IF NOT EXISTS queue_leave AFTER UPDATE OF state ON runs
WHEN OLD.state = 'queued' AND NEW.state <> 'queued'
BEGIN UPDATE queue_length SET runs = runs - 1; END;
CREATE TRIGGER IF NOT EXISTS queue_delete AFTER DELETE ON runs WHEN OLD.state = 'queued'
BEGIN UPDATE queue_length SET runs = runs - 1; END;
"""
# Made after the columns a file from an older version lacks have been added (see _connect).
_QUEUE_SCHEMA = """
-- The queue, in claim order: higher priorities first, then oldest. It replaces the index on
-- seq alone of the versions without priorities, so a queued run costs no more index to keep.
CREATE INDEX IF NOT EXISTS runs_ranked ON runs (priority DESC, seq) WHERE state = 'queued';
DROP INDEX IF EXISTS runs_queue;
CREATE INDEX IF NOT EXISTS runs_deadlines ON runs (queue_deadline)
WHERE state = 'queued' AND queue_deadline IS NOT NULL;
-- Runs queued or running per share (store/base.py Share): counted at create, and uncounted by
-- this trigger whichever way a run ends (finish, cancel, expiry, recovery) or is deleted, so a
-- count cannot leak. A counter at zero is deleted.
CREATE TABLE IF NOT EXISTS shares (name TEXT PRIMARY KEY, runs INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS share_end AFTER UPDATE OF state ON runs
WHEN OLD.state IN ('queued', 'running') AND NEW.state NOT IN ('queued', 'running')
    AND (OLD.share IS NOT NULL OR OLD.route_share IS NOT NULL)
BEGIN
    UPDATE shares SET runs = runs - 1 WHERE name IN (OLD.share, OLD.route_share);
    DELETE FROM shares WHERE runs <= 0;
END;
CREATE TRIGGER IF NOT EXISTS share_delete AFTER DELETE ON runs
WHEN OLD.state IN ('queued', 'running') AND (OLD.share IS NOT NULL OR OLD.route_share IS NOT NULL)
BEGIN
    UPDATE shares SET runs = runs - 1 WHERE name IN (OLD.share, OLD.route_share);
    DELETE FROM shares WHERE runs <= 0;
END;
"""
#: Columns added since the first version of the file, with their declarations.
_ADDED_COLUMNS = {
    "webhook_url": "BLOB",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "queue_deadline": "REAL",
    "share": "TEXT",
    "route_share": "TEXT",
    "progress": "BLOB",
    "progress_n": "INTEGER NOT NULL DEFAULT 0",
    "progress_id": "INTEGER",
    "hook_events": "TEXT",
    "hook_seq": "INTEGER NOT NULL DEFAULT 0",
    "hook_token": "INTEGER NOT NULL DEFAULT 0",
    "hook_next_at": "REAL",
    "hook_dropped": "INTEGER NOT NULL DEFAULT 0",
}
_QUEUE_LENGTH = "SELECT runs FROM queue_length"

_COLUMNS = (
    "run_id, state, attempt, created_at, started_at, finished_at, upstream_status, error, request, caller, "
    "cancel_requested, dlv_state, dlv_attempts, dlv_last_status, dlv_last_error, dlv_next_at, progress, hook_seq"
)
_RESULT_COLUMNS = "result_status, result_headers, result_body"
_LIVE = "(expires_at IS NULL OR expires_at > :now)"
_NEXT_SEQ = "(SELECT coalesce(max(seq), 0) + 1 FROM runs)"
_FENCE = "run_id = :run_id AND state = 'running' AND attempt = :attempt"

_INSERT = f"""
INSERT INTO runs (run_id, seq, state, attempt, created_at, started_at, request, body, caller, webhook, secrets,
    webhook_url, hook_events, priority, queue_deadline, share, route_share)
VALUES (:run_id, {_NEXT_SEQ}, :state, :attempt, :created_at, :started_at, :request, :body, :caller, :webhook,
    :secrets, :webhook_url, :hook_events, :priority, :queue_deadline, :share, :route_share)
"""
# One statement, so one transaction: a queued run is taken by exactly one claim. Highest
# priority first, then oldest: the order of the index runs_ranked, so no sort.
_TAKE = """
UPDATE runs SET state = 'running', attempt = attempt + 1, started_at = :now, owner = :owner, lease_until = :lease_until
WHERE run_id IN ({which})
RETURNING -priority, seq, {columns}, secrets
"""
_CLAIM = _TAKE.format(
    which="SELECT run_id FROM runs WHERE state = 'queued' ORDER BY priority DESC, seq LIMIT :limit", columns=_COLUMNS
)
# The starvation round's run: the oldest of the lowest priority that has queued runs.
_CLAIM_BOTTOM = _TAKE.format(
    which="SELECT run_id FROM runs WHERE state = 'queued' AND priority = "
    "(SELECT min(priority) FROM runs WHERE state = 'queued') ORDER BY seq LIMIT 1",
    columns=_COLUMNS,
)
_EXPIRE_QUEUED = f"""
UPDATE runs SET state = 'expired', finished_at = :now, error = :error, body = NULL, secrets = NULL
WHERE run_id IN (
    SELECT run_id FROM runs WHERE state = 'queued' AND queue_deadline < :now AND attempt = 0
    ORDER BY queue_deadline LIMIT :limit
)
RETURNING {_COLUMNS}
"""
_AHEAD = """
SELECT count(*) FROM runs WHERE state = 'queued' AND (priority > :priority OR (priority = :priority AND seq < (
    SELECT seq FROM runs WHERE run_id = :run_id)))
"""
_RENEW = f"UPDATE runs SET lease_until = :lease_until WHERE {_FENCE} RETURNING cancel_requested"
# The end of an attempt, fenced, and of the run (as _CLOSE, in the same row write): a webhook
# makes its delivery pending and keeps the run until the delivery is final; without one,
# retention starts now. With :take, the delivery is taken for its first attempt instead, as
# _TAKE_DELIVERIES would take it (see ``Execution.finish``), unless lifecycle deliveries of the
# run wait first; the reply says which.
_TAKEN = "(:take IS NOT NULL AND webhook_url IS NOT NULL AND NOT EXISTS (SELECT 1 FROM hooks WHERE run_id = :run_id))"
_FINISH = f"""
UPDATE runs SET state = :state, finished_at = :now, upstream_status = :upstream_status, error = :error,
    result_status = :result_status, result_headers = :result_headers, result_body = :result_body,
    owner = NULL, lease_until = NULL, body = NULL, cancel_requested = 0, secrets = NULL,
    dlv_state = CASE WHEN webhook != 1 THEN NULL WHEN {_TAKEN} THEN 'delivering' ELSE 'pending' END,
    dlv_next_at = CASE WHEN webhook != 1 THEN NULL WHEN {_TAKEN} THEN :now + :take ELSE :now END,
    dlv_seq = dlv_seq + (webhook = 1 AND {_TAKEN}),
    expires_at = CASE webhook WHEN 1 THEN NULL ELSE :now + :retention END
WHERE {_FENCE}
RETURNING dlv_state = 'delivering', dlv_seq, webhook_url
"""
# The end of a run: a webhook makes its delivery pending and keeps the run until the delivery
# is final; without one, retention starts now.
_CLOSE = """
UPDATE runs SET
    dlv_state = CASE webhook WHEN 1 THEN 'pending' END,
    dlv_next_at = CASE webhook WHEN 1 THEN :now END,
    expires_at = CASE webhook WHEN 1 THEN NULL ELSE :now + :retention END
WHERE run_id = :run_id
"""
_CANCEL_QUEUED = """
UPDATE runs SET state = 'cancelled', finished_at = :now, error = :error, body = NULL, secrets = NULL
WHERE run_id = :run_id AND state = 'queued'
"""
_EVENT = "INSERT INTO events (run_id, data) VALUES (:run_id, :data)"
_REQUEUE = f"""
UPDATE runs SET state = 'queued', seq = {_NEXT_SEQ}, owner = NULL, lease_until = NULL, started_at = NULL
WHERE {_FENCE}
"""
_TAKE_DELIVERIES = """
UPDATE runs SET dlv_state = 'delivering', dlv_next_at = :lease_until, dlv_seq = dlv_seq + 1
WHERE run_id IN (
    SELECT run_id FROM runs WHERE dlv_state IN ('pending', 'delivering') AND dlv_next_at <= :now
        AND NOT EXISTS (SELECT 1 FROM hooks WHERE hooks.run_id = runs.run_id)
    ORDER BY dlv_next_at LIMIT :limit
)
RETURNING run_id, dlv_seq
"""
# A final delivery needs its URL no more.
_RECORD_DELIVERY = """
UPDATE runs SET dlv_state = :state, dlv_attempts = :attempts, dlv_last_status = :last_status,
    dlv_last_error = :last_error, dlv_next_at = :next_at,
    expires_at = CASE WHEN :final THEN :now + :retention ELSE expires_at END,
    webhook_url = CASE WHEN :final THEN NULL ELSE webhook_url END
WHERE run_id = :run_id AND dlv_seq = :token
"""
_REDELIVER = f"""
UPDATE runs SET dlv_state = 'pending', dlv_next_at = :now, dlv_seq = dlv_seq + 1, expires_at = :now + :unfinished,
    webhook_url = coalesce(:webhook_url, webhook_url)
WHERE run_id = :run_id AND webhook = 1 AND state IN ('succeeded', 'failed', 'cancelled', 'expired') AND {_LIVE}
RETURNING webhook_url IS NOT NULL
"""
# A run's lease is its own (claim, renew) or its holder's heartbeat, whichever runs out later.
_EXPIRED = f"""
SELECT {_COLUMNS} FROM runs WHERE state = 'running' AND lease_until < :now
    AND NOT EXISTS (SELECT 1 FROM owners WHERE owners.owner = runs.owner AND owners.alive_until >= :now)
ORDER BY lease_until LIMIT :limit
"""


def _decode_run(row: tuple[Any, ...]) -> Run:
    run_id, state, attempt, created_at, started_at, finished_at, upstream_status, error, request, *rest = row
    caller, cancel_requested, dlv_state, dlv_attempts, dlv_last_status, dlv_last_error, dlv_next_at, *more = rest
    progress, hook_seq = more
    delivery = None
    if dlv_state is not None:
        delivery = Delivery(DeliveryState(dlv_state), dlv_attempts, dlv_last_status, dlv_last_error, dlv_next_at)
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
        caller=caller,
        cancel_requested=bool(cancel_requested),
        delivery=delivery,
        progress=load_progress(progress),
        hook_seq=hook_seq,
    )


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # Autocommit: every statement here is its own transaction, and each is a whole change.
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.executescript(_SCHEMA)
        # A file made by an older version lacks the columns added since.
        found = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for column, declaration in _ADDED_COLUMNS.items():
            if column not in found:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} {declaration}")
        db.executescript(_QUEUE_SCHEMA)
        # Counted afresh at each start: a file from a version without the triggers is right too.
        db.execute("INSERT OR REPLACE INTO queue_length SELECT 1, count(*) FROM runs WHERE state = 'queued'")
        # Only this process uses the file (the lock says so), so whoever held a running run
        # before is gone: every lease is treated as run out, for recovery at once.
        db.execute("UPDATE runs SET lease_until = 0 WHERE state = 'running'")
        db.execute("DELETE FROM owners")
        db.execute("CREATE INDEX IF NOT EXISTS runs_hooks ON runs (hook_next_at) WHERE hook_next_at IS NOT NULL")
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


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Several statements as one change: a savepoint, so the change can share the writer's
    transaction with others (see ``_write_together``) and still be undone alone."""
    db.execute("SAVEPOINT change")
    try:
        yield
    except BaseException:
        # Some errors (disk full, I/O) make SQLite roll the whole transaction back itself.
        if db.in_transaction:
            db.execute("ROLLBACK TO change")
            db.execute("RELEASE change")
        raise
    db.execute("RELEASE change")


def _write_together(db: sqlite3.Connection, writes: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Make every write in one transaction, so they share one commit (one fsync under
    synchronous=full); each is atomic alone (one statement, or a ``_transaction``).

    Returns each write's answer, or the exception that undid it alone (a full queue, a
    constraint). An error that undoes the transaction itself is raised: it fails them all.
    """
    answers: list[Any] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            try:
                answers.append(write(db))
            except Exception as exc:
                if not db.in_transaction:
                    raise  # SQLite rolled back the whole transaction: the writes before are gone too
                answers.append(exc)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return answers


def _log(db: sqlite3.Connection, run_id: str, event: dict[str, Any]) -> None:
    db.execute(_EVENT, {"run_id": run_id, "data": orjson.dumps(event)})


def _close(db: sqlite3.Connection, run_id: str, event: dict[str, Any], retention: float) -> None:
    _log(db, run_id, event)
    db.execute(_CLOSE, {"run_id": run_id, "now": now(), "retention": retention})


_REMEMBER_KEY = "INSERT OR REPLACE INTO idempotency (key, run_id, fingerprint) VALUES (:key, :run_id, :fingerprint)"


def _count_shares(db: sqlite3.Connection, shares: Sequence[Share]) -> None:
    """Count the new run against each share, or raise ShareExceeded (the savepoint undoes the rest)."""
    for share in shares:
        row = db.execute("SELECT runs FROM shares WHERE name = :name", {"name": share.key}).fetchone()
        if row is not None and row[0] >= share.limit:
            raise ShareExceeded(share.key, share.limit, share.where)
        db.execute(
            "INSERT INTO shares (name, runs) VALUES (:name, 1) ON CONFLICT (name) DO UPDATE SET runs = runs + 1",
            {"name": share.key},
        )


def _create(
    db: sqlite3.Connection,
    params: dict[str, Any],
    idempotency: Idempotency | None,
    max_queued: int,
    shares: Sequence[Share],
) -> Created:
    run_id = params["run_id"]
    with _transaction(db):
        if idempotency is not None:
            # Also finds a run created earlier in the same group commit.
            named = db.execute(
                f"SELECT i.run_id, i.fingerprint FROM idempotency i JOIN runs r ON r.run_id = i.run_id "
                f"WHERE i.key = :key AND {_LIVE.replace('expires_at', 'r.expires_at')}",
                {"key": idempotency.key, "now": now()},
            ).fetchone()
            if named is not None:
                return Created(named[0], replayed=True, same_request=named[1] == idempotency.fingerprint)
        if max_queued > 0:
            (queued,) = db.execute(_QUEUE_LENGTH).fetchone()
            if queued >= max_queued:
                raise QueueFull()
        _count_shares(db, shares)
        db.execute(_INSERT, params)
        _log(db, run_id, state_event(RunState.QUEUED, 0, params["created_at"]))
        if idempotency is not None:
            key = {"key": idempotency.key, "run_id": run_id, "fingerprint": idempotency.fingerprint}
            db.execute(_REMEMBER_KEY, key)
    return Created(run_id)


def _claim(db: sqlite3.Connection, owner: str, limit: int, lease: float, sealer: Sealer, lowest: bool) -> list[Run]:
    started = now()
    params: dict[str, Any] = {"now": started, "owner": owner, "lease_until": started + lease, "limit": limit}
    with _transaction(db):
        bottom = []
        if lowest:
            bottom = db.execute(_CLAIM_BOTTOM, params).fetchall()
            params["limit"] = limit - len(bottom)
        rows = db.execute(_CLAIM, params).fetchall() if params["limit"] > 0 else []
        runs = []
        # In the order they were taken (RETURNING keeps none): the bottom's, then by priority and age.
        for row in bottom + sorted(rows):
            run = _decode_run(row[2:-1])
            # Only the holder of a run ever sees its credentials, to replay them.
            runs.append(dataclasses.replace(run, request=sealer.join(run.request, row[-1])))
        for run in runs:
            _log(db, run.run_id, state_event(RunState.RUNNING, run.attempt, started))
    return runs


def _renew(db: sqlite3.Connection, run_id: str, attempt: int, lease: float) -> Lease:
    row = db.execute(_RENEW, {"run_id": run_id, "attempt": attempt, "lease_until": now() + lease}).fetchone()
    if row is None:
        return Lease.LOST
    return Lease.CANCEL if row[0] else Lease.HELD


def _renew_all(db: sqlite3.Connection, held: Sequence[tuple[str, int]], lease: float) -> list[Lease]:
    return [_renew(db, run_id, attempt, lease) for run_id, attempt in held]


def _keep_alive(db: sqlite3.Connection, owner: str, lease: float) -> tuple[str, ...]:
    """Keep every run ``owner`` holds alive for ``lease`` s with one row of its own, as the Redis
    store does with one key; the ids of its runs whose cancellation was asked."""
    with _transaction(db):
        db.execute(
            "INSERT INTO owners (owner, alive_until) VALUES (:owner, :alive_until) "
            "ON CONFLICT (owner) DO UPDATE SET alive_until = excluded.alive_until",
            {"owner": owner, "alive_until": now() + lease},
        )
        rows = db.execute(
            "SELECT run_id FROM runs WHERE owner = :owner AND cancel_requested = 1 AND state = 'running'",
            {"owner": owner},
        ).fetchall()
    return tuple(run_id for (run_id,) in rows)


def _append_output(
    db: sqlite3.Connection, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
) -> list[str] | None:
    with _transaction(db):
        found = db.execute(
            f"SELECT 1 FROM runs WHERE {_FENCE}",
            {"run_id": run_id, "attempt": attempt},
        ).fetchone()
        if found is None:
            return None
        ids = [str(db.execute(_EVENT, {"run_id": run_id, "data": orjson.dumps(event)}).lastrowid) for event in events]
        db.executemany("DELETE FROM events WHERE seq = ? AND run_id = ?", [(int(seq), run_id) for seq in drop])
    return ids


_REPORT_PROGRESS = f"""
UPDATE runs SET progress = :data, progress_n = progress_n + 1 WHERE {_FENCE}
RETURNING progress_n, progress_id, hook_events
"""


def _add_hook(db: sqlite3.Connection, run_id: str, event: str, body: bytes, max_hooks: int) -> None:
    """Queue a lifecycle delivery of a run found holding (see RunStore.add_hook)."""
    (waiting,) = db.execute("SELECT count(*) FROM hooks WHERE run_id = ?", (run_id,)).fetchone()
    if event == "progress" and waiting >= 2:
        last = db.execute("SELECT seq, event FROM hooks WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,))
        seq, kind = last.fetchone()
        if kind == "progress":
            db.execute("UPDATE hooks SET body = ? WHERE run_id = ? AND seq = ?", (body, run_id, seq))
            return
    if waiting >= max_hooks:
        db.execute("UPDATE runs SET hook_dropped = hook_dropped + 1 WHERE run_id = ?", (run_id,))
        return
    (dropped,) = db.execute("SELECT hook_dropped FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    (seq,) = db.execute(
        "UPDATE runs SET hook_seq = hook_seq + 1, hook_dropped = 0, hook_next_at = coalesce(hook_next_at, ?) "
        "WHERE run_id = ? RETURNING hook_seq",
        (now(), run_id),
    ).fetchone()
    db.execute(
        "INSERT INTO hooks (run_id, seq, event, body, dropped) VALUES (?, ?, ?, ?, ?)",
        (run_id, seq, event, body, dropped),
    )


def _queue_hook(db: sqlite3.Connection, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool:
    with _transaction(db):
        if db.execute(f"SELECT 1 FROM runs WHERE {_FENCE}", {"run_id": run_id, "attempt": attempt}).fetchone() is None:
            return False
        _add_hook(db, run_id, event, body, max_hooks)
    return True


_TAKE_HOOKS = """
UPDATE runs SET hook_next_at = :lease_until, hook_token = hook_token + 1
WHERE run_id IN (SELECT run_id FROM runs WHERE hook_next_at <= :now ORDER BY hook_next_at LIMIT :limit)
RETURNING run_id, hook_token
"""


def _hook_due(db: sqlite3.Connection, at: float) -> bool:
    return db.execute("SELECT 1 FROM runs WHERE hook_next_at <= ? LIMIT 1", (at,)).fetchone() is not None


def _take_hooks(db: sqlite3.Connection, limit: int, lease: float, sealer: Sealer) -> list[DueHook]:
    at = now()
    due = []
    with _transaction(db):
        for run_id, token in db.execute(_TAKE_HOOKS, {"now": at, "lease_until": at + lease, "limit": limit}).fetchall():
            first = db.execute(
                "SELECT seq, event, body, attempts, dropped FROM hooks WHERE run_id = ? ORDER BY seq LIMIT 1", (run_id,)
            ).fetchone()
            if first is None:
                db.execute("UPDATE runs SET hook_next_at = NULL WHERE run_id = ?", (run_id,))
                continue
            row = db.execute(f"SELECT {_COLUMNS}, webhook_url FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            run = _decode_run(row[:-1])
            run = dataclasses.replace(run, request=sealer.join_webhook(run.request, row[-1]))
            seq, event, body, attempts, dropped = first
            due.append(DueHook(run, Hook(seq, event, bytes(body), attempts, dropped), token))
    return due


def _record_hook(
    db: sqlite3.Connection, run_id: str, token: int, seq: int, attempts: int, next_at: float | None
) -> bool:
    with _transaction(db):
        held = db.execute("SELECT 1 FROM runs WHERE run_id = ? AND hook_token = ?", (run_id, token)).fetchone()
        first = db.execute("SELECT min(seq) FROM hooks WHERE run_id = ?", (run_id,)).fetchone()
        if held is None or first[0] != seq:
            return False
        if next_at is not None:
            db.execute("UPDATE hooks SET attempts = ? WHERE run_id = ? AND seq = ?", (attempts, run_id, seq))
            db.execute("UPDATE runs SET hook_next_at = ? WHERE run_id = ?", (next_at, run_id))
            return True
        db.execute("DELETE FROM hooks WHERE run_id = ? AND seq = ?", (run_id, seq))
        more = db.execute("SELECT 1 FROM hooks WHERE run_id = ? LIMIT 1", (run_id,)).fetchone()
        db.execute("UPDATE runs SET hook_next_at = ? WHERE run_id = ?", (now() if more else None, run_id))
    return True


def _report_progress(
    db: sqlite3.Connection, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
) -> str | None:
    data = orjson.dumps(event)
    with _transaction(db):
        found = db.execute(_REPORT_PROGRESS, {"run_id": run_id, "attempt": attempt, "data": data}).fetchone()
        if found is None:
            return None
        count, previous, wanted = found
        if "progress" in (wanted or "").split(","):
            _add_hook(db, run_id, "progress", hook, max_hooks)
        seq = db.execute(_EVENT, {"run_id": run_id, "data": data}).lastrowid
        # Past the kept bound each report replaces the previous one in the log (as in Redis).
        if count > kept + 1 and previous is not None:
            db.execute("DELETE FROM events WHERE seq = ? AND run_id = ?", (previous, run_id))
        db.execute("UPDATE runs SET progress_id = ? WHERE run_id = ?", (seq, run_id))
    return str(seq)


def _progress_key(db: sqlite3.Connection) -> bytes:
    with _transaction(db):
        db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('progress_key', ?)", (secrets.token_hex(32),))
        (value,) = db.execute("SELECT value FROM meta WHERE name = 'progress_key'").fetchone()
    return bytes.fromhex(value)


def _requeue(db: sqlite3.Connection, run_id: str, attempt: int) -> bool:
    with _transaction(db):
        if db.execute(_REQUEUE, {"run_id": run_id, "attempt": attempt}).rowcount != 1:
            return False
        _log(db, run_id, state_event(RunState.QUEUED, attempt, now()))
    return True


def _cancel(db: sqlite3.Connection, run_id: str, retention: float) -> CancelResult:
    with _transaction(db):
        row = db.execute(f"SELECT state FROM runs WHERE run_id = :run_id AND {_LIVE}", {"run_id": run_id, "now": now()})
        found = row.fetchone()
        if found is None:
            return CancelResult.MISSING
        state = RunState(found[0])
        if state is RunState.RUNNING:
            db.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = :run_id", {"run_id": run_id})
            return CancelResult.REQUESTED
        if state is not RunState.QUEUED:
            return CancelResult.FINISHED
        at = now()
        error = dump_error(RunError(ErrorCode.CANCELLED, "cancelled by a client before it started"))
        db.execute(_CANCEL_QUEUED, {"run_id": run_id, "now": at, "error": error})
        _close(db, run_id, state_event(RunState.CANCELLED, 0, at), retention)
    return CancelResult.CANCELLED


def _expire_queued(db: sqlite3.Connection, limit: int, retention: float) -> list[Run]:
    at = now()
    with _transaction(db):
        params = {"now": at, "limit": limit, "error": dump_error(EXPIRED_OUTCOME.error)}
        runs = [_decode_run(row) for row in db.execute(_EXPIRE_QUEUED, params).fetchall()]
        for run in runs:
            _close(db, run.run_id, state_event(RunState.EXPIRED, 0, at, EXPIRED_OUTCOME), retention)
    return runs


def _take_deliveries(db: sqlite3.Connection, limit: int, lease: float, sealer: Sealer) -> list[DueDelivery]:
    at = now()
    with _transaction(db):
        taken = db.execute(_TAKE_DELIVERIES, {"now": at, "lease_until": at + lease, "limit": limit}).fetchall()
        due = []
        # With its result, as the Redis store reads it: an attempt then needs no read of its own,
        # which cost each delivery of a wave another trip through the database thread (bench S6).
        sql = f"SELECT {_COLUMNS}, webhook_url, {_RESULT_COLUMNS}, {_LIVE} FROM runs WHERE run_id = :run_id"
        for run_id, token in taken:
            *columns, url, status, headers, body, live = db.execute(sql, {"run_id": run_id, "now": at}).fetchone()
            run = _decode_run(tuple(columns))
            result = (
                RunResult(status=status, headers=load_headers(headers), body=body)
                if live and status is not None
                else None
            )
            request = sealer.join_webhook(run.request, url)
            due.append(DueDelivery(dataclasses.replace(run, request=request), token, result, prefetched=True))
    return due


def _record_delivery(db: sqlite3.Connection, run_id: str, token: int, delivery: Delivery, retention: float) -> bool:
    at = now()
    params = {
        "run_id": run_id,
        "token": token,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "next_at": None if delivery.state.is_final else delivery.next_attempt_at,
        "final": delivery.state.is_final,
        "now": at,
        "retention": retention,
    }
    with _transaction(db):
        if db.execute(_RECORD_DELIVERY, params).rowcount != 1:
            return False
        _log(db, run_id, delivery_event(delivery, at))
    return True


def _events(db: sqlite3.Connection, run_id: str, after: int) -> list[Event]:
    rows = db.execute(
        "SELECT seq, data FROM events WHERE run_id = :run_id AND seq > :after ORDER BY seq",
        {"run_id": run_id, "after": after},
    )
    return [Event(str(seq), orjson.loads(data)) for seq, data in rows]


def _events_of(db: sqlite3.Connection, positions: dict[str, int]) -> dict[str, list[Event]]:
    found = {run_id: _events(db, run_id, after) for run_id, after in positions.items()}
    return {run_id: events for run_id, events in found.items() if events}


def _row(event_id: str | None) -> int:
    """The row number an event id names; 0 (replay everything rather than miss anything) for
    None or an id from elsewhere."""
    try:
        return int(event_id) if event_id else 0
    except ValueError:
        return 0


def _list(
    db: sqlite3.Connection, caller: str | None, state: RunState | None, limit: int, cursor: float | None
) -> list[tuple[float, Run]]:
    sql = f"SELECT created_at, {_COLUMNS} FROM runs WHERE {_LIVE} AND created_at < :cursor"
    if caller is not None:
        sql += " AND caller = :caller"
    if state is not None:
        sql += " AND state = :state"
    sql += " ORDER BY created_at DESC LIMIT :limit"
    params = {
        "now": now(),
        "cursor": float("inf") if cursor is None else cursor,
        "caller": caller,
        "state": state.value if state else None,
        "limit": limit,
    }
    return [(row[0], _decode_run(row[1:])) for row in db.execute(sql, params)]


# Runs past their retention, and runs never finished (or whose delivery never ended) that are
# as old as the Redis store lets any run live.
_DUE = """
SELECT run_id FROM runs WHERE expires_at <= :now
UNION ALL SELECT run_id FROM runs WHERE expires_at IS NULL AND created_at <= :now - :unfinished
LIMIT :limit
"""


def _purge(db: sqlite3.Connection, limit: int) -> int:
    """Forget up to ``limit`` runs that are due, with their events and idempotency keys."""
    with _transaction(db):
        params = {"now": now(), "unfinished": UNFINISHED_TTL, "limit": limit}
        due = db.execute(_DUE, params).fetchall()
        for table in ("events", "idempotency", "hooks", "runs"):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ?", due)
        # A heartbeat that ran out keeps nothing alive: its row and no row mean the same.
        db.execute("DELETE FROM owners WHERE alive_until < :now", params)
    return len(due)


def _finish(
    db: sqlite3.Connection,
    run_id: str,
    attempt: int,
    outcome: Outcome,
    retention: float,
    take: float | None,
    sealer: Sealer,
) -> Finished | None:
    result = outcome.result
    at = now()
    params = {
        "run_id": run_id,
        "attempt": attempt,
        "state": outcome.state.value,
        "now": at,
        "retention": retention,
        "upstream_status": outcome.upstream_status,
        "error": dump_error(outcome.error) if outcome.error else None,
        "result_status": result.status if result else None,
        "result_headers": dump_headers(result.headers) if result else None,
        "result_body": result.body if result else None,
        "take": take,
    }
    with _transaction(db):
        row = db.execute(_FINISH, params).fetchone()
        if row is None:
            return None
        _log(db, run_id, state_event(outcome.state, attempt, at, outcome))
    taken, token, url = row
    return finished_taking(sealer, at, token, url, at + take) if taken and take is not None else Finished(at)


def _redeliver(db: sqlite3.Connection, params: dict[str, Any]) -> bool:
    with _transaction(db):
        row = db.execute(_REDELIVER, params).fetchone()
        if row is not None and not row[0]:
            raise WebhookUrlDeleted()  # undoes the update with the savepoint
    return row is not None


def _bind(db: sqlite3.Connection, identity: Identity) -> tuple[str, str] | None:
    """Record the deployment and upstream the runs are for; those found if it refuses."""
    with _transaction(db):
        found = dict(db.execute("SELECT name, value FROM meta WHERE name IN ('upstream', 'deployment')").fetchall())
        upstream = found.get("upstream")
        if upstream is not None and upstream != identity.upstream and not identity.allow_upstream_change:
            return found.get("deployment", ""), upstream
        record = "INSERT OR REPLACE INTO meta (name, value) VALUES (:name, :value)"
        db.execute(record, {"name": "upstream", "value": identity.upstream})
        db.execute(record, {"name": "deployment", "value": identity.deployment})
    return None


def _probe(db: sqlite3.Connection) -> None:
    """A write that leaves nothing changed, yet reaches the disk: it fails as any write would
    (a read-only file, a full disk). One no-op UPDATE would not do: SQLite skips rewriting a row
    that stays the same, and then writes nothing at all."""
    with _transaction(db):
        db.execute("UPDATE queue_length SET runs = runs + 1")
        db.execute("UPDATE queue_length SET runs = runs - 1")


def _store_error(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):  # locked, busy, disk I/O: may pass
        return StoreUnavailable(f"sqlite: {exc}")
    return StoreError(f"sqlite: {exc}")


def _fail(waiting: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]], error: StoreError) -> None:
    for _, answer in waiting:
        if not answer.done():
            # One exception object each: a shared one would collect every raiser's traceback.
            answer.set_exception(type(error)(*error.args))


class EmbeddedRunStore:
    """Runs in one SQLite file, used from one worker thread, by one process at a time."""

    def __init__(
        self,
        data_dir: str | Path,
        synchronous: str = "full",
        sealer: Sealer | None = None,
        identity: Identity | None = None,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, not {synchronous!r}")
        self.data_dir = Path(data_dir)
        self.synchronous = synchronous
        self.sealer = sealer or Sealer()
        #: Checked and recorded at open: the data directory holds one deployment's runs.
        self.identity = identity
        # sqlite3 connections belong to the thread that made them, and its calls block.
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Set whenever a run is queued, so a waiting claim wakes without polling.
        self._work = asyncio.Event()
        # Replaced (after being set) whenever an event is logged, to wake readers of events.
        self._changed = asyncio.Event()
        self._interrupted = False  # interrupt_watch() was called since the last watch() ended
        self._cancel_listeners: list[asyncio.Queue[str]] = []
        self._next_purge = 0.0
        # See heartbeat().
        self._seen: float | None = None
        self._resume = 0.0
        # Group commit: writes arriving while a commit is on disk wait to share the next one.
        self._writes: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._progress_key: bytes | None = None
        #: Claim calls so far (for the starvation round), runs claimed so far, and their rate.
        self._claims = 0
        self._claimed = 0
        self.claim_rate = ClaimRate()

    async def open(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.data_dir / LOCK_FILE)
            if not self.sealer.keys or (self.data_dir / KEY_FILE).exists():
                # Nothing rests in the clear: with no configured key, the store seals with its
                # own; with keys configured, runs sealed with its own before still open.
                self.sealer = self.sealer.opening_also(own_key(self.data_dir))
        except OSError as exc:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            # A directory that cannot be made or written is the operator's to fix, and no retry
            # would: refused as a configuration error (one line, exit status 2).
            raise ConfigError("store.data_dir", f"cannot use {self.data_dir}: {exc}") from exc
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncgate-sqlite")
        path = self.data_dir / DATABASE_FILE
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._pool, _connect, path, self.synchronous)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open {path}: {exc}") from exc
        if self.identity is not None:
            found = await self._call(_bind, self.identity)
            if found is not None:
                await self.close()
                raise self.identity.conflict(f"the data directory {str(self.data_dir)!r}", *found)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.wait([self._writer])  # every write taken gets its answer
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
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc

    async def ping(self) -> None:
        await self._write(_probe)

    async def _write(
        self, operation: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``operation(db, ...)``, a change, in the next group commit; answer once it is on disk."""
        if self._pool is None or self._db is None:
            raise StoreError("the embedded store is not open")
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.append((lambda db: operation(db, *args, **kwargs), answer))
        if self._writer is None:
            self._writer = asyncio.create_task(self._commit_writes())
        return await answer

    async def _commit_writes(self) -> None:
        """Commit waiting writes, as many per transaction as have arrived, until none wait.

        With synchronous=full every commit waits for the disk, and one thread writes: a
        commit per change would cap the store at the disk's fsync rate, whatever the load.
        """
        taken: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        try:
            while self._writes:
                # A caller cancelled before its turn (a client gone) is skipped, as an executor
                # job cancelled before it started would be.
                taken = [(write, answer) for write, answer in self._writes if not answer.done()]
                self._writes = []
                if not taken:
                    continue
                try:
                    answers = await self._call(_write_together, [write for write, _ in taken])
                except StoreError as exc:
                    _fail(taken, exc)
                    continue
                for (_, answer), result in zip(taken, answers, strict=True):
                    if answer.done():
                        continue  # cancelled while its commit was on disk: made, as it would be alone
                    if isinstance(result, sqlite3.Error):
                        answer.set_exception(_store_error(result))
                    elif isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
                taken = []
        except BaseException as exc:
            # Not a store error (the loop shutting down, a bug): no caller is left waiting.
            _fail(taken + self._writes, StoreUnavailable(f"the embedded store stopped: {exc!r}"))
            self._writes = []
            raise
        finally:
            self._writer = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def create(
        self,
        run: Run,
        body: bytes,
        *,
        idempotency: Idempotency | None = None,
        max_queued: int = 0,
        shares: Sequence[Share] = (),
    ) -> Created:
        request, secrets, webhook_url = self.sealer.split(run.request)
        params = {
            "run_id": run.run_id,
            "state": run.state.value,
            "attempt": run.attempt,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "request": dump_request(request),
            "secrets": secrets,
            "webhook_url": webhook_url,
            "body": body,
            "caller": run.caller,
            "webhook": 1 if run.request.hooks(COMPLETED) else 0,
            "hook_events": ",".join(run.request.lifecycle_events) or None,
            "priority": run.request.priority,
            "queue_deadline": run.request.queue_deadline,
            "share": shares[0].key if shares else None,
            "route_share": shares[1].key if len(shares) > 1 else None,
        }
        if len(shares) > 2:
            raise ValueError("a run counts against two shares at most: its caller's and its route's")
        created = await self._write(_create, params, idempotency, max_queued, shares)
        if not created.replayed:
            self._work.set()
            self._notify()
        return created

    async def get(self, run_id: str) -> Run | None:
        row = await self._fetch(f"SELECT {_COLUMNS} FROM runs WHERE run_id = :run_id AND {_LIVE}", run_id)
        return None if row is None else _decode_run(row)

    async def request_body(self, run_id: str) -> bytes | None:
        row = await self._fetch(f"SELECT body FROM runs WHERE run_id = :run_id AND {_LIVE}", run_id)
        return None if row is None else row[0]

    async def result(self, run_id: str) -> RunResult | None:
        sql = f"SELECT {_RESULT_COLUMNS} FROM runs WHERE run_id = :run_id AND {_LIVE}"
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
        runs = await self._claim_waiting(owner, limit, wait, lease)
        if runs:
            self._notify()
        return runs

    async def _claim_waiting(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        if limit <= 0:
            return []
        deadline = time.monotonic() + wait
        while True:
            # Cleared before looking, so a run queued after the look sets it again.
            self._work.clear()
            self._claims += 1
            lowest = self._claims % STARVATION_ROUND == 0
            runs = await self._write(_claim, owner, limit, lease, self.sealer, lowest)
            self._claimed += len(runs)
            self.claim_rate.observe(self._claimed, now())
            remaining = deadline - time.monotonic()
            if runs or remaining <= 0:
                return runs
            try:
                async with asyncio.timeout(remaining):
                    await self._work.wait()
            except TimeoutError:
                return []

    async def renew(self, run_id: str, attempt: int, lease: float) -> Lease:
        return await self._write(_renew, run_id, attempt, lease)

    async def renew_all(self, held: Sequence[tuple[str, int]], lease: float) -> list[Lease]:
        return await self._write(_renew_all, held, lease) if held else []

    async def heartbeat(self, quiet: float, grace: float) -> float:
        # One process holds the store, so only its own silence (a pause, a restart) can show; it
        # is judged as the Redis store judges the silence of all gateways.
        at = now()
        if self._seen is None or at - self._seen > quiet:
            self._resume = at + grace
        self._seen = max(at, self._seen or at)
        return self._resume

    async def keep_alive(self, owner: str, lease: float, quiet: float, grace: float) -> Liveness:
        # One process holds the store: its runs cannot be recovered behind its back while it
        # lives, so it is never told "lost".
        resume = await self.heartbeat(quiet, grace)
        return Liveness(resume, cancels=await self._write(_keep_alive, owner, lease))

    async def finish(
        self, run_id: str, attempt: int, outcome: Outcome, retention: float, take: float | None = None
    ) -> Finished | None:
        if not outcome.state.is_final:
            raise ValueError(f"a run cannot finish as {outcome.state}")
        finished: Finished | None = await self._write(_finish, run_id, attempt, outcome, retention, take, self.sealer)
        if finished is not None:
            self._notify()
        return finished

    async def append_output(
        self, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
    ) -> list[str] | None:
        ids = await self._write(_append_output, run_id, attempt, events, drop)
        if ids:
            self._notify()
        return ids

    async def report_progress(
        self, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
    ) -> str | None:
        event_id = await self._write(_report_progress, run_id, attempt, event, kept, hook, max_hooks)
        if event_id is not None:
            self._notify()
        return event_id

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool:
        return await self._write(_queue_hook, run_id, attempt, event, body, max_hooks)

    async def due_hooks(self, limit: int, lease: float) -> list[DueHook]:
        # Looked at first with a read: the dispatcher asks at every round, and mostly none is due.
        if limit <= 0 or not await self._call(_hook_due, now()):
            return []
        return await self._write(_take_hooks, limit, lease, self.sealer)

    async def record_hook(self, run_id: str, token: int, seq: int, attempts: int, next_at: float | None) -> bool:
        return await self._write(_record_hook, run_id, token, seq, attempts, next_at)

    async def progress_key(self) -> bytes:
        if self._progress_key is None:
            self._progress_key = await self._write(_progress_key)
        return self._progress_key

    async def requeue(self, run_id: str, attempt: int) -> bool:
        requeued = await self._write(_requeue, run_id, attempt)
        if requeued:
            self._work.set()
            self._notify()
        return requeued

    async def cancel(self, run_id: str, retention: float) -> CancelResult:
        result = await self._write(_cancel, run_id, retention)
        if result is CancelResult.CANCELLED:
            self._notify()
        elif result is CancelResult.REQUESTED:
            for listener in self._cancel_listeners:
                listener.put_nowait(run_id)
        return result

    async def cancellations(self) -> AsyncGenerator[str, None]:
        listener: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.append(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            self._cancel_listeners.remove(listener)

    async def events(self, run_id: str, after: str | None, wait: float) -> list[Event]:
        position = _row(after)
        deadline = time.monotonic() + wait
        while True:
            changed = self._changed  # taken before reading, so no event slips between
            found = await self._call(_events, run_id, position)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return []

    async def watch(self, positions: Mapping[str, str | None], wait: float) -> dict[str, list[Event]]:
        deadline = time.monotonic() + wait
        while True:
            changed = self._changed  # taken before reading, so no event slips between
            found = await self._call(_events_of, {run_id: _row(after) for run_id, after in positions.items()})
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or self._interrupted:
                self._interrupted = False
                return found
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return {}

    async def interrupt_watch(self) -> None:
        self._interrupted = True
        self._notify()

    async def list_runs(
        self, caller: str | None, state: RunState | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        try:
            position = float(cursor) if cursor else None
        except ValueError:
            position = None
        rows = await self._call(_list, caller, state, limit, position)
        next_cursor = repr(rows[-1][0]) if len(rows) == limit else None
        return [run for _, run in rows], next_cursor

    async def due_deliveries(self, limit: int, lease: float) -> list[DueDelivery]:
        return await self._write(_take_deliveries, limit, lease, self.sealer)

    async def record_delivery(self, run_id: str, token: int, delivery: Delivery, retention: float) -> bool:
        recorded = await self._write(_record_delivery, run_id, token, delivery, retention)
        if recorded:
            self._notify()
        return recorded

    async def redeliver(self, run_id: str, webhook_url: str | None = None) -> bool:
        sealed = self.sealer.seal_url(webhook_url) if webhook_url is not None else None
        params = {"run_id": run_id, "now": now(), "unfinished": UNFINISHED_TTL, "webhook_url": sealed}
        return await self._write(_redeliver, params)

    async def queued_count(self) -> int:
        def count(db: sqlite3.Connection) -> int:
            return int(db.execute(_QUEUE_LENGTH).fetchone()[0])

        return await self._call(count)

    async def durability(self) -> dict[str, Any]:
        if self.synchronous in ("full", "extra"):
            promise = f"sqlite synchronous={self.synchronous}: every accepted run is on disk before its 202"
        else:
            promise = f"sqlite synchronous={self.synchronous}: runs survive a process crash, not a power loss"
        return {"durability": promise, "warnings": [], "sealing": self.sealer.sealing}

    async def purge(self) -> None:
        # Rounds, each its own write, so that other writes are not held up behind a long purge.
        for _ in range(PURGE_ROUNDS):
            if await self._write(_purge, PURGE_BATCH) < PURGE_BATCH:
                return

    async def expire_queued(self, limit: int, retention: float) -> list[Run]:
        runs = await self._write(_expire_queued, limit, retention)
        if runs:
            self._notify()
        return runs

    async def queue_position(self, run: Run) -> QueuePosition | None:
        def ahead(db: sqlite3.Connection) -> int | None:
            params = {"run_id": run.run_id, "priority": run.request.priority}
            if db.execute("SELECT 1 FROM runs WHERE run_id = :run_id AND state = 'queued'", params).fetchone() is None:
                return None
            return int(db.execute(_AHEAD, params).fetchone()[0])

        found = await self._call(ahead)
        return None if found is None else QueuePosition(found, self.claim_rate.wait(found, now()))

    async def share_counts(self) -> dict[str, int]:
        """Every share counter that is not zero (for tests and operators: they must return to zero)."""

        def counts(db: sqlite3.Connection) -> dict[str, int]:
            return dict(db.execute("SELECT name, runs FROM shares").fetchall())

        return await self._call(counts)

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
        await self.purge()

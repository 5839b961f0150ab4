"""The Redis run store: shared by any number of gateway replicas."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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

# Key schema. ``P`` is the configured key prefix (it must not contain "{").
#
#   P:run:{<run_id>}  hash    One run, and all of it: state, attempt, created_at, started_at,
#                             finished_at, upstream_status, error (JSON), request (JSON), body
#                             (request bytes, dropped at finish), owner, lease_until,
#                             result_status, result_headers (JSON), result_body.
#                             The braces are a Cluster hash tag, so a run lives in one slot.
#                             TTL: UNFINISHED_TTL from create, then the retention from finish.
#   P:queue           stream  The work queue. An entry is {run_id: <id>} and nothing else; it is
#                             read through the consumer group "P:executors", then acked and
#                             deleted, so the stream holds only work not yet taken.
#   P:leases          zset    Index of running runs: member run id, score lease_until, so that
#                             expired() need not scan. A hint only; the run hash is the truth.
#
# Times are the caller's clock (time.time()), so replicas need synchronised clocks (NTP);
# a skew shows up as leases expiring that much early or late.
#
# Atomicity: each run change is one Lua script on the run's key (check and write in one step).
# The queue and the lease index live in other slots, so the steps that touch them are ordered
# so that a crash between two of them leaves extra work that is harmless (a stream entry for a
# run that is no longer queued, which claim skips; an index entry for a run that is no longer
# running, which expired() drops), never a lost run. create and requeue use MULTI/EXEC across
# slots, which standalone Redis allows; on Redis Cluster they would become two steps, the
# run's hash first.

#: A run never finished (its gateways all gone, a bug) still disappears after this long.
UNFINISHED_TTL = 7 * 24 * 3600
#: Ordinary commands fail with StoreUnavailable after this long without an answer.
SOCKET_TIMEOUT = 5.0
#: The longest claim() blocks on the queue; longer waits are cut to this.
MAX_CLAIM_WAIT = 60.0
#: A queue entry read but never acked (its reader died in between) is taken over after this.
STALE_ENTRY_IDLE = 60.0

# One consumer name for every replica: entries are acked within one round trip of being read,
# so per-replica names would only pile up dead consumers in the group after each restart.
_CONSUMER = "executor"

# Fields read for a status: the small ones, never the bodies.
_RUN_FIELDS = (
    "state",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "upstream_status",
    "error",
    "request",
    "lease_until",
)
_RESULT_FIELDS = ("result_status", "result_headers", "result_body")

# Take a queued run: the check and the write are one step, so no two claimers get one run.
# KEYS[1] run; ARGV now, owner, lease_until, then the fields to return.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return false end
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'owner', ARGV[2], 'lease_until', ARGV[3])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 4))
"""

# The fence of every write made for an attempt (see store/base.py). ARGV[1] is the attempt.
_HOLDS = """
local state, attempt = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt'))
if state ~= 'running' or attempt ~= ARGV[1] then return 0 end
"""

# ARGV attempt, lease_until.
_RENEW = (
    _HOLDS
    + """
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
return 1
"""
)

# ARGV attempt, retention in ms, then field/value pairs of the outcome.
_FINISH = (
    _HOLDS
    + """
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'body')
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# ARGV attempt.
_REQUEUE = (
    _HOLDS
    + """
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'started_at')
return 1
"""
)

# Drop index entries of runs found not running, unless a claim re-indexed them meanwhile
# (a claim writes a score past the cutoff). KEYS[1] leases; ARGV cutoff, then run ids.
_FORGET = """
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
"""

# Replies as they arrive with decode_responses off: bytes, never str.
Fields = Sequence[bytes | None]
Entry = tuple[bytes, dict[bytes, bytes] | None]


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    # BusyLoadingError (Redis still loading its data) is a ConnectionError.
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis is unavailable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"redis command failed: {exc}") from exc


def _error_code(exc: redis_errors.ResponseError) -> str:
    # The first word of a Redis error reply is its code, the protocol's stable identifier;
    # redis-py has no exception class for BUSYGROUP or NOGROUP.
    return str(exc).split(" ", 1)[0]


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _decode_run(run_id: str, fields: Fields) -> Run | None:
    state, attempt, created_at, started_at, finished_at, upstream_status, error, request, _ = fields
    if state is None or request is None or created_at is None:
        return None
    return Run(
        run_id=run_id,
        state=RunState(state.decode()),
        request=load_request(request),
        created_at=float(created_at),
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        attempt=int(attempt or 0),
        upstream_status=None if upstream_status is None else int(upstream_status),
        error=load_error(error),
    )


def _pairs(fields: dict[str, Any]) -> list[Any]:
    """HSET arguments for the fields that have a value."""
    return [item for name, value in fields.items() if value is not None for item in (name, value)]


def _outcome_fields(outcome: Outcome) -> dict[str, Any]:
    result = outcome.result
    return {
        "state": outcome.state.value,
        "finished_at": now(),
        "upstream_status": outcome.upstream_status,
        "error": dump_error(outcome.error) if outcome.error else None,
        "result_status": result.status if result else None,
        "result_headers": dump_headers(result.headers) if result else None,
        "result_body": result.body if result else None,
    }


class RedisRunStore:
    """Runs in Redis hashes, the queue in a stream, leases indexed in a sorted set."""

    def __init__(self, url: str, key_prefix: str, *, stale_entry_idle: float = STALE_ENTRY_IDLE) -> None:
        self.prefix = key_prefix
        self.queue = f"{key_prefix}:queue"
        self.leases = f"{key_prefix}:leases"
        self.group = f"{key_prefix}:executors"
        self.stale_entry_idle = stale_entry_idle
        self._next_stale_check = 0.0
        # RESP2 keeps reply shapes the same across redis-py versions. No hidden retries: a
        # retried script whose first reply was lost would be refused by its own fence, so
        # callers decide (the executor retries StoreUnavailable, intake answers 503).
        options: dict[str, Any] = {
            "protocol": 2,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        self._redis = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, **options)
        # XREADGROUP BLOCK must not outlive the socket timeout, so it gets its own pool.
        self._blocking = aioredis.Redis.from_url(url, socket_timeout=MAX_CLAIM_WAIT + SOCKET_TIMEOUT, **options)

    def run_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    async def open(self) -> None:
        with _store_errors():
            await self._create_group()

    async def _create_group(self) -> None:
        # From id 0, so that entries added before the group existed are delivered too.
        try:
            await self._redis.xgroup_create(self.queue, self.group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if _error_code(exc) != "BUSYGROUP":  # another replica made it first
                raise

    async def close(self) -> None:
        await self._redis.aclose()
        await self._blocking.aclose()

    async def ping(self) -> None:
        with _store_errors():
            await self._redis.ping()

    async def create(self, run: Run, body: bytes) -> None:
        fields = {
            "state": run.state.value,
            "attempt": run.attempt,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "request": dump_request(run.request),
            "body": body,
        }
        key = self.run_key(run.run_id)
        with _store_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={k: v for k, v in fields.items() if v is not None})
                pipe.expire(key, UNFINISHED_TTL)
                pipe.xadd(self.queue, {"run_id": run.run_id})
                await pipe.execute()

    async def get(self, run_id: str) -> Run | None:
        with _store_errors():
            fields = cast(Fields, await self._redis.hmget(self.run_key(run_id), _RUN_FIELDS))
        return _decode_run(run_id, fields)

    async def request_body(self, run_id: str) -> bytes | None:
        with _store_errors():
            return cast(bytes | None, await self._redis.hget(self.run_key(run_id), "body"))

    async def result(self, run_id: str) -> RunResult | None:
        with _store_errors():
            status, headers, body = cast(Fields, await self._redis.hmget(self.run_key(run_id), _RESULT_FIELDS))
        if status is None or headers is None:
            return None
        return RunResult(status=int(status), headers=load_headers(headers), body=body or b"")

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        if limit <= 0:
            return []
        with _store_errors():
            try:
                entries = await self._stale_entries(limit) or await self._read_queue(limit, wait)
            except redis_errors.ResponseError as exc:
                if _error_code(exc) != "NOGROUP":
                    raise
                # Redis lost its data (restarted without persistence, flushed): start again.
                await self._create_group()
                return []
            if not entries:
                return []
            return await self._take(entries, owner, lease)

    async def _read_queue(self, limit: int, wait: float) -> list[Entry]:
        # BLOCK 0 would mean forever, so "do not wait" is no BLOCK at all.
        block = max(1, int(min(wait, MAX_CLAIM_WAIT) * 1000)) if wait > 0 else None
        reply = await self._blocking.xreadgroup(self.group, _CONSUMER, {self.queue: ">"}, count=limit, block=block)
        streams = cast(list[tuple[bytes, list[Entry]]], reply or [])
        return [entry for _, entries in streams for entry in entries]

    async def _stale_entries(self, limit: int) -> list[Entry]:
        """Entries whose reader died before acking them; looked for once per idle period."""
        if time.monotonic() < self._next_stale_check:
            return []
        self._next_stale_check = time.monotonic() + self.stale_entry_idle
        idle_ms = int(self.stale_entry_idle * 1000)
        reply = await self._redis.xautoclaim(self.queue, self.group, _CONSUMER, idle_ms, "0-0", count=limit)
        return cast(list[Entry], reply[1])

    async def _take(self, entries: list[Entry], owner: str, lease: float) -> list[Run]:
        run_ids = [fields[b"run_id"].decode() for _, fields in entries if fields and b"run_id" in fields]
        started = now()
        lease_until = started + lease
        async with self._redis.pipeline(transaction=False) as pipe:
            # Indexed before the claim so that no crash leaves a running run unindexed.
            if run_ids:
                pipe.zadd(self.leases, dict.fromkeys(run_ids, lease_until))
            for run_id in run_ids:
                pipe.eval(_CLAIM, 1, self.run_key(run_id), started, owner, lease_until, *_RUN_FIELDS)
            # Skipped entries (cancelled, expired or duplicate runs) are acked too.
            ids = [entry_id for entry_id, _ in entries]
            pipe.xack(self.queue, self.group, *ids)
            pipe.xdel(self.queue, *ids)
            replies = await pipe.execute()
        claimed = replies[1 : 1 + len(run_ids)] if run_ids else []
        runs = (_decode_run(run_id, fields) for run_id, fields in zip(run_ids, claimed, strict=True) if fields)
        return [run for run in runs if run is not None]

    async def renew(self, run_id: str, attempt: int, lease: float) -> bool:
        lease_until = now() + lease
        with _store_errors():
            renewed = await self._redis.eval(_RENEW, 1, self.run_key(run_id), attempt, lease_until)
            if renewed:
                # Only after the fence held: a refused, stale attempt must not move the index
                # entry of the attempt that now holds the run.
                await self._redis.zadd(self.leases, {run_id: lease_until})
        return bool(renewed)

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, retention: float) -> bool:
        if not outcome.state.is_final:
            raise ValueError(f"a run cannot finish as {outcome.state}")
        retention_ms = max(1, int(retention * 1000))
        args = [attempt, retention_ms, *_pairs(_outcome_fields(outcome))]
        with _store_errors():
            finished = await self._redis.eval(_FINISH, 1, self.run_key(run_id), *args)
            if finished:
                # A finished run is never claimed again, so its entry can go unconditionally.
                await self._redis.zrem(self.leases, run_id)
        return bool(finished)

    async def requeue(self, run_id: str, attempt: int) -> bool:
        with _store_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                # The entry is added even when the fence refuses; claim skips it. Its index
                # entry stays: expired() drops it unless a new claim re-indexed it.
                pipe.eval(_REQUEUE, 1, self.run_key(run_id), attempt)
                pipe.xadd(self.queue, {"run_id": run_id})
                requeued, _ = await pipe.execute()
        return bool(requeued)

    async def expired(self, limit: int) -> list[Run]:
        if limit <= 0:
            return []
        cutoff = now()
        with _store_errors():
            members = await self._redis.zrangebyscore(self.leases, "-inf", cutoff, start=0, num=limit)
            run_ids = [member.decode() for member in cast(list[bytes], members)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    pipe.hmget(self.run_key(run_id), _RUN_FIELDS)
                replies = await pipe.execute()
            return await self._sort_expired(cutoff, run_ids, replies)

    async def _sort_expired(self, cutoff: float, run_ids: list[str], replies: list[Fields]) -> list[Run]:
        """The runs whose lease did run out; the index is repaired for all the others."""
        expired: list[Run] = []
        stale: list[str] = []
        renewed: dict[str, float] = {}
        for run_id, fields in zip(run_ids, replies, strict=True):
            run = _decode_run(run_id, fields)
            lease_until = _float(fields[-1])
            if run is None or run.state is not RunState.RUNNING or lease_until is None:
                stale.append(run_id)
            elif lease_until < cutoff:
                expired.append(run)
            else:
                renewed[run_id] = lease_until
        if stale or renewed:
            async with self._redis.pipeline(transaction=False) as pipe:
                if stale:
                    pipe.eval(_FORGET, 1, self.leases, cutoff, *stale)
                if renewed:
                    pipe.zadd(self.leases, renewed, xx=True)
                await pipe.execute()
        return expired

"""Calls of one Lua script from many tasks, sent to Redis together.

A wave of completions (a model server answering thousands of held calls within a second) made
each finishing task take a pooled connection for its own round trip: ten thousand tasks queued
on 256 connections, CPython's semaphore scanned its waiters on every acquire, the pool's 5 s
wait ran out again and again, and nothing finished for minutes (docs/scaling.md). Gathered, the
same calls go as a few pipelines, one connection and one round trip for each batch, and a lone
call is sent at once, as before.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript

#: A script's call: ``await call(keys, args)``, alone (an AsyncScript) or batched (a ScriptBatch).
ScriptCall = Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]

#: Calls sent in one pipeline at most: a batch's scripts run back to back in Redis, each well
#: under a millisecond, so a batch never holds Redis for long.
MAX_BATCH = 128
#: Pipelines in flight at once: enough to keep Redis busy while replies come back, few enough
#: that a wave never takes more than these connections from the pool.
MAX_SENDS = 4


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    reply: asyncio.Future[Any]


class ScriptBatch:
    """``await batch(keys, args)`` runs ``script`` as ``script(keys, args)`` would, gathered with
    the calls waiting beside it into one pipeline (no transaction: each call is its own atomic
    script). A call whose caller was cancelled before it was sent is not sent.
    """

    def __init__(
        self, client: aioredis.Redis, script: AsyncScript, *, max_batch: int = MAX_BATCH, max_sends: int = MAX_SENDS
    ) -> None:
        self._client = client
        self._script = script
        self._max_batch = max_batch
        self._max_sends = max_sends
        self._waiting: collections.deque[_Call] = collections.deque()
        self._senders: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        call = _Call(tuple(keys), tuple(args), asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        if len(self._senders) < self._max_sends:
            sender = asyncio.create_task(self._send_waiting())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await call.reply

    async def close(self) -> None:
        """Stop the senders; calls not answered yet fail as a lost connection would."""
        for sender in list(self._senders):
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._fail(list(self._waiting), redis_errors.ConnectionError("the store was closed"))
        self._waiting.clear()

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch: list[_Call] = []
                while self._waiting and len(batch) < self._max_batch:
                    call = self._waiting.popleft()
                    if not call.reply.done():
                        batch.append(call)
                if not batch:
                    continue
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    self._fail(batch, redis_errors.ConnectionError("the store was closed"))
                    raise
                except Exception as exc:  # the connection or the pipeline failed: every call of it did
                    self._fail(batch, exc)
        finally:
            # Out of the count as it stops, not a loop step later by its done callback: a call
            # queued in between would count it as sending, start none, and wait for good.
            self._senders.discard(cast("asyncio.Task[None]", asyncio.current_task()))

    async def _send(self, batch: list[_Call]) -> None:
        replies = await self._pipeline(batch)
        if any(isinstance(reply, redis_errors.NoScriptError) for reply in replies):
            # Redis restarted, failed over or flushed its scripts: load it once, send those again.
            await self._client.script_load(self._script.script)
            missed = [index for index, reply in enumerate(replies) if isinstance(reply, redis_errors.NoScriptError)]
            for index, reply in zip(missed, await self._pipeline([batch[i] for i in missed]), strict=True):
                replies[index] = reply
        for call, reply in zip(batch, replies, strict=True):
            if call.reply.done():
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        # The calls are written on one pooled connection and their replies read back in order:
        # a pipeline without redis-py's Pipeline, whose command stack, per-command bookkeeping
        # and a timeout per reply cost about twice the CPU per call of this (73 against 39 us,
        # calls four at a time). One deadline covers every reply, as one timeout per reply would.
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            sha, pack = self._script.sha, connection.pack_command
            packed = [chunk for call in batch for chunk in pack("EVALSHA", sha, len(call.keys), *call.keys, *call.args)]
            await connection.send_packed_command(packed)
            async with asyncio.timeout(connection.socket_timeout):
                return [await self._reply(connection) for _ in batch]
        except BaseException as exc:
            # A reply not read, a read cut off: what the connection carries next is unknown.
            await connection.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise redis_errors.TimeoutError("timed out reading a batch's replies") from None
            raise
        finally:
            await pool.release(connection)

    @staticmethod
    async def _reply(connection: AbstractConnection) -> Any:
        try:
            return await connection.read_response(timeout=math.inf)  # the batch's deadline applies
        except redis_errors.ResponseError as exc:  # this call's error, read whole: the next reply follows
            return exc

    @staticmethod
    def _fail(calls: list[_Call], exc: Exception) -> None:
        for call in calls:
            if not call.reply.done():
                call.reply.set_exception(exc)

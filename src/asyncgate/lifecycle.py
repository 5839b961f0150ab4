"""Lifecycle webhooks: the ``start``, ``output`` and ``progress`` deliveries a run's caller may ask for.

Beside the ``completed`` delivery (webhooks.py), a run whose request named ``webhookEvents``
gets a delivery queued in the store for each event asked for: ``start`` when an attempt sends its
request, ``progress`` with each report (queued by the store with the report, wherever it came
from), and ``output`` in batches cut by time and size (``webhooks.output_batch_interval``,
``webhooks.output_batch_bytes``), so a fast token stream costs a receiver about one request a
second. Each delivery is numbered (``Asyncgate-Webhook-Sequence``); ``completed`` comes last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from asyncgate.errors import StoreError
from asyncgate.runs import Run, now, rfc3339

logger = logging.getLogger("asyncgate.lifecycle")

#: Output event fields a delivery carries (the run id and attempt are the delivery's own).
_OUTPUT_FIELDS = ("seq", "data", "data_base64", "sse_event", "sse_id", "partial", "format", "content_type", "kept")


class HookQueue(Protocol):
    """The part of the store lifecycle deliveries are queued in (``RunStore.add_hook``)."""

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool: ...


def start_body(run: Run, at: float) -> bytes:
    return orjson.dumps({"type": "run.start", "run_id": run.run_id, "attempt": run.attempt, "at": rfc3339(at)})


def progress_body(run_id: str, event: dict[str, Any]) -> bytes:
    """The delivery of a progress report, from its ``progress`` event."""
    return orjson.dumps(
        {
            "type": "run.progress",
            "run_id": run_id,
            "attempt": event["attempt"],
            "progress": event.get("progress"),
            "message": event.get("message"),
            "at": rfc3339(event["at"]),
        }
    )


def output_body(run_id: str, attempt: int, events: list[dict[str, Any]]) -> bytes:
    pieces = [
        {"at": rfc3339(event["at"]), **{name: event[name] for name in _OUTPUT_FIELDS if name in event}}
        for event in events
    ]
    return orjson.dumps(
        {
            "type": "run.output",
            "run_id": run_id,
            "attempt": attempt,
            "from_seq": events[0]["seq"],
            "to_seq": events[-1]["seq"],
            "events": pieces,
        }
    )


def _size(event: dict[str, Any]) -> int:
    return len(event.get("data") or event.get("data_base64") or "")


class OutputHooks:
    """One attempt's output, cut into ``output`` deliveries by time and size and queued in order.

    Owned by the attempt's output sink: ``close`` queues what is left, ``abort`` drops it.
    """

    def __init__(
        self,
        queue: HookQueue,
        run_id: str,
        attempt: int,
        interval: float,
        max_bytes: int,
        max_hooks: int,
        queued: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        #: Called after each delivery queued (the dispatcher then sends it without waiting).
        self.queued = queued
        self.run_id = run_id
        self.attempt = attempt
        self.interval = interval
        self.max_bytes = max_bytes
        self.max_hooks = max_hooks
        self._batch: list[dict[str, Any]] = []
        self._bytes = 0
        self._cut_at = 0.0
        self._ready: list[list[dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, events: list[dict[str, Any]]) -> None:
        """Output events written to the run's log (in their order)."""
        for event in events:
            if event.get("event") != "output":
                continue
            if not self._batch:
                self._cut_at = asyncio.get_running_loop().time() + self.interval
            self._batch.append(event)
            self._bytes += _size(event)
            if self._bytes >= self.max_bytes:
                self._cut()
        if self._task is None and (self._batch or self._ready):
            self._task = asyncio.create_task(self._queue(), name=f"asyncgate-output-hooks-{self.run_id}")
        self._wake.set()

    def _cut(self) -> None:
        if self._batch:
            self._ready.append(self._batch)
            self._batch, self._bytes = [], 0

    async def close(self) -> None:
        """Queue what is left; returns once every batch is queued (or refused)."""
        self._closing = True
        self._cut()
        self._wake.set()
        if self._task is None and self._ready:
            self._task = asyncio.create_task(self._queue(), name=f"asyncgate-output-hooks-{self.run_id}")
        if self._task is not None:
            await asyncio.shield(self._task)

    def abort(self) -> None:
        self._batch, self._ready = [], []
        if self._task is not None:
            self._task.cancel()

    async def _queue(self) -> None:
        try:
            while self._ready or self._batch:
                if not self._ready:
                    # Wait for the batch's time to be up (or for close, or a batch cut by size).
                    self._wake.clear()
                    left = self._cut_at - asyncio.get_running_loop().time()
                    if left > 0 and not self._closing:
                        try:
                            async with asyncio.timeout(left):
                                await self._wake.wait()
                        except TimeoutError:
                            pass
                        continue
                    self._cut()
                batch = self._ready.pop(0)
                body = output_body(self.run_id, self.attempt, batch)
                try:
                    queued = await self.queue.add_hook(self.run_id, self.attempt, "output", body, self.max_hooks)
                except StoreError as exc:
                    logger.warning(
                        "run %s: output webhook not queued: %s", self.run_id, exc, extra={"run_id": self.run_id}
                    )
                    continue
                if not queued:
                    self._batch, self._ready = [], []  # the attempt no longer holds the run
                elif self.queued is not None:
                    self.queued()
        finally:
            self._task = None


async def queue_start(queue: HookQueue, run: Run, max_hooks: int, queued: Callable[[], None] | None = None) -> None:
    """Queue the ``start`` delivery of an attempt about to send its request, if it was asked for."""
    if not run.request.hooks("start"):
        return
    try:
        if await queue.add_hook(run.run_id, run.attempt, "start", start_body(run, now()), max_hooks) and queued:
            queued()
    except StoreError as exc:
        logger.warning("run %s: start webhook not queued: %s", run.run_id, exc, extra={"run_id": run.run_id})

"""Webhook delivery: POST a finished run's upstream body to the URL its client named."""

from __future__ import annotations

import asyncio
import logging

import httpx

from asyncgate.config import Config
from asyncgate.runs import Outcome, Run
from asyncgate.store.base import RunStore

logger = logging.getLogger("asyncgate.webhooks")

#: Deliveries waiting for a free sender before new ones are refused into the log.
QUEUE_SIZE = 10_000
SENDERS = 16


def delivery_headers(run: Run, outcome: Outcome, content_type: str | None) -> dict[str, str]:
    headers = {
        "Asyncgate-Run-Id": run.run_id,
        "Asyncgate-Status": outcome.state.value,
        "Asyncgate-Upstream-Status": "" if outcome.upstream_status is None else str(outcome.upstream_status),
    }
    if content_type:
        headers["Content-Type"] = content_type
    return headers


class WebhookSender:
    """Delivers webhooks from a bounded queue with a fixed number of sender tasks."""

    def __init__(self, config: Config, store: RunStore) -> None:
        self.config = config
        self.store = store
        self._queue: asyncio.Queue[tuple[Run, Outcome]] = asyncio.Queue(QUEUE_SIZE)
        self._client: httpx.AsyncClient | None = None
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        timeout = httpx.Timeout(self.config.webhooks.timeout)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
        self._workers = [asyncio.create_task(self._work(), name=f"asyncgate-webhook-{i}") for i in range(SENDERS)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def notify(self, run: Run, outcome: Outcome) -> None:
        if run.request.webhook_url is None:
            return
        try:
            self._queue.put_nowait((run, outcome))
        except asyncio.QueueFull:
            logger.error("run %s: webhook queue full, delivery dropped", run.run_id)

    async def _work(self) -> None:
        while True:
            run, outcome = await self._queue.get()
            try:
                await self._deliver(run, outcome)
            except Exception:  # one bad delivery must not stop the sender
                logger.exception("run %s: webhook delivery failed", run.run_id)

    async def _deliver(self, run: Run, outcome: Outcome) -> None:
        assert self._client is not None and run.request.webhook_url is not None
        result = await self.store.result(run.run_id)
        body = result.body if result is not None else b""
        content_type = result.header("content-type") if result is not None else None
        try:
            response = await self._client.post(
                run.request.webhook_url, content=body, headers=delivery_headers(run, outcome, content_type)
            )
        except httpx.HTTPError as exc:
            logger.warning("run %s: webhook not delivered: %s", run.run_id, exc.__class__.__name__)
            return
        logger.info("run %s: webhook answered %d", run.run_id, response.status_code)

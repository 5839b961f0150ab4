"""The durable-intake floor: raw ASGI, one Redis MULTI (HSET + XADD) per POST, then 202.

The least a durable async intake can do: read the body, store the run and enqueue its id
atomically, answer. Configured by BENCH_REDIS_URL.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis.asyncio as redis

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STREAM = "bench:runs:stream"


class BareIntake:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.redis: redis.Redis | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._intake(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.redis = redis.Redis.from_url(self.redis_url, max_connections=1024)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.redis is not None:
                    await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _intake(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.redis is not None
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        run_id = uuid.uuid4().hex
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                f"bench:run:{{{run_id}}}",
                mapping={
                    "status": "queued",
                    "method": scope["method"],
                    "path": scope["path"],
                    "body": bytes(body),
                    "created_at": time.time(),
                },
            )
            pipe.xadd(STREAM, {"run_id": run_id})
            await pipe.execute()
        payload = json.dumps({"run_id": run_id, "status": "queued"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"location", f"/_asyncgate/runs/{run_id}".encode()),
        ]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


app = BareIntake(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))

"""A webhook receiver that records every delivery and can fail the first N attempts."""

from __future__ import annotations

import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class Deliveries:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        #: Answers to give, in order, before answering 200: a status, or (status, headers).
        self.script: list[int | tuple[int, dict[str, str]]] = []

    def add(self, item: dict[str, Any]) -> tuple[int, dict[str, str]]:
        with self._lock:
            self._items.append(item)
            answer = self.script.pop(0) if self.script else 200
        return answer if isinstance(answer, tuple) else (answer, {})

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def for_run(self, run_id: str) -> list[dict[str, Any]]:
        return [d for d in self.all() if d["headers"].get("asyncgate-run-id") == run_id]


def receiver_app(deliveries: Deliveries) -> Starlette:
    async def hook(request: Request) -> Response:
        body = await request.body()
        item = {"path": request.url.path, "headers": dict(request.headers), "body": body}
        status, headers = deliveries.add(item)
        return Response(b"", status_code=status, headers=headers)

    return Starlette(routes=[Route("/{name:path}", hook, methods=["POST"])])

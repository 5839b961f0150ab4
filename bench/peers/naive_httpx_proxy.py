"""The proxy users write by hand: Starlette, one httpx.AsyncClient, stream both ways.

It follows httpx's own documented recipe (build_request + send(stream=True) + aiter_raw)
with the client's default limits and timeouts, as a user would. Configured by BENCH_UPSTREAM.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8000")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"})


async def proxy(request: Request) -> StreamingResponse:
    client: httpx.AsyncClient = request.state.client
    url = httpx.URL(path=request.url.path, query=request.url.query.encode("utf-8"))
    headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
    upstream_request = client.build_request(request.method, url, headers=headers, content=request.stream())
    response = await client.send(upstream_request, stream=True)
    out = {k: v for k, v in response.headers.items() if k not in HOP_BY_HOP}
    return StreamingResponse(
        response.aiter_raw(), status_code=response.status_code, headers=out, background=BackgroundTask(response.aclose)
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with httpx.AsyncClient(base_url=UPSTREAM) as client:
        yield {"client": client}


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)

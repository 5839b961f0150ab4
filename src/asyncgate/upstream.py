"""The one pooled HTTP client a gateway uses to reach its upstream.

It is aiohttp's client, not httpx: under concurrency httpx's native transport (httpcore)
collapses to a fraction of aiohttp's throughput and its p99 grows past a second
(bench/RESULTS.md). httpx stays where its API serves and load is light: webhooks and the SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from typing import Any

import aiohttp
from yarl import URL

from asyncgate.config import Config

#: Headers aiohttp would add on its own; a proxy forwards only what the client sent.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

UpstreamError = aiohttp.ClientError


class Upstream:
    """The upstream's base URL and a connection pool sized to the configured concurrency."""

    def __init__(self, config: Config) -> None:
        self.base = config.upstream.rstrip("/")
        self._connect_timeout = config.proxy.connect_timeout
        self._read_timeout = config.proxy.read_timeout
        # Every synchronous request and every run in flight may hold a connection at once.
        self._pool_size = config.limits.max_connections + config.limits.max_inflight
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0, ttl_dns_cache=10)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Bytes pass through exactly as sent: no decompression, no cookie jar, no redirects.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=self._read_timeout),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, raw_path: str, query: str) -> URL:
        """The upstream URL for a path and query exactly as the client encoded them."""
        return URL(f"{self.base}{raw_path}?{query}" if query else f"{self.base}{raw_path}", encoded=True)

    async def send(
        self,
        method: str,
        url: URL,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        deadline: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads the response and must release it."""
        assert self._session is not None, "Upstream.open() was not called"
        kwargs: dict[str, Any] = {"allow_redirects": False, "compress": None}
        if deadline is not None:
            kwargs["timeout"] = deadline
        return await self._session.request(method, url, headers=list(headers), data=body, **kwargs)

    def run_timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        """A timeout for an async run: the whole call bounded by the run's own limit."""
        return aiohttp.ClientTimeout(total=seconds, connect=min(self._connect_timeout, seconds), sock_read=None)

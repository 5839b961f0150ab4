"""The one pooled HTTP client a gateway uses to reach its upstream.

It is asyncgate's own HTTP/1.1 client (http1.py), not httpx or aiohttp: under concurrency
httpx's native transport collapses to a fraction of aiohttp's throughput, and aiohttp's client
costs more than the rest of a relay together (bench/README.md, "The upstream client"). httpx
stays where its API serves and load is light: webhooks and the SDK.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from asyncgate.config import Config
from asyncgate.http1 import Body, ConnectionPool, Response

__all__ = ["Body", "Response", "Upstream"]


class Upstream(ConnectionPool):
    """The configured upstream: its connection pool, sized to the configured concurrency, and its base path."""

    def __init__(self, config: Config) -> None:
        parts = urlsplit(config.upstream)
        # Every synchronous request and every run in flight may hold a connection at once.
        limit = config.limits.max_connections + config.limits.max_inflight
        super().__init__(f"{parts.scheme}://{parts.netloc}", limit=limit, connect_timeout=config.proxy.connect_timeout)
        #: A base path the upstream is mounted under (``http://model:8080/v1``), prefixed to every target.
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        #: Longest silence allowed on a synchronous request (runs are bounded by their own timeout).
        self.read_timeout = config.proxy.read_timeout

    async def open(self) -> None:
        """Connections are made on demand; opening (again) only lifts a previous close."""
        self._closing = False

    def target(self, raw_path: bytes, query: bytes) -> bytes:
        """The request target for a path and query exactly as the client encoded them."""
        if raw_path == b"*":
            return raw_path  # OPTIONS *: the upstream server itself, whatever its base path
        path = self.base_path + raw_path
        return path + b"?" + query if query else path

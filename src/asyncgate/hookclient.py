"""The webhook client: asyncgate's own HTTP/1.1 client (http1.py), a keep-alive pool per checked address.

httpx was most of a delivery's cost: under a wave of 5,000 completions (bench S6) it took about
40 % of the gateway's CPU. Every request is checked by netguard.py: the URL's literal, then every
address its name resolves to (``resolve_checked``), and the connection made to a checked address
(pools are keyed by it), so a name cannot rebind to an internal address between check and use.
Redirects are never followed: a 3xx is an answer like any other.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict

import httpx

from asyncgate.errors import ConnectFailed
from asyncgate.headers import RETRY_AFTER_RAW
from asyncgate.http1 import ConnectionPool
from asyncgate.netguard import Allowlist, Resolver, check_url_literal, resolve_checked

#: Pools kept at once; past it the least recently used is closed (receivers are usually few).
MAX_POOLS = 256
#: Checked URLs kept parsed at once, the least recently used forgotten first: many runs of a
#: deployment share a few webhook URLs, and parsing and checking one anew for every attempt was
#: a tenth of a wave's CPU (bench S6).
MAX_TARGETS = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A webhook URL that passed check_url_literal, in the parts a POST to it needs."""

    origin: str
    host: str
    port: int
    path: bytes

    @classmethod
    def parse(cls, url: str) -> Target:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
        return cls(origin, parsed.raw_host.decode("ascii"), port, parsed.raw_path)


@dataclasses.dataclass(frozen=True)
class HookAnswer:
    """What a receiver answered: its status and its Retry-After, if any."""

    status: int
    retry_after: str | None


class WebhookClient:
    """POSTs webhooks; ``limit`` connections per receiver address, ``timeout`` for a whole attempt."""

    def __init__(self, allow: Allowlist, resolver: Resolver | None, *, limit: int, timeout: float) -> None:
        self.allow = allow
        self.resolver = resolver
        self.limit = limit
        self.timeout = timeout
        self._pools: OrderedDict[tuple[str, str], ConnectionPool] = OrderedDict()
        self._targets: OrderedDict[str, Target] = OrderedDict()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HookAnswer:
        """Deliver once. Raises BlockedDestination, TimeoutError (the attempt's time ran out),
        OSError (a name that did not resolve) or UpstreamError (no connection, one broken off,
        or UpstreamTimeout: too slow to connect)."""
        target = self._target(url)
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        async with asyncio.timeout(self.timeout):
            # Resolved and checked for every attempt: a name may point elsewhere by now.
            addresses = await resolve_checked(target.host, target.port, self.allow, resolver=self.resolver)
            for ip in addresses[:-1]:
                try:
                    return await self._post(await self._pool(target.origin, str(ip)), target.path, raw, body)
                except ConnectFailed:
                    continue  # nothing was sent: the next address may be tried
            return await self._post(await self._pool(target.origin, str(addresses[-1])), target.path, raw, body)

    def _target(self, url: str) -> Target:
        """``url`` checked (BlockedDestination if refused whatever DNS says) and parsed, once while kept."""
        target = self._targets.get(url)
        if target is not None:
            self._targets.move_to_end(url)
            return target
        check_url_literal(url, self.allow)
        target = self._targets[url] = Target.parse(url)
        if len(self._targets) > MAX_TARGETS:
            self._targets.popitem(last=False)
        return target

    @staticmethod
    async def _post(pool: ConnectionPool, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> HookAnswer:
        response = await pool.request(b"POST", target, headers, body)
        try:
            async for _ in response.chunks():
                pass  # the receiver's body is not wanted, but read so the connection can be kept
        finally:
            response.release()
        retry_after = next((v.decode("latin-1") for n, v in response.raw_headers if n.lower() == RETRY_AFTER_RAW), None)
        return HookAnswer(response.status, retry_after)

    async def _pool(self, origin: str, address: str) -> ConnectionPool:
        key = (origin, address)
        pool = self._pools.get(key)
        if pool is not None:
            self._pools.move_to_end(key)
            return pool
        pool = ConnectionPool(origin, limit=self.limit, connect_timeout=self.timeout, address=address)
        self._pools[key] = pool
        while len(self._pools) > MAX_POOLS:
            _, evicted = self._pools.popitem(last=False)
            await evicted.close()  # its connections in use are closed as their exchanges end
        return pool

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.close()

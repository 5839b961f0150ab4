"""HTTP clients for tests that keep one client across many requests."""

from __future__ import annotations

import httpx

#: uvicorn closes a connection idle for 5 s (``timeout_keep_alive``). A client that reuses one at
#: that moment has its request reset mid-flight, which no retry in httpx covers. Dropping idle
#: connections well before the server does closes that race from the client's side.
IDLE_CONNECTION_SECONDS = 2.0


def client_for(base_url: str, timeout: float = 30) -> httpx.Client:
    """An httpx client for ``base_url`` that never reuses a connection the server may be closing."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        trust_env=False,
        limits=httpx.Limits(keepalive_expiry=IDLE_CONNECTION_SECONDS),
    )

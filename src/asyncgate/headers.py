"""Header rules: hop-by-hop filtering, forwarding fields, and the one list of secret headers."""

from __future__ import annotations

from collections.abc import Iterable

RawHeaders = list[tuple[bytes, bytes]]

#: RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies still meet.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
    }
)

#: Request fields that belong to the exchange that carried them, not to a later replay of it:
#: Expect asks for a 100 Continue the client had from the gateway already (a replay has its body
#: whole), and the length is the stored body's, written afresh by the client that replays it.
NOT_REPLAYED = frozenset({b"expect", b"content-length"})

#: Headers whose values are credentials: sealed at rest (store/sealing.py), never logged or shown.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The field names listed in Connection headers; they are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(tokens)


def end_to_end(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()) -> RawHeaders:
    """``headers`` without hop-by-hop fields, the fields Connection names, and ``drop`` (lowercase)."""
    headers = list(headers)
    named = connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in named and lowered not in drop
    ]


def forwarded_for(existing: bytes | None, client: tuple[str, int] | None) -> bytes | None:
    """X-Forwarded-For with the peer appended: an untrusted client's value is kept, never believed."""
    if client is None:
        return existing
    peer = client[0].encode("latin-1")
    return existing + b", " + peer if existing else peer


def encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]

"""Header rules: hop-by-hop filtering, forwarding fields, and the one list of secret headers."""

from __future__ import annotations

from collections.abc import Iterable

from asyncgate.runs import Headers

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

#: Headers whose values are credentials: never logged, never shown in a status or event.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})

REDACTED = "[redacted]"


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


def decode(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)


def encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def redact(headers: Iterable[tuple[str, str]]) -> Headers:
    """A copy safe to log: secret values replaced by a marker."""
    return tuple((name, REDACTED if name.lower() in SECRET_HEADERS else value) for name, value in headers)

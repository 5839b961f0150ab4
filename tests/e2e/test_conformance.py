"""A differential corpus: every exchange of conformance_table.py sent over a raw socket to an
upstream that answers with exact bytes, once directly and once through the gateway, under both
of uvicorn's HTTP parsers, and the two compared field by field, both ways.

Every difference must be one docs/passthrough.md lists (``TRANSFORMATIONS`` below is that list,
as code), or the test fails. After every exchange the client's connection through the gateway
must serve another request, or have been closed cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncgate.config import load
from asyncgate.headers import HOP_BY_HOP, connection_tokens
from asyncgate.server import protocol_class, uvicorn_options
from tests.e2e.conformance_table import BAD_GATEWAY, CASES, GATEWAY_TIMEOUT, REFUSED_400, RELAYED, Case
from tests.e2e.conftest import Gateway
from tests.support.rawhttp import Broken, Fields, RawConnection, RawResponse
from tests.support.rawupstream import RawUpstream, Received

#: Silence from the upstream past which the gateway gives up (the stall cases stall longer).
READ_TIMEOUT = 0.4
#: How long a client with Expect: 100-continue waits for 100 before it sends its body anyway.
CONTINUE_WAIT = 0.3
#: What the gateway may do differently, each listed in docs/passthrough.md.
TRANSFORMATIONS = {
    "hop-by-hop fields and the fields Connection names are not relayed, either way",
    "framing is each hop's own: Content-Length kept, chunked or close-delimited as the client's version allows",
    "trailers are not relayed, either way",
    "interim 1xx answers from the upstream are not relayed; 100 Continue comes from the gateway",
    "the status line is the gateway's: HTTP/1.1 and the standard reason phrase",
    "field names may reach the other side lowercased",
    "Host is the upstream's; the client's goes as X-Forwarded-Host, with X-Forwarded-For and -Proto",
    "an absolute-form target reaches the upstream as a path",
    "requests reach the upstream as HTTP/1.1",
    "the gateway answers itself: 400 for what it refuses, 502 and 504 for upstream failures",
}
_FORWARDING = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


@dataclasses.dataclass
class Outcome:
    responses: list[RawResponse]
    #: Why the last response broke off (its head and body so far are the last of ``responses``).
    broken: str | None
    #: "serves", "closed", or what went wrong with the connection after the exchange.
    fate: str
    received: list[Received]


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream({name: case.script for name, case in CASES.items()})
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def gateway(request: pytest.FixtureRequest, raw_upstream: RawUpstream) -> Iterator[Gateway]:
    overrides = {
        "upstream": raw_upstream.url,
        "store.data_dir": tempfile.mkdtemp(),
        "access.mode": "open",
        "proxy.read_timeout": READ_TIMEOUT,
    }
    config = load(None, environ={}, overrides=overrides)
    server = Gateway(config, **{**uvicorn_options(config), "http": protocol_class(request.param)})
    yield server
    server.stop()


_DIRECT: dict[str, Outcome] = {}


def direct(raw_upstream: RawUpstream, case: Case) -> Outcome:
    """The exchange straight with the upstream: the same under both parsers, so made once."""
    if case.name not in _DIRECT:
        _DIRECT[case.name] = exchange(raw_upstream.port, raw_upstream, case, through_gateway=False)
    return _DIRECT[case.name]


def exchange(port: int, raw_upstream: RawUpstream, case: Case, through_gateway: bool) -> Outcome:
    tag = uuid.uuid4().hex
    responses: list[RawResponse] = []
    broken = None
    with RawConnection(port, timeout=10) as conn:
        conn.send(case.build(f"/s/{case.name}/{tag}"))
        try:
            if case.body_after_continue is not None:
                responses.append(_with_expect(conn, case))
            else:
                for method in case.methods:
                    responses.append(conn.read_response(method))
        except Broken as exc:
            broken = str(exc)
            if conn.partial is not None:
                responses.append(conn.partial)
        fate = _fate(conn, responses, broken) if through_gateway else "not checked"
    return Outcome(responses, broken, fate, raw_upstream.requests_to(tag.encode()))


def _with_expect(conn: RawConnection, case: Case) -> RawResponse:
    """As a client with Expect: 100-continue: the body after 100, or after a short wait, or never."""
    assert case.body_after_continue is not None
    first = conn.await_continue(case.methods[0], wait=CONTINUE_WAIT)
    if first is not None and first.status != 100:
        return first  # answered before the body: it is not sent
    conn.send(case.body_after_continue)
    response = conn.read_response(case.methods[0])
    if first is not None:
        response.interim.insert(0, first)
    return response


def _fate(conn: RawConnection, responses: list[RawResponse], broken: str | None) -> str:
    """What became of the client's connection: it must serve another request or be closed cleanly."""
    if broken is not None or not responses or responses[-1].closes:
        return "closed" if conn.closed_cleanly() else "left open after its last response"
    # A connection closed after a response that did not say so is not closed cleanly: a client
    # may have sent its next request already, and sees it fail.
    return "serves" if conn.still_serves(timeout=5) else "unusable: the next request was not answered"


# --- the comparison ------------------------------------------------------------------------------


def end_to_end(fields: Fields, drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Fields as a relay must keep them: names lowercased, hop-by-hop and framing fields left out."""
    named = connection_tokens(fields)
    kept = []
    for name, value in fields:
        low = name.lower()
        if low not in HOP_BY_HOP and low not in named and low not in _FRAMING and low not in drop:
            kept.append((low, value))
    return kept


def response_differences(case: Case, direct: Outcome, via: Outcome) -> list[str]:
    problems = []
    if len(direct.responses) != len(via.responses):
        return [f"{len(direct.responses)} responses directly, {len(via.responses)} through the gateway"]
    if (direct.broken is None) != (via.broken is None):
        problems.append(f"broken directly: {direct.broken}; through the gateway: {via.broken}")
    expects = b"expect: 100-continue" in case.build("").lower()
    for index, (d, v) in enumerate(zip(direct.responses, via.responses, strict=True)):
        where = f"response {index + 1}: "
        if d.status != v.status:
            problems.append(where + f"status {d.status} became {v.status}")
        interim = [r.status for r in v.interim]
        if interim not in ([], [100] if expects else []):
            problems.append(where + f"interim answers {interim} through the gateway")
        if end_to_end(d.headers) != end_to_end(v.headers):
            problems.append(where + f"fields {end_to_end(d.headers)} became {end_to_end(v.headers)}")
        if d.body != v.body:
            problems.append(where + f"body of {len(d.body)} bytes became {len(v.body)} bytes: {v.body[:60]!r}")
        if v.trailers:
            problems.append(where + f"trailers relayed: {v.trailers}")
        if v.framing == "chunked" and b" HTTP/1.0\r\n" in case.build(""):
            problems.append(where + "chunked framing to an HTTP/1.0 client")
    return problems


def _target(received: Received) -> bytes:
    target = re.sub(rb"^https?://[^/]*", b"", received.target)
    return re.sub(rb"/s/([^/]+)/[0-9a-f]{32}", rb"/s/\1/TAG", target)


def request_differences(case: Case, direct: Outcome, via: Outcome, upstream_port: int) -> list[str]:
    if len(direct.received) != len(via.received):
        return [f"the upstream got {len(direct.received)} requests directly, {len(via.received)} through the gateway"]
    problems = []
    for index, (d, v) in enumerate(zip(direct.received, via.received, strict=True)):
        where = f"request {index + 1}: "
        if (d.method, _target(d)) != (v.method, _target(v)):
            problems.append(where + f"{d.method!r} {_target(d)!r} became {v.method!r} {_target(v)!r}")
        if v.version != b"HTTP/1.1":
            problems.append(where + f"reached the upstream as {v.version!r}")
        if end_to_end(d.headers, _FORWARDING) != end_to_end(v.headers, _FORWARDING):
            problems.append(
                where + f"fields {end_to_end(d.headers, _FORWARDING)} became {end_to_end(v.headers, _FORWARDING)}"
            )
        problems += forwarding_differences(where, d, v, upstream_port)
        if case.compare_request_body and d.body != v.body:
            problems.append(where + f"body of {len(d.body)} bytes became {len(v.body)} bytes")
        if v.trailers:
            problems.append(where + f"trailers relayed: {v.trailers}")
    return problems


def forwarding_differences(where: str, direct: Received, via: Received, upstream_port: int) -> list[str]:
    sent = {name.lower(): value for name, value in reversed(direct.headers)}
    got = [(name.lower(), value) for name, value in via.headers if name.lower() in _FORWARDING]
    chain = b", ".join(value for name, value in direct.headers if name.lower() == b"x-forwarded-for")
    expected = [(b"host", b"127.0.0.1:%d" % upstream_port)]
    expected.append((b"x-forwarded-for", chain + b", 127.0.0.1" if chain else b"127.0.0.1"))
    expected.append((b"x-forwarded-proto", b"http"))
    if b"host" in sent:
        expected.append((b"x-forwarded-host", sent[b"host"]))
    return [] if sorted(got) == sorted(expected) else [where + f"forwarding fields {got}, expected {expected}"]


def gateway_answer_differences(case: Case, via: Outcome) -> list[str]:
    expected = {REFUSED_400: 400, BAD_GATEWAY: 502, GATEWAY_TIMEOUT: 504}[case.gateway]
    if not via.responses or via.broken:
        return [f"expected the gateway's {expected}, got {via.broken or 'nothing'}"]
    response = via.responses[0]
    problems = [] if response.status == expected else [f"expected the gateway's {expected}, got {response.status}"]
    if case.gateway == REFUSED_400 and response.first(b"content-type") == b"text/plain; charset=utf-8":
        return problems  # refused by uvicorn's parser itself (httptools: CONNECT), before the gateway
    if response.first(b"content-type") != b"application/json" or "error" not in json.loads(response.body):
        problems.append(f"the gateway's answer is not a JSON error: {response.body[:80]!r}")
    return problems


@pytest.mark.parametrize("name", sorted(CASES))
def test_exchange_through_the_gateway_matches_the_upstream_direct(
    gateway: Gateway, raw_upstream: RawUpstream, name: str
) -> None:
    case = CASES[name]
    via = exchange(gateway.server.port, raw_upstream, case, through_gateway=True)
    assert via.fate in ("serves", "closed"), via.fate
    if case.gateway != RELAYED:
        assert gateway_answer_differences(case, via) == []
        if case.gateway == REFUSED_400:
            assert via.received == []
        return
    reference = direct(raw_upstream, case)
    assert response_differences(case, reference, via) == []
    assert request_differences(case, reference, via, raw_upstream.port) == []


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150


def test_every_transformation_allowed_is_documented() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "passthrough.md").read_text()
    assert [item for item in sorted(TRANSFORMATIONS) if f"- {item}\n" not in page] == []

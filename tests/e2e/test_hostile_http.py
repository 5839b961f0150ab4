"""Hostile HTTP over raw sockets, under both of uvicorn's parsers: smuggling, framing, targets, slow clients.

Every refused request must get a 400 (or 408/431) or a closed connection, never a 2xx, and must
not reach the upstream: each case uses its own path, and the fake upstream records every call.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from asyncgate.config import load
from asyncgate.server import HttpParser, head_problem, uvicorn_options
from tests.e2e.conftest import HTTP_PARSERS, Gateway, Upstream
from tests.support.wait import wait_until

#: Short enough to keep the slow-client tests quick, long enough for a loaded CI machine.
REQUEST_TIMEOUT = 1.0
MAX_HEADER_BYTES = 8 * 1024
#: How long an exchange may take: a refusal is immediate, a timeout takes REQUEST_TIMEOUT.
EXCHANGE_DEADLINE = REQUEST_TIMEOUT + 4.0
REFUSED_STATUSES = {400, 408, 431}


@pytest.fixture(scope="module", params=HTTP_PARSERS)
def parser(request: pytest.FixtureRequest) -> HttpParser:
    parser: HttpParser = request.param
    return parser


@pytest.fixture(scope="module")
def gateway(parser: HttpParser, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    overrides = {
        "upstream": upstream.url,
        "store.data_dir": str(tmp_path_factory.mktemp(f"hostile-{parser}")),
        "runs.poll_interval": 0.2,
        "shutdown.drain_timeout": 1,
        "limits.request_timeout": REQUEST_TIMEOUT,
        "limits.max_header_bytes": MAX_HEADER_BYTES,
    }
    config = load(None, environ={}, overrides=overrides)
    server = Gateway(config, timeout_graceful_shutdown=2, **uvicorn_options(config, http=parser))
    yield server
    server.stop()


# --- a raw HTTP/1.1 client ---------------------------------------------------------------------


@dataclasses.dataclass
class Exchange:
    data: bytes
    closed: bool

    @property
    def statuses(self) -> list[int]:
        """The status of each response received, in order."""
        statuses = []
        rest = self.data
        while rest:
            status = re.match(rb"HTTP/1\.[01] (\d{3}) ", rest)
            if status is None:
                break
            statuses.append(int(status.group(1)))
            rest = rest[_response_length(rest) or len(rest) :]
        return statuses


def _response_length(data: bytes) -> int | None:
    """The length of the first response in ``data`` if it is all there, None otherwise."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    start = len(head) + len(sep)
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if length is not None:
        return start + int(length.group(1)) if len(body) >= int(length.group(1)) else None
    if re.search(rb"\r\ntransfer-encoding: *chunked", head, re.IGNORECASE):
        last = re.search(rb"(?:^|\r\n)0\r\n\r\n", body)
        return None if last is None else start + last.end()
    return None  # delimited by the connection's close


def _response_complete(data: bytes) -> bool:
    return _response_length(data) is not None


def _read(sock: socket.socket, deadline: float, until_response: bool) -> tuple[bytes, bool]:
    """Bytes received until the peer closes, a whole response arrived (if asked), or the deadline."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if until_response and _response_complete(data):
            return data, False
    return data, False


def exchange(gateway: Gateway, payload: bytes, sentinel_path: str) -> Exchange:
    """Send ``payload``; if the connection survives a first response, send a last request on it.

    Requests on one connection are answered in order, so once the last request's answer (or the
    close) is in, any request smuggled inside ``payload`` has reached the upstream or never will.
    """
    deadline = time.monotonic() + EXCHANGE_DEADLINE
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # refused before it was all sent; what came back says how
        data, closed = _read(sock, deadline, until_response=True)
        if not closed and data:
            last = f"GET {sentinel_path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
            try:
                sock.sendall(last)
            except OSError:
                pass
            more, closed = _read(sock, deadline, until_response=False)
            data += more
    return Exchange(data, closed)


def calls_under(upstream: Upstream, prefix: str) -> list[dict[str, object]]:
    return [c for c in upstream.calls.all() if str(c.get("path", "")).startswith(prefix)]


# --- the corpus ----------------------------------------------------------------------------------

Build = Callable[[str, str], bytes]


def fixed(template: str) -> Build:
    """A payload from a template: {path} is the case's path, {smuggled} the path hidden inside."""
    return lambda path, smuggled: template.format(path=path, smuggled=smuggled).encode("latin-1")


def cl_te_smuggle(path: str, smuggled: str) -> bytes:
    # A front end trusting Content-Length forwards it all; one trusting chunked sees two requests.
    body = f"0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: x\r\nX-Ignore: "
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    return (head + body).encode()


def te_cl_smuggle(path: str, smuggled: str) -> bytes:
    # A front end trusting chunked forwards it all; one trusting Content-Length: 4 sees two requests.
    inner = f"GET {smuggled} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nx=1"
    body = f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    return (head + body).encode()


def te_te_smuggle(path: str, smuggled: str) -> bytes:
    # Two Transfer-Encoding fields, one garbled: the classic way to make one parser fall back on CL.
    body = f"0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n"
    )
    return (head + body).encode()


def cl_cl_smuggle(path: str, smuggled: str) -> bytes:
    inner = f"GET {smuggled} HTTP/1.1\r\nHost: x\r\n\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {len(inner)}\r\n\r\n"
    return (head + inner).encode()


REFUSED = "refused"
#: Accepted, as RFC 9112 allows, and forwarded as exactly one request.
ONE = "one request"

POST = "POST {path} HTTP/1.1\r\nHost: x\r\n"
GET = "GET {path} HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + "Transfer-Encoding: chunked\r\n\r\n"

# name -> (payload, outcome under h11, outcome under httptools)
CORPUS: dict[str, tuple[Build, str, str]] = {
    # Content-Length and Transfer-Encoding together, in either order
    "cl_then_te": (fixed(POST + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_then_cl": (fixed(POST + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    # Content-Length spelled badly or twice
    "cl_duplicate_differing": (fixed(POST + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), REFUSED, REFUSED),
    # h11 folds identical duplicates into one, as RFC 9110 §8.6 allows; llhttp refuses them
    "cl_duplicate_identical": (fixed(POST + "Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"), ONE, REFUSED),
    "cl_list_differing": (fixed(POST + "Content-Length: 4, 3\r\n\r\nabcd"), REFUSED, REFUSED),
    "cl_list_identical": (fixed(POST + "Content-Length: 4, 4\r\n\r\nabcd"), ONE, REFUSED),
    "cl_plus_sign": (fixed(POST + "Content-Length: +4\r\n\r\nabcd"), REFUSED, REFUSED),
    "cl_minus_sign": (fixed(POST + "Content-Length: -4\r\n\r\nabcd"), REFUSED, REFUSED),
    "cl_inner_space": (fixed(POST + "Content-Length: 4 4\r\n\r\nabcd"), REFUSED, REFUSED),
    "cl_hex": (fixed(POST + "Content-Length: 0x4\r\n\r\nabcd"), REFUSED, REFUSED),
    "cl_space_before_colon": (fixed(POST + "Content-Length : 4\r\n\r\nabcd"), REFUSED, REFUSED),
    # Transfer-Encoding other than a single, plain chunked
    "te_chunked_identity": (fixed(POST + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_identity_chunked": (fixed(POST + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_space_before_colon": (fixed(POST + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_xchunked": (fixed(POST + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_chunked_suffix": (fixed(POST + "Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_vertical_tab": (fixed(POST + "Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "te_twice": (
        fixed(POST + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        REFUSED,
        REFUSED,
    ),
    "te_in_http10": (
        fixed("POST {path} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        REFUSED,
        REFUSED,
    ),
    # obsolete line folding
    "obs_fold_transfer_encoding": (fixed(POST + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "obs_fold_other_header": (fixed(GET + "X-A: a\r\n\tb\r\n\r\n"), REFUSED, REFUSED),
    # malformed chunked bodies
    "chunk_size_not_hex": (fixed(CHUNKED + "zz\r\nabcd\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "chunk_size_overflow": (fixed(CHUNKED + "fffffffffffffffff1\r\nabcd\r\n0\r\n\r\n"), REFUSED, REFUSED),
    "chunk_size_signed": (fixed(CHUNKED + "+4\r\nabcd\r\n0\r\n\r\n"), REFUSED, REFUSED),
    # CVE-2025-43859: h11 < 0.16 took any two bytes for the CRLF ending a chunk's data
    "chunk_missing_crlf": (fixed(CHUNKED + "4\r\nabcdXX0\r\n\r\n"), REFUSED, REFUSED),
    "chunk_missing_last_chunk": (fixed(CHUNKED + "4\r\nabcd\r\n\r\n"), REFUSED, REFUSED),
    "chunk_bare_lf": (fixed(CHUNKED + "4\nabcd\n0\n\n"), REFUSED, REFUSED),
    # h11 ignores chunk extensions; the gateway re-frames the body, so the upstream never sees them
    "chunk_extension_unbalanced_quote": (fixed(CHUNKED + '4;a="b\r\nabcd\r\n0\r\n\r\n'), ONE, REFUSED),
    # control bytes and broken line ends in the head
    "nul_in_header_value": (fixed(GET + "X-A: a\x00b\r\n\r\n"), REFUSED, REFUSED),
    "nul_in_header_name": (fixed(GET + "X-\x00A: b\r\n\r\n"), REFUSED, REFUSED),
    "cr_in_header_value": (fixed(GET + "X-A: a\rb\r\n\r\n"), REFUSED, REFUSED),
    "bare_lf_everywhere": (fixed("GET {path} HTTP/1.1\nHost: x\n\n"), REFUSED, REFUSED),
    "bare_lf_one_header": (fixed("GET {path} HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"), REFUSED, REFUSED),
    "space_in_header_name": (fixed(GET + "X A: b\r\n\r\n"), REFUSED, REFUSED),
    # Host, version and request-target
    "no_host": (fixed("GET {path} HTTP/1.1\r\n\r\n"), REFUSED, REFUSED),
    "two_hosts": (fixed(GET + "Host: y\r\n\r\n"), REFUSED, REFUSED),
    "http_1_2": (fixed("GET {path} HTTP/1.2\r\nHost: x\r\n\r\n"), REFUSED, REFUSED),
    "http_garbage_version": (fixed("GET {path} HTTP/x\r\nHost: x\r\n\r\n"), REFUSED, REFUSED),
    "connect": (fixed("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"), REFUSED, REFUSED),
    "authority_form_get": (fixed("GET evil.example:80 HTTP/1.1\r\nHost: evil.example\r\n\r\n"), REFUSED, REFUSED),
    # request smuggling pairs: the hidden request must never reach the upstream on its own
    "smuggle_cl_te": (cl_te_smuggle, REFUSED, REFUSED),
    "smuggle_te_cl": (te_cl_smuggle, REFUSED, REFUSED),
    "smuggle_te_te": (te_te_smuggle, REFUSED, REFUSED),
    "smuggle_cl_cl": (cl_cl_smuggle, REFUSED, REFUSED),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_request_never_reaches_the_upstream(
    gateway: Gateway, upstream: Upstream, parser: str, case: str
) -> None:
    build, under_h11, under_httptools = CORPUS[case]
    expected = under_h11 if parser == "h11" else under_httptools
    base = f"/echo/hostile-{uuid.uuid4().hex}"
    path, smuggled = f"{base}/{case}", f"{base}/smuggled"

    result = exchange(gateway, build(path, smuggled), sentinel_path=f"{base}/last")

    reached = [c["path"] for c in calls_under(upstream, base) if c["path"] != f"{base}/last"]
    if expected == REFUSED:
        assert result.closed, f"connection left open: {result.data!r}"
        assert set(result.statuses) <= REFUSED_STATUSES, result.data
        assert reached == []
    else:
        assert result.statuses[:1] == [200], result.data
        assert reached == [path]


def test_the_corpus_tells_requests_apart(gateway: Gateway, upstream: Upstream) -> None:
    """The control: two valid pipelined requests in one packet are seen as two, and a body as a body."""
    base = f"/echo/control-{uuid.uuid4().hex}"
    first = f"POST {base}/one HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    second = f"POST {base}/two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
    result = exchange(gateway, (first + second).encode(), sentinel_path=f"{base}/last")
    assert result.statuses == [200, 200, 200]
    calls = calls_under(upstream, base)
    assert [(c["path"], c["body"]) for c in calls] == [
        (f"{base}/one", "abcd"),
        (f"{base}/two", "xyz"),
        (f"{base}/last", ""),
    ]


def test_pipelined_head_with_obs_fold_is_refused_behind_a_valid_one(gateway: Gateway, upstream: Upstream) -> None:
    """h11 parses a pipelined head from its buffer, not from a read: it must be checked there too."""
    base = f"/echo/pipelined-{uuid.uuid4().hex}"
    first = f"GET {base}/first HTTP/1.1\r\nHost: x\r\n\r\n"
    second = f"GET {base}/folded HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"
    result = exchange(gateway, (first + second).encode(), sentinel_path=f"{base}/last")
    assert result.closed and 400 in result.statuses
    assert f"{base}/folded" not in [c["path"] for c in calls_under(upstream, base)]


@pytest.mark.parametrize(
    "reads",
    [
        [b"GET / HTTP/1.1\r\nX-A: a\r\n", b" b\r\n\r\n"],  # the fold's space starts the next read
        [b"GET / HTTP/1.1\r", b"\nX-A: a\r\n", b"\tb\r\n\r\n"],
        [b"GET / HTTP/1.1\r\nX-A: a", b"\nX-B: b\r\n\r\n"],  # a bare LF at the start of a read
    ],
)
def test_head_scan_sees_a_loose_line_split_across_reads(reads: list[bytes]) -> None:
    context = b""
    problems = []
    for data in reads:
        problem, context = head_problem(context, data)
        problems.append(problem)
    assert problems[:-1] == [None] * (len(reads) - 1) and problems[-1] is not None


def test_head_scan_stops_at_the_end_of_the_head() -> None:
    # A body may hold any bytes: pretty-printed JSON has LF and indented lines galore.
    problem, _ = head_problem(b"", b'POST / HTTP/1.1\r\nHost: x\r\n\r\n{\n  "pretty": true\n}')
    assert problem is None


# --- request targets, Host, forwarding headers -----------------------------------------------------


def upstream_header(call: dict[str, object], name: str) -> list[str]:
    headers = call["headers"]
    assert isinstance(headers, list)
    return [value for key, value in headers if key == name]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_absolute_form_target_reaches_only_the_configured_upstream(
    gateway: Gateway, upstream: Upstream, scheme: str
) -> None:
    path = f"/echo/absolute-{uuid.uuid4().hex}"
    payload = f"GET {scheme}://evil.example:8443{path}?q=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    result = exchange(gateway, payload.encode(), sentinel_path=f"{path}/last")
    assert result.statuses[:1] == [200]
    [call, _last] = calls_under(upstream, path)
    assert (call["raw_path"], call["query"]) == (path, "q=1")
    assert upstream_header(call, "host") == [upstream.url.removeprefix("http://")]


def test_absolute_form_root_is_the_upstream_root(gateway: Gateway) -> None:
    result = exchange(gateway, b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", "/echo/x")
    # The fake upstream has no route at / : its own 404 proves the request went there, as "/".
    assert result.statuses[:1] == [404]
    assert b"Not Found" in result.data


def test_host_header_does_not_choose_the_upstream(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/echo/host-{uuid.uuid4().hex}"
    payload = f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n\r\n"
    result = exchange(gateway, payload.encode(), sentinel_path=f"{path}/last")
    assert result.statuses[:1] == [200]
    [call, _last] = calls_under(upstream, path)
    assert upstream_header(call, "host") == [upstream.url.removeprefix("http://")]
    assert upstream_header(call, "x-forwarded-host") == ["evil.example"]


def test_x_forwarded_for_is_appended_to_never_believed(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/echo/xff-{uuid.uuid4().hex}"
    payload = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 192.168.0.7\r\n"
        "X-Forwarded-Proto: https\r\n\r\n"
    )
    exchange(gateway, payload.encode(), sentinel_path=f"{path}/last")
    [call, _last] = calls_under(upstream, path)
    assert upstream_header(call, "x-forwarded-for") == ["10.0.0.1, 192.168.0.7, 127.0.0.1"]
    assert upstream_header(call, "x-forwarded-proto") == ["http"]


def test_location_comes_from_configuration_not_from_the_client(gateway: Gateway) -> None:
    response = gateway.client.post(
        "/echo/location?async=true",
        content=b"{}",
        headers={
            "Authorization": "Bearer hostile-test",
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
        },
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}"


# --- sizes and slow clients ----------------------------------------------------------------------


def test_oversized_head_is_refused(gateway: Gateway, upstream: Upstream, parser: str) -> None:
    path = f"/echo/big-{uuid.uuid4().hex}"
    payload = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * (2 * MAX_HEADER_BYTES)}\r\n\r\n"
    result = exchange(gateway, payload.encode(), sentinel_path=f"{path}/last")
    assert result.closed
    # h11 enforces the same bound itself (h11_max_incomplete_event_size), with a 400.
    assert result.statuses == [431] or (parser == "h11" and result.statuses == [400]), result.data
    assert calls_under(upstream, path) == []


class SlowClient:
    """A client that sends ``payload`` a byte at a time and notes when the gateway gives up on it."""

    def __init__(self, port: int, payload: bytes, *, at_once: bytes = b"", pace: float = 0.05) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(at_once)
        self.sock.setblocking(False)
        self.payload = payload
        self.pace = pace
        self.started = time.monotonic()
        self.received = b""
        self.closed_after: float | None = None

    def step(self) -> None:
        """Send one byte, then wait up to ``pace`` for the gateway to answer or hang up."""
        if self.closed_after is not None:
            return
        if self.payload:
            try:
                self.sock.send(self.payload[:1])
                self.payload = self.payload[1:]
            except OSError:
                self.payload = b""
        readable, _, _ = select.select([self.sock], [], [], self.pace)  # the pacing: a wait on the gateway
        if readable:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            self.received += chunk
            if not chunk:
                self.closed_after = time.monotonic() - self.started
                self.sock.close()

    def close(self) -> None:
        self.sock.close()


def trickle(clients: list[SlowClient], stop: threading.Event) -> None:
    while not stop.is_set() and any(c.closed_after is None for c in clients):
        for client in clients:
            client.step()


def test_trickled_heads_are_dropped_after_the_timeout_while_others_are_served(
    gateway: Gateway, upstream: Upstream
) -> None:
    path = f"/echo/slowloris-{uuid.uuid4().hex}"
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
    clients = [SlowClient(gateway.server.port, head, pace=0.01) for _ in range(20)]
    stop = threading.Event()
    thread = threading.Thread(target=trickle, args=(clients, stop), daemon=True)
    thread.start()
    try:
        # Meanwhile a well-behaved client is answered promptly, again and again.
        latencies: list[float] = []
        while any(c.closed_after is None for c in clients) and len(latencies) < 200:
            began = time.monotonic()
            response = gateway.client.get("/echo/well-behaved")
            latencies.append(time.monotonic() - began)
            assert response.status_code == 200
        wait_until(lambda: all(c.closed_after is not None for c in clients), EXCHANGE_DEADLINE, message="slowloris")
    finally:
        stop.set()
        thread.join(10)
        for client in clients:
            client.close()
    assert len(latencies) >= 5 and max(latencies) < REQUEST_TIMEOUT
    for client in clients:
        assert client.closed_after is not None
        assert REQUEST_TIMEOUT * 0.9 <= client.closed_after < REQUEST_TIMEOUT + 2.0
        assert client.received.startswith(b"HTTP/1.1 408 ")
    assert calls_under(upstream, path) == []


def test_trickled_body_is_dropped_after_its_allowance(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/echo/slowbody-{uuid.uuid4().hex}"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n".encode()
    client = SlowClient(gateway.server.port, b"x" * 10000, at_once=head, pace=0.02)
    stop = threading.Event()
    trickle_thread = threading.Thread(target=trickle, args=([client], stop), daemon=True)
    trickle_thread.start()
    try:
        wait_until(lambda: client.closed_after is not None, EXCHANGE_DEADLINE, message="slow body")
    finally:
        stop.set()
        trickle_thread.join(10)
        client.close()
    assert client.closed_after is not None and REQUEST_TIMEOUT * 0.9 <= client.closed_after < REQUEST_TIMEOUT + 2.0
    assert b"HTTP/1.1 2" not in client.received
    assert calls_under(upstream, path) == []


def test_silent_connection_is_closed_after_the_timeout(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as sock:
        began = time.monotonic()
        data, closed = _read(sock, time.monotonic() + EXCHANGE_DEADLINE, until_response=False)
        elapsed = time.monotonic() - began
    assert (data, closed) == (b"", True)
    assert REQUEST_TIMEOUT * 0.9 <= elapsed < REQUEST_TIMEOUT + 2.0


def test_slow_upstream_does_not_count_against_the_client(gateway: Gateway) -> None:
    """The deadline is for what the client sends; waiting on the upstream is the gateway's time."""
    seconds = REQUEST_TIMEOUT * 1.5
    response = gateway.client.post(f"/sleep?seconds={seconds}", content=b"x" * 1000)
    assert response.status_code == 200
    assert response.json()["slept"] == seconds
    # ...and the connection is kept alive for the next request.
    assert gateway.client.get("/echo/after-sleep").status_code == 200


# --- dependencies ----------------------------------------------------------------------------------


def _version(package: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(package))[:3])


def test_h11_is_free_of_cve_2025_43859() -> None:
    # h11 < 0.16.0 accepted malformed chunked-encoding line ends, enabling request smuggling.
    assert _version("h11") >= (0, 16, 0)


def test_httptools_is_installed_with_llhttp_leniencies_off() -> None:
    # uvicorn turns on only lenient_data_after_close; every other llhttp leniency stays off.
    assert _version("httptools") >= (0, 6, 3)

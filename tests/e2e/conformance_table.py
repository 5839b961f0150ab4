"""The exchanges of tests/e2e/test_conformance.py: each one a request as exact bytes and an upstream
script answering it with exact bytes (tests/support/rawupstream.py).

In a request, ``{path}`` is the case's own path on the raw upstream (``/s/<name>/<tag>``), so the
upstream finds the script, and the test finds what the upstream received.
"""

from __future__ import annotations

import dataclasses
import gzip

from tests.support.rawupstream import Script, ScriptOptions, Step, answer

#: What the gateway answers itself instead of relaying (docs/passthrough.md lists each).
RELAYED = "relayed"
REFUSED_400 = "gateway 400"
BAD_GATEWAY = "gateway 502"
GATEWAY_TIMEOUT = "gateway 504"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    #: The request bytes; ``{path}`` is replaced by the case's path.
    request: str | bytes
    script: Script
    #: The method of each request sent (one per pipelined request).
    methods: tuple[bytes, ...] = (b"GET",)
    #: Send the body only after 100 Continue (or a short wait), as a client with Expect does.
    body_after_continue: bytes | None = None
    gateway: str = RELAYED
    #: False where the upstream answers before reading the body: what it reads later may be cut.
    compare_request_body: bool = True

    def build(self, path: str) -> bytes:
        raw = self.request if isinstance(self.request, bytes) else self.request.encode("latin-1")
        return raw.replace(b"{path}", path.encode("latin-1"))


def ok(status: int = 200, reason: str = "OK", body: bytes = b"ok", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode("latin-1") + body


def chunked(status: int = 200, reason: str = "OK", body: bytes = b"hello world", extra: str = "") -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:5], body[5:]) if piece)
    head = f"HTTP/1.1 {status} {reason}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode("latin-1")
    return head + chunks + b"0\r\n\r\n"


def until_close(status: int = 200, reason: str = "OK", body: bytes = b"until the end", extra: str = "") -> Script:
    return answer(f"HTTP/1.1 {status} {reason}\r\n{extra}\r\n".encode("latin-1") + body, then="close")


GET = "GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n"
REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    418: "I'm a teapot",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _status_cases() -> list[Case]:
    cases = []
    for status, reason in REASONS.items():
        body = f'{{"status": {status}}}'.encode()
        extra = "Content-Type: application/json\r\n"
        if 300 <= status < 400:
            extra += "Location: /elsewhere\r\n"
        if status in (429, 503):
            extra += "Retry-After: 7\r\n"
        if status == 401:
            extra += 'WWW-Authenticate: Bearer realm="x"\r\n'
        cases += [
            Case(f"status-{status}-length", GET, answer(ok(status, reason, body, extra))),
            Case(f"status-{status}-chunked", GET, answer(chunked(status, reason, body, extra))),
            Case(f"status-{status}-close", GET, until_close(status, reason, body, extra)),
        ]
    return cases


def _method_cases() -> list[Case]:
    cases = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE"):
        head = f"{method} {{path}} HTTP/1.1\r\nHost: example.test\r\n"
        lower = method.lower()
        cases.append(Case(f"method-{lower}", head + "\r\n", answer(ok(extra="Allow: GET\r\n")), (method.encode(),)))
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            cases += [
                Case(
                    f"method-{lower}-length-body",
                    head + 'Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": [1]}\n',
                    answer(ok(201, "Created", b"made")),
                    (method.encode(),),
                ),
                Case(
                    f"method-{lower}-chunked-body",
                    head + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
                    answer(ok()),
                    (method.encode(),),
                ),
            ]
    cases += [
        Case(
            "options-asterisk",
            "OPTIONS * HTTP/1.1\r\nHost: example.test\r\n\r\n",
            answer(ok(extra="Allow: GET, POST\r\n")),
            (b"OPTIONS",),
        ),
        Case(
            "connect-refused",
            "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
            answer(ok()),
            (b"CONNECT",),
            gateway=REFUSED_400,
        ),
        Case(
            "post-empty-length",
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            answer(ok()),
            (b"POST",),
        ),
        Case("post-no-length", "POST {path} HTTP/1.1\r\nHost: x\r\n\r\n", answer(ok()), (b"POST",)),
    ]
    return cases


HEAD = "HEAD {path} HTTP/1.1\r\nHost: example.test\r\n\r\n"
TRAILERS = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n"
GZIPPED = gzip.compress(b"compressed " * 50, mtime=0)


def _framing_cases() -> list[Case]:
    big = bytes(range(256)) * 4096  # 1 MiB
    many_chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 1000]), big[i : i + 1000]) for i in range(0, 200_000, 1000)
    )
    return [
        Case(
            "head-length",
            HEAD,
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"),
            (b"HEAD",),
        ),
        Case("head-length-zero", HEAD, answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), (b"HEAD",)),
        Case("head-chunked", HEAD, answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), (b"HEAD",)),
        Case(
            "head-no-framing",
            HEAD,
            answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", then="close"),
            (b"HEAD",),
        ),
        Case("head-404-length", HEAD, answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n"), (b"HEAD",)),
        Case("head-304", HEAD, answer(b'HTTP/1.1 304 Not Modified\r\nETag: "v"\r\n\r\n'), (b"HEAD",)),
        Case("head-204", HEAD, answer(b"HTTP/1.1 204 No Content\r\n\r\n"), (b"HEAD",)),
        Case("status-204", GET, answer(b"HTTP/1.1 204 No Content\r\nX-Why: nothing\r\n\r\n")),
        Case("status-204-length", GET, answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")),
        Case("status-205-length", GET, answer(b"HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n")),
        Case(
            "status-205-chunked",
            GET,
            answer(b"HTTP/1.1 205 Reset Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        Case("status-205-close", GET, until_close(205, "Reset Content", b"")),
        Case(
            "status-304", GET, answer(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n')
        ),
        Case(
            "status-304-length", GET, answer(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n')
        ),
        Case("status-200-empty-length", GET, answer(ok(body=b""))),
        Case(
            "status-200-empty-chunked", GET, answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        ),
        Case("status-200-empty-close", GET, until_close(body=b"")),
        Case("large-length", GET, answer(ok(body=big, extra="Content-Type: application/octet-stream\r\n"))),
        Case(
            "large-chunked-many-chunks",
            GET,
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + many_chunks + b"0\r\n\r\n"),
        ),
        Case("large-close", GET, until_close(body=big)),
        Case(
            "chunk-extensions",
            GET,
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n"),
        ),
        Case("trailers", GET, answer(TRAILERS)),
        Case(
            "trailers-several",
            GET,
            answer(TRAILERS.replace(b"X-Checksum: 42\r\n", b"X-Checksum: 42\r\nX-Count: 1\r\nX-Count: 2\r\n")),
        ),
        Case(
            "request-trailers",
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
            answer(ok()),
            (b"POST",),
        ),
        Case(
            "large-request-body",
            b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + big,
            answer(ok()),
            (b"POST",),
        ),
        Case(
            "large-request-chunked",
            b"PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + many_chunks + b"0\r\n\r\n",
            answer(ok()),
            (b"PUT",),
        ),
    ]


def _interim_cases() -> list[Case]:
    final = ok(body=b"final")
    return [
        Case(
            "interim-103", GET, answer(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + final)
        ),
        Case(
            "interim-103-twice",
            GET,
            answer(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b>\r\n\r\n" + final
            ),
        ),
        Case("interim-100-unasked", GET, answer(b"HTTP/1.1 100 Continue\r\n\r\n" + final)),
        Case("interim-102", GET, answer(b"HTTP/1.1 102 Processing\r\n\r\n" + final)),
        Case(
            "status-101-unasked",
            GET,
            answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n", then="close"),
            gateway=BAD_GATEWAY,
        ),
    ]


def _header_cases() -> list[Case]:
    long_value = "v" * 8000
    many = "".join(f"X-Field-{i}: value {i}\r\n" for i in range(100))
    return [
        Case(
            "content-encoding-gzip",
            GET,
            answer(ok(body=GZIPPED, extra="Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")),
        ),
        Case("content-encoding-gzip-chunked", GET, answer(chunked(body=GZIPPED, extra="Content-Encoding: gzip\r\n"))),
        Case(
            "content-encoding-br-close",
            GET,
            until_close(body=b"\x1b\x03\x00\xf8\x8d\x94n\xde\xb4\xd7\xa6", extra="Content-Encoding: br\r\n"),
        ),
        Case(
            "accept-encoding-request",
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br;q=0.5, *;q=0\r\n\r\n",
            answer(ok()),
        ),
        Case(
            "range-206",
            "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-4\r\n\r\n",
            answer(ok(206, "Partial Content", b"hello", "Content-Range: bytes 0-4/11\r\nAccept-Ranges: bytes\r\n")),
        ),
        Case(
            "range-multipart",
            "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,4-5\r\n\r\n",
            answer(
                ok(
                    206,
                    "Partial Content",
                    b"--B\r\nContent-Range: bytes 0-1/11\r\n\r\nhe\r\n--B\r\nContent-Range: bytes 4-5/11\r\n\r\no \r\n--B--\r\n",
                    "Content-Type: multipart/byteranges; boundary=B\r\n",
                )
            ),
        ),
        Case(
            "range-416",
            "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=50-60\r\n\r\n",
            answer(ok(416, "Range Not Satisfiable", b"", "Content-Range: bytes */11\r\n")),
        ),
        Case(
            "if-range",
            'GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nIf-Range: "v2"\r\n\r\n',
            answer(ok(body=b"hello world", extra='ETag: "v3"\r\n')),
        ),
        Case(
            "if-none-match-304",
            'GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1", W/"v0"\r\n\r\n',
            answer(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'),
        ),
        Case(
            "if-modified-since-304",
            "GET {path} HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Sat, 28 Nov 2026 10:00:00 GMT\r\n\r\n",
            answer(b"HTTP/1.1 304 Not Modified\r\nLast-Modified: Sat, 28 Nov 2026 09:00:00 GMT\r\n\r\n"),
        ),
        Case(
            "if-match-412",
            'PUT {path} HTTP/1.1\r\nHost: x\r\nIf-Match: "v0"\r\nContent-Length: 3\r\n\r\nnew',
            answer(ok(412, "Precondition Failed", b"")),
            (b"PUT",),
        ),
        Case(
            "duplicate-set-cookie",
            GET,
            answer(ok(extra="Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\nSet-Cookie: c=3, d=4\r\n")),
        ),
        Case(
            "duplicate-response-fields",
            GET,
            answer(ok(extra="X-Dup: one\r\nX-Other: between\r\nX-Dup: two\r\nx-dup: three\r\n")),
        ),
        Case(
            "duplicate-request-fields",
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Dup: one\r\nAccept: a/b\r\nX-Dup: two\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
            answer(ok()),
        ),
        Case(
            "empty-field-values",
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
            answer(ok(extra="X-Empty:\r\nX-Space: \r\n")),
        ),
        Case("long-response-field", GET, answer(ok(extra=f"X-Long: {long_value}\r\n"))),
        Case("many-response-fields", GET, answer(ok(extra=many))),
        Case("long-request-field", f"GET {{path}} HTTP/1.1\r\nHost: x\r\nX-Long: {long_value}\r\n\r\n", answer(ok())),
        Case("many-request-fields", "GET {path} HTTP/1.1\r\nHost: x\r\n" + many + "\r\n", answer(ok())),
        Case(
            "long-target",
            "GET {path}/" + "a" * 6000 + "?q=" + "b" * 1000 + " HTTP/1.1\r\nHost: x\r\n\r\n",
            answer(ok()),
        ),
        Case("obs-text-response", GET, answer(ok(extra="X-Latin: caf\xe9 \xff\x80\r\n"))),
        Case("obs-text-request", "GET {path} HTTP/1.1\r\nHost: x\r\nX-Latin: na\xefve \xa0end\r\n\r\n", answer(ok())),
        Case("field-value-whitespace", GET, answer(ok(extra="X-Pad:    padded value\t \r\nX-Inner: a  b\r\n"))),
        Case("field-name-case", GET, answer(ok(extra="x-lower: 1\r\nX-MiXeD-CaSe: 2\r\nCONTENT-TYPE: text/plain\r\n"))),
        Case(
            "target-encodings",
            "GET {path}/a%2Fb/%7Euser;p=1?x=%20&y=+&z&x=2&e= HTTP/1.1\r\nHost: x\r\n\r\n",
            answer(ok()),
        ),
        Case("target-utf8-escaped", "GET {path}/caf%C3%A9?q=%E2%9C%93 HTTP/1.1\r\nHost: x\r\n\r\n", answer(ok())),
        Case(
            "absolute-form-target",
            "GET http://example.test{path}?a=1 HTTP/1.1\r\nHost: example.test\r\n\r\n",
            answer(ok()),
        ),
        Case(
            "response-hop-by-hop",
            GET,
            answer(
                ok(
                    extra="Connection: X-Private, keep-alive\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nX-Public: yes\r\n"
                )
            ),
        ),
        Case(
            "response-proxy-authenticate",
            GET,
            answer(ok(407, "Proxy Authentication Required", b"", 'Proxy-Authenticate: Basic realm="p"\r\n')),
        ),
        Case("response-upgrade-field", GET, answer(ok(extra="Upgrade: h2c\r\n"))),
        Case(
            "request-hop-by-hop",
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: X-Private\r\nX-Private: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Public: yes\r\n\r\n",
            answer(ok()),
        ),
        Case(
            "request-forwarded-fields",
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=203.0.113.9\r\nVia: 1.1 front\r\n\r\n",
            answer(ok()),
        ),
        Case(
            "response-via-date-server",
            GET,
            answer(ok(extra="Via: 1.1 inner\r\nDate: Sat, 28 Nov 2026 10:00:00 GMT\r\nServer: raw/1.0\r\n")),
        ),
        Case(
            "response-cache-fields",
            GET,
            answer(
                ok(
                    extra='Cache-Control: public, max-age=60\r\nAge: 12\r\nExpires: Sat, 28 Nov 2026 11:00:00 GMT\r\nETag: W/"w1"\r\n'
                )
            ),
        ),
        Case(
            "request-authorization-cookie",
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc.def\r\nCookie: session=1; theme=dark\r\n\r\n",
            answer(ok()),
        ),
    ]


def _connection_cases() -> list[Case]:
    return [
        Case("http10-length", "GET {path} HTTP/1.0\r\n\r\n", answer(ok())),
        Case("http10-chunked-upstream", "GET {path} HTTP/1.0\r\n\r\n", answer(chunked())),
        Case("http10-close", "GET {path} HTTP/1.0\r\n\r\n", until_close()),
        Case("http10-keep-alive", "GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", answer(ok())),
        Case(
            "http10-host", "GET {path} HTTP/1.0\r\nHost: example.test\r\n\r\n", answer(chunked(body=b"some body here"))
        ),
        Case("http10-post", "POST {path} HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody", answer(ok()), (b"POST",)),
        Case(
            "http10-head",
            "HEAD {path} HTTP/1.0\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
            (b"HEAD",),
        ),
        Case("http11-connection-close", "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", answer(ok())),
        Case(
            "http11-connection-close-chunked",
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            answer(chunked()),
        ),
        Case(
            "http11-keep-alive-explicit",
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            answer(ok()),
        ),
        Case("upstream-connection-close", GET, answer(ok(extra="Connection: close\r\n"), then="close")),
        Case("upstream-http10-answer", GET, answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", then="close")),
        Case("upstream-http10-close-delimited", GET, answer(b"HTTP/1.0 200 OK\r\n\r\nuntil close", then="close")),
        Case("pipelined-two-gets", (GET + GET).replace("{path}", "{path}", 1), answer(ok()), (b"GET", b"GET")),
        Case(
            "pipelined-mixed",
            "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nPOST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET {path} HTTP/1.1\r\nHost: x\r\n\r\n",
            answer(ok()),
            (b"HEAD", b"POST", b"GET"),
        ),
        Case(
            "pipelined-chunked-then-get",
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n\r\n",
            answer(chunked()),
            (b"POST", b"GET"),
        ),
        Case(
            "pipelined-then-close",
            GET + "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            answer(ok()),
            (b"GET", b"GET"),
        ),
    ]


EARLY_BODY = b"x" * 300_000


def _early_and_broken_cases() -> list[Case]:
    post_big = b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + EARLY_BODY
    post_chunked = (
        b"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"1000\r\n" + b"y" * 4096 + b"\r\n" for _ in range(60))
        + b"0\r\n\r\n"
    )
    expect = "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    stalled: ScriptOptions = {"then": "stall", "stall": 0.6}
    return [
        Case(
            "early-413-close",
            post_big,
            answer(ok(413, "Content Too Large", b"big", "Connection: close\r\n"), read_body=False, then="close"),
            (b"POST",),
            compare_request_body=False,
        ),
        Case(
            "early-401-keep-alive",
            post_big,
            answer(ok(401, "Unauthorized", b"no"), read_body=False),
            (b"POST",),
            compare_request_body=False,
        ),
        Case(
            "early-200-chunked-request",
            post_chunked,
            answer(ok(body=b"early"), read_body=False),
            (b"POST",),
            compare_request_body=False,
        ),
        Case(
            "early-403-small-body",
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            answer(ok(403, "Forbidden", b"nope"), read_body=False),
            (b"POST",),
            compare_request_body=False,
        ),
        Case(
            "reset-mid-length-body",
            GET,
            Script((Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf"),), then="reset"),
        ),
        Case(
            "reset-mid-chunked-body",
            GET,
            Script((Step(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n"),), then="reset"),
        ),
        Case(
            "close-mid-length-body",
            GET,
            Script((Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf"),), then="close"),
        ),
        Case(
            "stall-mid-length-body",
            GET,
            Script((Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf"),), **stalled),
        ),
        Case(
            "stall-mid-chunked-body",
            GET,
            Script((Step(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n"),), **stalled),
        ),
        Case("reset-before-answer", GET, Script((), then="reset"), gateway=BAD_GATEWAY),
        Case("close-before-answer", GET, Script((), then="close"), gateway=BAD_GATEWAY),
        Case("close-mid-head", GET, Script((Step(b"HTTP/1.1 200 OK\r\nContent-"),), then="close"), gateway=BAD_GATEWAY),
        Case("stall-before-answer", GET, Script((), **stalled), gateway=GATEWAY_TIMEOUT),
        Case("garbage-answer", GET, answer(b"NOT HTTP AT ALL\r\n\r\n", then="close"), gateway=BAD_GATEWAY),
        Case(
            "expect-continue-accepted",
            expect,
            answer(ok(), interim=b"HTTP/1.1 100 Continue\r\n\r\n"),
            (b"POST",),
            body_after_continue=b"0123456789",
        ),
        Case("expect-continue-no-interim", expect, answer(ok()), (b"POST",), body_after_continue=b"0123456789"),
        Case(
            "expect-continue-refused",
            expect,
            answer(ok(417, "Expectation Failed", b"", "Connection: close\r\n"), read_body=False, then="close"),
            (b"POST",),
            body_after_continue=b"0123456789",
            compare_request_body=False,
        ),
        Case(
            "expect-continue-refused-401",
            expect,
            answer(ok(401, "Unauthorized", b"who?"), read_body=False, then="close"),
            (b"POST",),
            body_after_continue=b"0123456789",
            compare_request_body=False,
        ),
    ]


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        *_method_cases(),
        *_status_cases(),
        *_framing_cases(),
        *_interim_cases(),
        *_header_cases(),
        *_connection_cases(),
        *_early_and_broken_cases(),
    )
}

from __future__ import annotations

from asyncgate.headers import end_to_end, forwarded_for, response_headers, upstream_request_headers


def test_end_to_end_drops_hop_by_hop_and_connection_named_fields() -> None:
    headers = [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"TE", b"trailers"), (b"X-B", b"2"), (b"X-B", b"3")]
    assert end_to_end(headers) == [(b"X-B", b"2"), (b"X-B", b"3")]


def test_response_headers_keep_repeats_in_order() -> None:
    raw = ((b"Set-Cookie", b"a=1"), (b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"b=2"))
    assert response_headers(raw) == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_forwarded_for_appends_the_peer() -> None:
    assert forwarded_for(None, ("10.1.1.1", 5)) == b"10.1.1.1"
    assert forwarded_for(b"1.2.3.4", ("10.1.1.1", 5)) == b"1.2.3.4, 10.1.1.1"
    assert forwarded_for(b"1.2.3.4", None) == b"1.2.3.4"


def test_upstream_request_headers_replace_forwarding_fields() -> None:
    scope = {
        "headers": [(b"host", b"api"), (b"x-forwarded-host", b"evil"), (b"x-forwarded-for", b"9.9.9.9"), (b"a", b"1")],
        "client": ("127.0.0.1", 4000),
        "scheme": "https",
    }
    assert upstream_request_headers(scope) == [
        ("a", "1"),
        ("X-Forwarded-For", "9.9.9.9, 127.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api"),
    ]

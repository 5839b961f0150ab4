from __future__ import annotations

from typing import Any

import pytest

from asyncgate.errors import BadRequest
from asyncgate.intake import Intent, Limits, classify, split_query, validate_webhook_url
from asyncgate.netguard import Allowlist
from asyncgate.policies import RoutePolicy


def scope(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"query_string": query, "headers": headers or []}


def test_split_query_keeps_everything_else_byte_for_byte() -> None:
    kept, ours = split_query("a=%20b&async=true&webhookEndpoint=http%3A%2F%2Fh%2Fx&c=d+e&&z")
    assert kept == "a=%20b&c=d+e&&z"
    assert ours == {"async": ["true"], "webhookEndpoint": ["http://h/x"]}
    assert split_query("a=1&&b") == ("a=1&&b", {})


@pytest.mark.parametrize("value", [b"true", b"1", b"yes", b"TRUE", b"Yes"])
def test_async_values(value: bytes) -> None:
    intent = classify(scope(b"async=" + value + b"&x=1"))
    assert intent is not None
    assert intent.query == "x=1"
    assert intent.preferred is False


def test_async_false_is_synchronous() -> None:
    assert classify(scope(b"async=false")) is None
    assert classify(scope(b"async=0", [(b"prefer", b"respond-async")])) is None


def test_prefer_respond_async() -> None:
    intent = classify(scope(headers=[(b"prefer", b"return=minimal"), (b"prefer", b"Respond-Async; x=1")]))
    assert intent is not None
    assert intent.preferred is True
    assert intent.prefer == ("return=minimal",)


def test_other_preferences_alone_stay_synchronous() -> None:
    assert classify(scope(headers=[(b"prefer", b"return=minimal, respond-asyncx")])) is None


def test_replay_marker_is_never_async() -> None:
    assert classify(scope(b"async=true", [(b"asyncgate-run-id", b"abc")])) is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (b"async=perhaps", "invalid_parameter"),
        (b"async=true&async=false", "invalid_parameter"),
        (b"webhookEndpoint=http%3A%2F%2Fh%2F", "webhook_requires_async"),
        (b"async=true&webhookEndpoint=a&webhookEndpoint=b", "invalid_webhook_url"),
        (b"async=true&webhookEndpoint=gopher%3A%2F%2Fh", "invalid_webhook_url"),
    ],
)
def test_malformed_requests(query: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        classify(scope(query))
    assert info.value.code == code


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/a?b=c", "http://93.184.215.14:8080/x", "http://[2606:4700::1]/h"]
)
def test_valid_webhook_urls(url: str) -> None:
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8080/x", "http://[::1]:9/h", "http://169.254.169.254/", "http://0x7f.1/"]
)
def test_internal_webhook_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_webhook_url(url)
    assert info.value.code == "blocked_destination"
    allow = Allowlist.parse(["10.0.0.0/8", "::1", "169.254.169.254"])
    if "0x7f" not in url:  # an odd spelling of an address is refused whatever the allowlist says
        assert validate_webhook_url(url, allow) == url


@pytest.mark.parametrize("url", ["", "example.com/x", "http://", "http://h:0x/", "http://h/a b", "javascript:alert(1)"])
def test_invalid_webhook_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        validate_webhook_url(url)


def test_a_caller_may_ask_a_priority_within_its_route_only() -> None:
    route = RoutePolicy("work", "/w", priority=2, priority_max=5)
    limits = Limits(route=route)
    asked = [(b"prefer", b"respond-async")]
    assert _intent(classify(scope(headers=asked), limits)).priority == 2
    for value, expected in ((b"5", 5), (b"0", 0), (b" 3 ", 3)):
        assert _intent(classify(scope(headers=[*asked, (b"asyncgate-priority", value)]), limits)).priority == expected
    for value in (b"6", b"-1", b"high", b"2.5", b""):
        with pytest.raises(BadRequest) as refused:
            classify(scope(headers=[*asked, (b"asyncgate-priority", value)]), limits)
        assert refused.value.code == "invalid_priority"
    # Without a route, only the default: 0.
    with pytest.raises(BadRequest):
        classify(scope(headers=[*asked, (b"asyncgate-priority", b"1")]))


def test_a_caller_may_shorten_the_queue_deadline_never_lengthen_it() -> None:
    limits = Limits(route=RoutePolicy("work", "/w", queue_deadline=30.0))
    asked = [(b"prefer", b"respond-async")]
    assert _intent(classify(scope(headers=asked), limits)).queue_deadline == 30.0
    assert (
        _intent(classify(scope(headers=[*asked, (b"asyncgate-queue-deadline", b"2.5")]), limits)).queue_deadline == 2.5
    )
    for value in (b"31", b"0", b"-1", b"soon", b"nan"):
        with pytest.raises(BadRequest) as refused:
            classify(scope(headers=[*asked, (b"asyncgate-queue-deadline", value)]), limits)
        assert refused.value.code == "invalid_queue_deadline"
    assert _intent(classify(scope(headers=[*asked, (b"asyncgate-queue-deadline", b"60")]))).queue_deadline == 60.0


def test_priority_and_deadline_headers_need_an_async_request() -> None:
    for header in (b"asyncgate-priority", b"asyncgate-queue-deadline"):
        with pytest.raises(BadRequest) as refused:
            classify(scope(headers=[(header, b"1")]))
        assert refused.value.code == "webhook_requires_async"


def _intent(intent: Intent | None) -> Intent:
    assert intent is not None
    return intent

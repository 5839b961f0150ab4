"""progress.py: the report format, tokens, and where an upstream reaches the gateway."""

from __future__ import annotations

import pytest

from asyncgate.errors import BadRequest, PayloadTooLarge
from asyncgate.progress import (
    default_base_url,
    parse_report,
    progress_event,
    redacted_path,
    report_in_stream,
    token,
    token_matches,
)


def test_a_report_takes_a_fraction_or_a_percent_and_a_message() -> None:
    assert parse_report(b'{"progress": 0.25, "message": "a"}') == {"progress": 0.25, "message": "a"}
    assert parse_report(b'{"percent": 50}') == {"progress": 0.5}
    assert parse_report(b'{"message": "warming up", "progress": null}') == {"message": "warming up"}
    assert progress_event({"message": "m"}, 2, 5.0) == {
        "event": "progress",
        "attempt": 2,
        "at": 5.0,
        "progress": None,
        "message": "m",
    }


@pytest.mark.parametrize("body", [b'{"progress": true}', b'{"progress": NaN}', b'{"percent": 101}', b"null"])
def test_a_malformed_report_is_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_report(body)


def test_an_oversized_report_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_report(b" " * 5000 + b"{}")


def test_a_report_in_a_stream_that_is_not_one_is_left_as_output() -> None:
    assert report_in_stream('{"progress": 1}') == {"progress": 1.0}
    assert report_in_stream("[DONE]") is None
    assert report_in_stream('{"progress": 2}') is None


def test_a_token_names_one_attempt_of_one_run_under_one_key() -> None:
    key = b"k" * 32
    secret = token(key, "run", 1)
    assert len(secret) == 43 and "=" not in secret
    assert token_matches(key, "run", 1, secret)
    assert not token_matches(key, "run", 2, secret)
    assert not token_matches(key, "other", 1, secret)
    assert not token_matches(b"x" * 32, "run", 1, secret)
    assert not token_matches(key, "run", 1, secret + "é")


def test_a_redacted_path_hides_the_token() -> None:
    assert (
        redacted_path("/_asyncgate/runs/r/attempts/1/progress/SECRET") == "/_asyncgate/runs/r/attempts/1/progress/***"
    )
    assert redacted_path("/_asyncgate/runs/r") == "/_asyncgate/runs/r"


def test_an_upstream_elsewhere_gets_no_progress_url_unless_one_is_configured() -> None:
    assert default_base_url("http://127.0.0.1:9000", "0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert default_base_url("http://localhost:9000/v1", "::", 8081) == "http://127.0.0.1:8081"
    assert default_base_url("http://[::1]:9000", "::1", 8082) == "http://[::1]:8082"
    assert default_base_url("http://model.svc:9000", "0.0.0.0", 8080) is None

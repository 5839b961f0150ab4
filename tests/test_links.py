"""A run's URLs and the Retry-After that paces polls: pure functions, no event loop."""

from __future__ import annotations

import httpx
import pytest

from asyncgate.links import RunLinks, retry_after


def test_urls_sit_under_the_prefix_and_cancel_is_the_runs_own_url() -> None:
    assert RunLinks("/gw/api").urls("r1") == {
        "status": "/gw/api/runs/r1",
        "result": "/gw/api/runs/r1/result",
        "events": "/gw/api/runs/r1/events",
        "cancel": "/gw/api/runs/r1",
    }
    assert RunLinks("/gw/api").status("r1") == "/gw/api/runs/r1"


def test_link_header_names_the_same_urls_and_parses_back() -> None:
    links = RunLinks("/_asyncgate")
    header = links.header("r1")
    assert header == (
        '</_asyncgate/runs/r1>; rel="status", </_asyncgate/runs/r1/result>; rel="result", '
        '</_asyncgate/runs/r1/events>; rel="events", </_asyncgate/runs/r1>; rel="cancel"'
    )
    # What a client library makes of it: every name maps back to its URL.
    parsed = httpx.Response(202, headers={"Link": header}).links
    assert {rel: link["url"] for rel, link in parsed.items()} == links.urls("r1")


@pytest.mark.parametrize(("seconds", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.2, 2), (2.5, 3), (30.0, 30)])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header

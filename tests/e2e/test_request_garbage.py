"""A served request leaves nothing for the garbage collector: its objects are freed as it ends.

A reference cycle per request (uvicorn's request cycle and the gateway's wrapper of its ``send``
holding each other) made every young collection under intake load free ~40,000 objects and pause
the event loop 25-70 ms, the tail of a 202's latency (bench S3 while holding 5,000 runs); the
upstream client's answer and its parser held each other too, once per upstream call.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Gateway


@pytest.fixture
def store_kind() -> str:
    return "embedded"


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable from here on, kept (gc.DEBUG_SAVEALL) to be inspected."""
    # pytest keeps the last failed test's traceback here until the next test's call begins; let
    # go of it now, or its frames (a whole gateway) would become garbage during this test.
    for name in ("last_type", "last_value", "last_traceback"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


#: The serving side's packages; the test's own client (httpx) leaves cycles of its own.
SERVING = ("asyncgate", "uvicorn", "starlette", "httptools", "h11")


def test_requests_and_upstream_calls_leave_no_reference_cycles(
    parser_gateway: Gateway, saved_garbage: list[object]
) -> None:
    gateway = parser_gateway
    run_ids = []
    for n in range(20):
        assert gateway.client.get(f"/echo/{n}").status_code == 200  # passed through: an upstream call
        accepted = gateway.client.post("/echo?async=true", content=b"x")  # and one more, by the executor
        assert accepted.status_code == 202
        run_ids.append(accepted.json()["run_id"])
    for run_id in run_ids:
        assert gateway.wait_final(run_id)["status"] == "succeeded"
    gc.collect()
    serving = {f"{kind.__module__}.{kind.__qualname__}" for kind in map(type, saved_garbage)}
    assert {name for name in serving if name.startswith(SERVING)} == set()

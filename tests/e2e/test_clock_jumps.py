"""Gateways whose wall clocks jump (a VM resumed, an NTP step, a wrong clock set by hand) judge
no live holder lost: leases are judged by Redis's clock, one clock for the whole fleet.

Each gateway runs under libfaketime (Debian's ``faketime``), its wall clock offset by what a
file says, read again on every call, so the clock jumps while the gateway runs; its monotonic
clock, which times its heartbeats, runs on untouched, as it does when a real clock is stepped.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Upstream
from tests.e2e.test_faults import arrivals, final
from tests.support.gateway_process import GatewayProcess, Replicas
from tests.support.wait import wait_until

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
#: Far past the lease (1.5 s in these tests): each jump alone would make every heartbeat judged
#: by the gateways' own clocks look lapsed, or alive long after its gateway died.
JUMP = 120

pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs Debian's faketime (scripts/install)")


def clock(path: Path, offset: int) -> dict[str, str]:
    """The environment of a gateway whose wall clock is offset by what ``path`` says."""
    path.write_text(f"{offset:+d}s\n")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(path),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def renewals(replica: GatewayProcess) -> float:
    """How many held runs this gateway's heartbeats have kept so far (one per run per beat)."""
    text = replica.client.get("/_asyncgate/metrics").text
    match = re.search(r'^asyncgate_lease_renewals_total\{result="held"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_clocks_jumping_both_ways_declare_no_live_holder_lost(
    replicas: Replicas, upstream: Upstream, tmp_path: Path
) -> None:
    first_clock, second_clock = tmp_path / "first.clock", tmp_path / "second.clock"
    # The first holds two runs and takes no more, so that the second holds the third.
    first = replicas(ASYNCGATE_LIMITS_MAX_INFLIGHT="2", **clock(first_clock, 0))
    tag = uuid.uuid4().hex[:8]
    gate = f"gate={tag}"
    get = first.client.get(f"/echo?{gate}&delay=0&tag={tag}g&async=true").json()["run_id"]
    post = first.client.post(f"/echo?{gate}&delay=0&tag={tag}p&async=true", content=b"charge").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="the first gateway called both")
    second = replicas(**clock(second_clock, 0))
    third = second.client.get(f"/echo?{gate}&delay=0&tag={tag}t&async=true").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 3, message="the second gateway called the third")

    # The holder's clock steps back, the other's forward: judged by either, the other's
    # heartbeat would look run out for two minutes.
    first_clock.write_text(f"-{JUMP}s\n")
    second_clock.write_text(f"+{JUMP}s\n")
    # Recovery passes of both (each beats first) for seconds, past a lease and past the grace a
    # gateway gives after a silence of the fleet (which a clock stepped forward looks like):
    # with leases judged by the gateways' clocks, the first pass after that grace reclaims.
    marks = renewals(first), renewals(second)
    wait_until(
        lambda: renewals(first) >= marks[0] + 60 and renewals(second) >= marks[1] + 30,
        timeout=30,
        message="both gateways beat on for a few seconds after the jumps",
    )

    assert httpx.post(f"{upstream.url}/gates/{tag}").status_code == 204
    for replica, run_id in ((first, get), (first, post), (second, third)):
        done = final(replica, run_id)
        assert (done["status"], done["attempt"], done["error"]) == ("succeeded", 1, None), done
    assert len(arrivals(upstream, tag)) == 3  # nothing was sent twice
    logs = first.log_text() + second.log_text()
    assert "lease lost" not in logs and "holder lost" not in logs
    assert "Traceback" not in logs

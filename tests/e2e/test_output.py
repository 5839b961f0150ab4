"""Live output: a streaming upstream's tokens reach event-stream listeners while the run works."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from tests.e2e.conftest import Gateway, GatewayFactory, Upstream
from tests.support.gateway_process import Replicas
from tests.support.wait import wait_until

SSE_RESULT = b"".join(b"id: %d\ndata: token-%d\n\n" % (i, i) for i in range(5)) + b"event: done\ndata: [DONE]\n\n"


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Events as {"id", "event", "data"}, the data parsed, as their lines arrive."""
    current: dict[str, Any] = {}
    for line in lines:
        if not line and "event" in current:
            yield current
            current = {}
        elif line.startswith(("id: ", "event: ", "data: ")):
            field, _, value = line.partition(": ")
            current[field] = orjson.loads(value) if field == "data" else value


def follow(gateway: Gateway, run_id: str, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The run's events as they arrive."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    url = f"{gateway.prefix}/runs/{run_id}/events"
    with gateway.client.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        yield from parse_sse(response.iter_lines())


def listener(make_gateway: GatewayFactory, store_kind: str, holder: Gateway) -> Gateway:
    """A replica that does not hold the run (one that executes nothing), or the one gateway."""
    return make_gateway({"runs.execute": False}) if store_kind == "redis" else holder


def test_sse_tokens_reach_a_listener_on_another_replica_before_the_run_ends(
    make_gateway: GatewayFactory, store_kind: str
) -> None:
    holder = make_gateway()
    other = listener(make_gateway, store_kind, holder)
    run_id = holder.client.post("/sse-tokens?count=5&interval=0.05&hold=2&async=true").json()["run_id"]
    events, status_at_last_token = [], None
    for event in follow(other, run_id):
        events.append(event)
        if event["event"] == "output" and event["data"]["data"] == "token-4":
            status_at_last_token = other.run(run_id)["status"]
    assert status_at_last_token == "running"  # seen while the upstream still held its response
    assert [e["event"] for e in events] == ["queued", "running", *["output"] * 6, "succeeded"]
    outputs = [e["data"] for e in events if e["event"] == "output"]
    assert [o["data"] for o in outputs] == [*(f"token-{i}" for i in range(5)), "[DONE]"]
    assert [o.get("sse_id") for o in outputs] == ["0", "1", "2", "3", "4", "4"]
    assert [o.get("sse_event") for o in outputs] == [None] * 5 + ["done"]
    assert [o["seq"] for o in outputs] == list(range(6))
    assert {o["attempt"] for o in outputs} == {1} and {o["run_id"] for o in outputs} == {run_id}
    assert outputs[0]["format"] == "sse" and outputs[0]["content_type"].startswith("text/event-stream")
    assert all("kept" not in o for o in outputs)
    assert len({e["id"] for e in events}) == len(events)
    result = other.client.get(f"{other.prefix}/runs/{run_id}/result")
    assert result.status_code == 200
    assert result.content == SSE_RESULT
    assert result.headers["content-type"].startswith("text/event-stream")


def test_resuming_with_last_event_id_loses_and_repeats_nothing(make_gateway: GatewayFactory, store_kind: str) -> None:
    holder = make_gateway()
    other = listener(make_gateway, store_kind, holder)
    run_id = holder.client.post("/ndjson?count=10&interval=0.05&async=true").json()["run_id"]
    before: list[dict[str, Any]] = []
    for event in follow(other, run_id):
        before.append(event)
        if event["event"] == "output" and event["data"]["seq"] == 3:
            break  # the listener drops mid-stream
    after = list(follow(other, run_id, last_event_id=before[-1]["id"]))
    assert before + after == list(follow(other, run_id))
    outputs = [e["data"] for e in before + after if e["event"] == "output"]
    assert [orjson.loads(o["data"]) for o in outputs] == [{"token": f"token-{i}", "index": i} for i in range(10)]
    assert outputs[0]["format"] == "ndjson"
    result = other.client.get(f"{other.prefix}/runs/{run_id}/result")
    assert result.content == b"".join(b'{"token": "token-%d", "index": %d}\n' % (i, i) for i in range(10))


def test_output_past_the_bound_is_relayed_live_and_said_not_kept(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"runs.output_max_events": 3})
    run_id = gateway.client.post("/ndjson?count=8&interval=0.02&async=true").json()["run_id"]
    events = list(follow(gateway, run_id))
    assert [e["event"] for e in events] == [
        "queued",
        "running",
        *["output"] * 3,
        "output_dropped",
        *["output"] * 5,
        "succeeded",
    ]
    outputs = [e["data"] for e in events if e["event"] == "output"]
    assert [o["seq"] for o in outputs] == list(range(8))
    assert [o.get("kept") for o in outputs] == [None] * 3 + [False] * 5
    dropped = events[5]["data"]
    assert {k: dropped[k] for k in ("attempt", "from_seq", "kept_events")} == {
        "attempt": 1,
        "from_seq": 3,
        "kept_events": 3,
    }
    assert dropped["kept_bytes"] == sum(len(o["data"]) for o in outputs[:3])
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert result.content.count(b"\n") == 8  # the result is whole, whatever the output bound


def test_a_response_that_does_not_stream_has_no_output(gateway: Gateway) -> None:
    run_id = gateway.client.post("/echo?async=true", content=b"x" * 1000).json()["run_id"]
    assert [e["event"] for e in follow(gateway, run_id)] == ["queued", "running", "succeeded"]


def test_a_binary_stream_is_relayed_in_base64_chunks(gateway: Gateway) -> None:
    run_id = gateway.client.get("/stream?size=200000&chunk=65536&async=true").json()["run_id"]
    outputs = [e["data"] for e in follow(gateway, run_id) if e["event"] == "output"]
    assert outputs[0]["format"] == "chunks" and outputs[0]["content_type"] == "application/octet-stream"
    relayed = b"".join(base64.b64decode(o["data_base64"]) for o in outputs)
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").content
    assert relayed == result and len(result) == 200000


def test_a_holder_killed_mid_stream_shows_and_the_next_attempt_streams_again(
    replicas: Replicas, upstream: Upstream
) -> None:
    holder = replicas()
    tag = uuid.uuid4().hex[:8]
    # The first attempt stops before token 3 until the gate opens: the holder is killed while it
    # streams, however long the other replica takes to start on a loaded machine.
    gate = f"gate={tag}&gate_at=3"
    run_id = holder.client.get(f"/sse-tokens?count=50&interval=0.02&{gate}&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: any(tag in c.get("query", "") for c in upstream.calls.all()), message="the holder called")
    other = replicas()  # started after the claim: the run is the holder's
    events: list[dict[str, Any]] = []
    with other.client.stream("GET", f"/_asyncgate/runs/{run_id}/events", timeout=30) as response:
        for event in parse_sse(response.iter_lines()):
            events.append(event)
            if event["event"] == "output" and event["data"]["seq"] == 2 and event["data"]["attempt"] == 1:
                holder.process.kill()
                opened = httpx.post(f"{upstream.url}/gates/{tag}")  # the next attempt streams on, unstopped
                assert opened.status_code == 204
    names = [e["event"] for e in events]
    assert names[:2] == ["queued", "running"] and names[-1] == "succeeded"
    requeued = names.index("queued", 1)
    assert names[requeued : requeued + 2] == ["queued", "running"]
    first = [e["data"] for e in events[:requeued] if e["event"] == "output"]
    second = [e["data"] for e in events[requeued:] if e["event"] == "output"]
    assert [o["seq"] for o in first] == list(range(len(first))) and {o["attempt"] for o in first} == {1}
    assert [o["seq"] for o in second] == list(range(51)) and {o["attempt"] for o in second} == {2}
    assert [o["data"] for o in second] == [*(f"token-{i}" for i in range(50)), "[DONE]"]
    result = other.client.get(f"/_asyncgate/runs/{run_id}/result")
    expected = b"".join(b"id: %d\ndata: token-%d\n\n" % (i, i) for i in range(50)) + b"event: done\ndata: [DONE]\n\n"
    assert result.content == expected
